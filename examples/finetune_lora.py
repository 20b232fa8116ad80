# Copyright the transformers-vargpt authors. Licensed under the Apache License, Version 2.0.
"""
Fine-tune VARGPT's image generation (stage 3) with LoRA on a tiny synthetic dataset, entirely offline.

The script builds a small random VARGPT in-process, draws coloured shapes as PNGs, writes them as a JSONL file in the
released training format, trains LoRA adapters on the VAR decoder for a few steps, saves them, loads them back onto
the base model, merges them and draws one picture with the merged model. Everything it writes goes under
`--output_dir` (a new temporary directory by default):

    <output_dir>/tiny-model/   the base model and processor
    <output_dir>/data/         images/*.png and train.jsonl
    <output_dir>/adapter/      the trained LoRA adapters (plus trainer state)
    <output_dir>/sample.png    a picture drawn by the merged model

Usage:

    python examples/finetune_lora.py
    python examples/finetune_lora.py --output_dir runs/lora --max_steps 30 --lora_r 8 --learning_rate 1e-3

Any `VargptSFTConfig` (TRL `SFTConfig`) option can be passed; `--stage` and the LoRA options select what learns.
On real data, use the command line instead:

    vargpt-train --stage 3 --model PATH --data train.jsonl --image-root DIR --output DIR --lora
"""

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from PIL import Image
from trl import TrlParser

from transformers_vargpt import VargptForConditionalGeneration
from transformers_vargpt.tiny_models import build_tiny_vargpt
from transformers_vargpt.training import VargptSFTConfig, VargptSFTTrainer, load_vargpt_dataset
from transformers_vargpt.training.synthetic import write_shapes_dataset

logger = logging.getLogger("finetune_lora")


@dataclass
class ExampleArguments:
    num_examples: int = field(default=24, metadata={"help": "Synthetic conversations to write."})
    prompt: str = field(default="please draw a red circle .", metadata={"help": "What the merged model draws."})


def main() -> None:
    parser = TrlParser((ExampleArguments, VargptSFTConfig))
    # the example's defaults: a few LoRA steps of stage 3 on a CPU
    parser.set_defaults(
        stage=3,
        lora=True,
        lora_r=8,
        lora_alpha=16,
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=0,
        logging_steps=2,
        save_strategy="no",
        activation_checkpointing=False,
        report_to="none",
    )
    example_args, training_args = parser.parse_args_and_config()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # transformers fills an unset output_dir with "trainer_output" (in the working directory): not here
    root = Path(training_args.output_dir if training_args.output_dir_given else tempfile.mkdtemp(prefix="vargpt-lora-"))
    training_args.output_dir = str(root / "adapter")

    # 1. a small random VARGPT (no download) and its processor, saved like a checkpoint
    model, processor = build_tiny_vargpt(seed=training_args.seed)
    model.save_pretrained(root / "tiny-model")
    processor.save_pretrained(root / "tiny-model")

    # 2. coloured shapes in the released format ({"messages": [...], "images": [...]}, <image_gen> in the answers)
    data_file = write_shapes_dataset(root / "data", num_examples=example_args.num_examples, kinds=("generation",))
    train_dataset = load_vargpt_dataset(data_file, image_root=root / "data")

    # 3. LoRA on the VAR blocks (+ class_embed in full), everything else frozen
    trainer = VargptSFTTrainer(
        model=model, args=training_args, train_dataset=train_dataset, processing_class=processor
    )
    trainer.model.print_trainable_parameters()
    trainer.train()
    trainer.save_model(training_args.output_dir)
    history = [entry for entry in trainer.state.log_history if "image_loss" in entry]
    logger.info(f"image loss {history[0]['image_loss']:.3f} -> {history[-1]['image_loss']:.3f}")

    # 4. adapters back onto a fresh base model, merged into plain weights
    base = VargptForConditionalGeneration.from_pretrained(root / "tiny-model")
    merged = PeftModel.from_pretrained(base, training_args.output_dir).merge_and_unload().eval()
    inputs = processor(text=example_args.prompt, generation_mode="image", return_tensors="pt")
    drawn = merged.generate_images(**inputs, generator=torch.Generator().manual_seed(0))
    picture = (drawn.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(picture).save(root / "sample.png")
    logger.info(f"adapters: {training_args.output_dir}\nsample:   {root / 'sample.png'}")


if __name__ == "__main__":
    main()
