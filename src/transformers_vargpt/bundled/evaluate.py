"""Evaluate a shapes-world VARGPT on the held-out combinations with the independent pixel checker.

    python -m transformers_vargpt.bundled.evaluate --model DIR [--output-dir DIR] [--seeds 0 1] [--images-per-combination 4]

- Generation: every held-out (colour, shape, background) × the world's three prompt phrasings × `--seeds`, sampled
  with the model's saved defaults (`generation_config.json`'s `image_generation`: do_sample, top_k, top_p,
  temperature, guidance_scale);
  a picture is right when `shapes_world.check_image` reads the asked shape, colour and background from its pixels.
- Questions: rendered pictures of the held-out combinations (random sizes and places), each asked the world's four
  questions, answered with the saved text defaults. One-word questions: exact match (case-insensitive, a trailing
  period ignored); "Describe the image.": the sentence names the shape's colour and the shape before "on" and the
  background's colour after it.

Writes `evaluation.json` (the numbers) and `samples.png` (a labelled grid of generated pictures) into the output
directory, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..generation_vargpt import IMAGE_GENERATION_DEFAULTS
from ..shapes_world import (
    GENERATION_PROMPTS,
    HELD_OUT_QUESTION_SEED,
    PALETTE,
    QUESTIONS,
    SHAPES,
    Scene,
    check_image,
    held_out_combinations,
    normalize_answer,
    question_set,
)


# The evaluation the build runs (and `main` runs by default): 576 held-out drawings. Two seeds (144 drawings) put the
# model before at 86.1% and eight at 86.6%.
EVAL_SEEDS = tuple(range(8))
EVAL_IMAGES_PER_COMBINATION = 4


def image_sampling_defaults(model) -> dict:
    """The model's image-sampling defaults (`generation_config.image_generation` over the released ones): what
    `generate_images`, the pipeline and `vargpt generate` use when not told otherwise."""
    config = model.image_generation_config()
    return {key: getattr(config, key) for key in IMAGE_GENERATION_DEFAULTS}


def answer_is_right(kind: str, answer: str, scene: Scene) -> bool:
    """The bar's rule for one answer: one word exact (case-insensitive, trailing period ignored); a description
    names colour and shape before "on" and the background colour after it."""
    answer = normalize_answer(answer)
    if kind != "describe":
        return answer == scene.answer(kind)
    before, on, after = answer.partition(" on ")
    if not on:
        return False
    words_before, words_after = re.findall(r"[a-z]+", before), re.findall(r"[a-z]+", after)
    colours_before = [w for w in words_before if w in PALETTE]
    shapes_before = [w for w in words_before if w in SHAPES]
    colours_after = [w for w in words_after if w in PALETTE]
    return colours_before == [scene.color] and shapes_before == [scene.shape] and colours_after == [scene.background]


@torch.no_grad()
def evaluate_generation(model, processor, combinations, seeds, batch_size: int = 24,
                        sampling: dict | None = None, palette: dict = PALETTE) -> dict:
    """Draw every combination × phrasing × seed with the model's default sampling (or `sampling`'s changes to it:
    top_k, top_p, temperature, guidance_scale, do_sample, negative_prompt_ids); check each picture's pixels against
    `palette` (default: the world's). Returns counts and samples."""
    unknown = set(sampling or {}) - set(IMAGE_GENERATION_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown image sampling settings {sorted(unknown)}; expected some of "
                        f"{sorted(IMAGE_GENERATION_DEFAULTS)}")
    requests = [
        (Scene(shape=shape, color=color, background=background), template, seed)
        for seed in seeds
        for template in range(len(GENERATION_PROMPTS))
        for color, shape, background in combinations
    ]
    # the saved settings with `sampling`'s changes, None included (a None negative prompt: guidance reads the prompt)
    image_config = model.image_generation_config()
    for key, value in (sampling or {}).items():
        setattr(image_config, key, value)
    samples = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        prompts = [scene.prompt(template) for scene, template, _ in chunk]
        inputs = processor(text=prompts, generation_mode="image", return_tensors="pt").to(model.device)
        # one generator per chunk, seeded by the chunk's first request: the same settings give the same pictures
        generator = torch.Generator(model.device).manual_seed(1000 * chunk[0][2] + start)
        output = model.generate_images(inputs["input_ids"], inputs["attention_mask"], generator=generator,
                                       generation_config=image_config)
        pictures = (output.images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for (scene, template, seed), picture in zip(chunk, pictures):
            checked = check_image(picture, palette)
            samples.append({"scene": scene, "template": template, "seed": seed, "picture": picture,
                            "checked": checked, "right": checked.matches(scene)})
    total = len(samples)
    return {
        "num_images": total,
        "accuracy": sum(s["right"] for s in samples) / total,
        "shape_accuracy": sum(s["checked"].shape == s["scene"].shape for s in samples) / total,
        "color_accuracy": sum(s["checked"].color == s["scene"].color for s in samples) / total,
        "background_accuracy": sum(s["checked"].background == s["scene"].background for s in samples) / total,
        "per_prompt_accuracy": [
            sum(s["right"] for s in samples if s["template"] == t) / max(1, sum(s["template"] == t for s in samples))
            for t in range(len(GENERATION_PROMPTS))
        ],
        "samples": samples,
    }


@torch.no_grad()
def answer_questions(model, processor, images: list[Image.Image], question: str, max_new_tokens: int = 16) -> list[str]:
    """The model's answers to one question about each image (the saved text-generation defaults)."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate_questions(model, processor, images_per_combination: int, seed: int = HELD_OUT_QUESTION_SEED,
                       batch_size: int = 32) -> dict:
    """Ask the four questions about the held-out pictures of `shapes_world.question_set` (the set the lmms-eval task
    `vargpt_shapes_qa` asks too); accuracy per question kind and a few mistakes."""
    records = question_set(seed, images_per_combination, image_size=model.config.vq_config.image_size,
                           kinds=tuple(QUESTIONS))
    results = {}
    for kind, question in QUESTIONS.items():
        asked = [record for record in records if record.kind == kind]
        answers = []
        for start in range(0, len(asked), batch_size):
            answers += answer_questions(model, processor, [r.image for r in asked[start : start + batch_size]], question)
        right = [answer_is_right(kind, answer, record.scene) for answer, record in zip(answers, asked)]
        mistakes = [{"expected": record.answer, "answer": answer}
                    for answer, record, ok in zip(answers, asked, right) if not ok]
        results[kind] = {"question": question, "num_images": len(asked), "accuracy": sum(right) / len(right),
                         "mistakes": mistakes[:5]}
    return results


def sample_grid(samples: list[dict], columns: int = 8, cell: int = 96, limit: int = 48) -> Image.Image:
    """Generated pictures with their prompt (colour / shape / background) and a ✓/✗ label under each."""
    samples = samples[:limit]
    rows = (len(samples) + columns - 1) // columns
    label_height = 26
    grid = Image.new("RGB", (columns * cell, rows * (cell + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, sample in enumerate(samples):
        x, y = (index % columns) * cell, (index // columns) * (cell + label_height)
        picture = Image.fromarray(sample["picture"]).resize((cell - 8, cell - 8), Image.NEAREST)
        grid.paste(picture, (x + 4, y + 4))
        scene = sample["scene"]
        draw.text((x + 4, y + cell - 2), f"{scene.color} {scene.shape}", fill="black")
        mark = "OK" if sample["right"] else "X"
        draw.text((x + 4, y + cell + 10), f"on {scene.background} {mark}", fill="darkgreen" if sample["right"] else "red")
    return grid


def evaluate(model_path: str, output_dir: Path | None, seeds: list[int], images_per_combination: int,
             device: str = "cpu", sampling: dict | None = None) -> dict:
    """Run both evaluations on the held-out combinations; write evaluation.json and samples.png if output_dir.
    `sampling` changes the model's saved image-sampling defaults (keys of `IMAGE_GENERATION_DEFAULTS`)."""
    from transformers import AutoProcessor

    from ..modeling_vargpt import VargptForConditionalGeneration

    model = VargptForConditionalGeneration.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    combinations = held_out_combinations()
    sampling = {**image_sampling_defaults(model), **(sampling or {})}
    start = time.perf_counter()
    # the negative prompt as the text the unconditional rows read (the settings hold its token ids)
    negative_ids = sampling.get("negative_prompt_ids")
    negative_prompt = processor.decode(negative_ids) if negative_ids else None
    generation = evaluate_generation(model, processor, combinations, seeds, sampling=sampling)
    questions = evaluate_questions(model, processor, images_per_combination)
    samples = generation.pop("samples")
    report = {
        "model": str(model_path),
        "held_out_combinations": len(combinations),
        "generation": {**generation, "seeds": seeds, "prompts": list(GENERATION_PROMPTS), "sampling": sampling,
                       "negative_prompt": negative_prompt},
        "questions": questions,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
        # one sample per held-out combination (first seed, phrasings in turn) for the grid
        shown = [s for s in samples if s["seed"] == seeds[0]]
        shown = [s for i, s in enumerate(shown) if s["template"] == (i // len(combinations)) % 3][: len(combinations)]
        sample_grid(shown or samples).save(output_dir / "samples.png")
    return report


def summary(report: dict) -> str:
    generation = report["generation"]
    lines = [f"generation on {report['held_out_combinations']} held-out combinations x {len(generation['prompts'])} "
             f"prompts x {len(generation['seeds'])} seeds: {100 * generation['accuracy']:.1f}% right "
             f"(shape {100 * generation['shape_accuracy']:.1f}%, colour {100 * generation['color_accuracy']:.1f}%, "
             f"background {100 * generation['background_accuracy']:.1f}%)"]
    for kind, result in report["questions"].items():
        lines.append(f"question {result['question']!r}: {100 * result['accuracy']:.1f}% of {result['num_images']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--output-dir", type=Path, default=None, help="where evaluation.json and samples.png go")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_SEEDS),
                        help="sampling seeds per prompt (default: the build's, EVAL_SEEDS)")
    parser.add_argument("--images-per-combination", type=int, default=EVAL_IMAGES_PER_COMBINATION,
                        help="rendered pictures per held-out combination")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int, default=None, help="instead of the model's saved image-sampling top_k")
    parser.add_argument("--top-p", type=float, default=None, help="instead of the saved top_p")
    parser.add_argument("--temperature", type=float, default=None, help="instead of the saved temperature")
    parser.add_argument("--guidance-scale", type=float, default=None, help="instead of the saved guidance scale")
    parser.add_argument("--negative-prompt", default=None,
                        help="what guidance's unconditional rows read instead of the saved negative prompt "
                             "(an empty string: the prompt itself)")
    args = parser.parse_args(argv)
    sampling = {key: value for key, value in {"top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature,
                                              "guidance_scale": args.guidance_scale}.items() if value is not None}
    if args.negative_prompt == "":
        sampling["negative_prompt_ids"] = None
    elif args.negative_prompt is not None:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        sampling["negative_prompt_ids"] = processor.text_to_image_prompt_ids(args.negative_prompt)
    report = evaluate(args.model, args.output_dir, args.seeds, args.images_per_combination, args.device, sampling)
    print(summary(report))


if __name__ == "__main__":
    main()
