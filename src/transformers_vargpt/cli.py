"""Command-line entry point `python -m transformers_vargpt.cli` (`make demo`): draw and read an image end to end.
(Training: `vargpt-train`, in `transformers_vargpt.training.cli`.)"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

logger = logging.getLogger("transformers_vargpt.demo")


def synthetic_picture(size: int = 128) -> Image.Image:
    """A red circle on a white background: the input image of the understanding demo."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="red")
    return image


def run_demo(model, processor, output_dir: Path | None, seed: int, prompt: str, question: str) -> dict:
    """Text-to-image then image understanding; returns what it produced (and writes PNGs only into output_dir)."""
    results = {}
    start = time.perf_counter()
    inputs = processor(text=prompt, generation_mode="image", return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    drawn = model.generate_images(**inputs, generator=generator, guidance_scale=1.0)
    results["text_to_image_seconds"] = time.perf_counter() - start
    results["image_shape"] = tuple(drawn.images.shape)
    results["image_tokens"] = drawn.image_tokens[0].tolist()
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        picture = (drawn.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        results["image_path"] = str(output_dir / "text_to_image.png")
        Image.fromarray(picture).save(results["image_path"])

    start = time.perf_counter()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=synthetic_picture(), text=text, return_tensors="pt")
    answer_ids = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    results["answer"] = processor.batch_decode(
        answer_ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    results["understanding_seconds"] = time.perf_counter() - start
    return results


def demo_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run VARGPT end to end: draw an image from a prompt, then answer a question about an image."
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="where to write the drawn image (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="Please draw a red circle.")
    parser.add_argument("--question", default="What color is the shape in this picture?")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from .tiny_models import build_tiny_vargpt

    print(
        "NOTE: no trained small model ships with this package yet. This demo builds a RANDOMLY INITIALISED tiny "
        "VARGPT in-process: the picture is noise and the answer is gibberish. It shows that every step runs "
        "end to end (processor -> LLM <-> VAR scale by scale -> VQVAE -> image; image -> CLIP -> LLM -> text)."
    )
    model, processor = build_tiny_vargpt(seed=args.seed)
    results = run_demo(model, processor, args.output_dir, args.seed, args.prompt, args.question)
    print(f"text-to-image: {args.prompt!r} -> image {results['image_shape']} in {results['text_to_image_seconds']:.2f}s")
    print(f"  first-scale codes: {results['image_tokens'][:5]} ...")
    if "image_path" in results:
        print(f"  written to {results['image_path']}")
    print(f"understanding: {args.question!r} -> {results['answer']!r} in {results['understanding_seconds']:.2f}s")


if __name__ == "__main__":
    demo_main()
