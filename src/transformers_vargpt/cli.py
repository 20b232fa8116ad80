"""Command-line entry points: `python -m transformers_vargpt.cli` (`make demo`: draw and read an image end to end) and
`vargpt-train` (fine-tune one of the three VARGPT training stages with TRL, optionally with LoRA)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
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


@dataclass
class VargptScriptArguments:
    """What `vargpt-train` trains on; every training setting is in `VargptSFTConfig`."""

    model_name_or_path: str = field(
        metadata={"help": "Model directory (ours or the released layout) to fine-tune.", "aliases": ["--model"]}
    )
    data: list[str] = field(
        metadata={"help": "Training data: JSON / JSONL file(s) in the released 'messages' or LLaVA 'conversations' "
                  "format."}
    )
    eval_data: list[str] | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor directory, if not the model's."}
    )


def build_trainer(script_args: VargptScriptArguments, training_args):
    """Model, processor, data and `VargptSFTTrainer` from parsed `vargpt-train` arguments."""
    from transformers import AutoProcessor

    from .training import VargptSFTTrainer, load_vargpt_dataset
    from .training.trainer import load_vargpt_model

    model = load_vargpt_model(script_args.model_name_or_path, training_args.model_init_kwargs)
    training_args.model_init_kwargs = None
    processor = AutoProcessor.from_pretrained(script_args.processor_name_or_path or script_args.model_name_or_path)
    train_dataset = load_vargpt_dataset(script_args.data, training_args.image_root)
    eval_dataset = None
    if script_args.eval_data:
        eval_dataset = load_vargpt_dataset(script_args.eval_data, training_args.image_root)
    return VargptSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
    )


def train_main(argv: list[str] | None = None) -> None:
    """`vargpt-train`: fine-tune a VARGPT stage.

    `vargpt-train --stage {1,2,3} --model PATH --data FILE [FILE ...] --image-root DIR --output DIR [--lora
    --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --lora-target-modules ...]` plus every `SFTConfig` /
    `TrainingArguments` option (`--learning_rate`, `--max_steps`, `--save_steps`, `--resume_from_checkpoint last`,
    ...), or `vargpt-train --config train.yaml` with the same names as keys (command-line options override the file).

    Several processes: `accelerate launch --multi_gpu --num_processes N -m transformers_vargpt.training ...` or
    `torchrun --nproc_per_node N -m transformers_vargpt.training ...`; on a machine without GPUs the processes train
    with DDP over gloo. (`accelerate launch --cpu --num_processes N` starts a single process unless given an MPI
    hostfile.) `--per_device_train_batch_size` is per process: keep N × it × gradient accumulation fixed to keep the
    loss curve.
    """
    import transformers
    from trl import TrlParser

    from .training import VargptSFTConfig

    parser = TrlParser((VargptScriptArguments, VargptSFTConfig), prog="vargpt-train")
    script_args, training_args = parser.parse_args_and_config(argv)
    if training_args.stage is None:
        parser.error("--stage (1, 2 or 3) is required")
    if training_args.output_dir is None:
        parser.error("--output (the output directory) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())

    trainer = build_trainer(script_args, training_args)
    logging.getLogger("transformers_vargpt.train").info(
        f"stage {training_args.stage}{' (LoRA)' if training_args.lora else ''}: "
        f"{trainer.num_trainable_parameters:,} trainable parameters"
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the latest checkpoint in output_dir
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


if __name__ == "__main__":
    demo_main()
