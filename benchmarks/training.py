"""Training throughput (samples/s) of each VARGPT stage on the medium model.

Loop: a plain forward / backward / `torch.optim.AdamW` step (lr 5e-5) after `freeze_for_stage(model, stage)`, on a
copy of the model in train mode (condition dropout and drop-path on, as in training). Batches come from
`VargptDataCollator` over synthetic shape conversations (`training.synthetic.draw_shape`), collated once outside
the timed region: stages 1 and 3 see generation examples (a 256 px image to draw: 680 pads), stage 2 a mixed batch
(half generation, half understanding with a 224 px image: 256 image tokens), like the paper's data per stage.
`VargptSFTTrainer` runs the same forward/backward plus TRL/accelerate bookkeeping; the plain loop isolates the model.
"""

from __future__ import annotations

import copy
import random

import torch
from PIL import Image

from transformers_vargpt.training import VICUNA_SYSTEM_MESSAGE, VargptDataCollator, freeze_for_stage
from transformers_vargpt.training.synthetic import COLORS, SHAPES, draw_shape

from .timing import measure

STAGE_DATA = {1: ("generation",), 2: ("generation", "understanding"), 3: ("generation",)}


def example(kind: str, rng: random.Random, gen_size: int, read_size: int) -> dict:
    """One conversation in the released format, with its PIL image."""
    color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
    if kind == "generation":
        messages = [
            {"role": "user", "content": f"please draw a {color} {shape} ."},
            {"role": "assistant", "content": f"here is a {color} {shape} .<image_gen>"},
        ]
        image: Image.Image = draw_shape(shape, color, gen_size)
    else:
        messages = [
            {"role": "user", "content": "<image>\nwhat shape is this ?"},
            {"role": "assistant", "content": f"a {color} {shape} ."},
        ]
        image = draw_shape(shape, color, read_size)
    return {"messages": messages, "images": [image]}


def stage_batch(processor, stage: int, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A collated batch of `batch_size` examples of the stage's kinds (cycled)."""
    rng = random.Random(seed)
    kinds = STAGE_DATA[stage]
    examples = [
        example(kinds[i % len(kinds)], rng, processor.image_gen_size, processor.image_processor.crop_size["height"])
        for i in range(batch_size)
    ]
    # the released recipe's system line keeps the measured shapes those of the recorded runs (seq 729)
    return VargptDataCollator(processor, max_length=2048, system_message=VICUNA_SYSTEM_MESSAGE)(examples)


def train_step(model, optimizer, batch) -> float:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def prepare_stage(model, stage: int):
    """(copy of the model in train mode with the stage's trainable parameters, its AdamW, trainable count)."""
    trained = copy.deepcopy(model).train()
    trainable = freeze_for_stage(trained, stage)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=5e-5)
    return trained, optimizer, trainable


def run(model, processor, quick: bool = False) -> dict:
    """Median step time and samples/s per stage."""
    batch_size = 2 if quick else 4
    repeats = 1 if quick else 4
    stages = {}
    for stage in (1, 2, 3):
        torch.manual_seed(stage)
        batch = stage_batch(processor, stage, batch_size)
        trained, optimizer, trainable = prepare_stage(model, stage)
        stats = measure(lambda: train_step(trained, optimizer, batch), repeats=repeats, warmup=1)
        stages[str(stage)] = {
            "data": "+".join(STAGE_DATA[stage]),
            "batch_size": batch_size,
            "sequence_length": int(batch["input_ids"].shape[1]),
            "supervised_text_tokens": int((batch["labels"] != -100).sum()),
            "images_to_draw": int(batch["pixel_gen_values"].shape[0]) if "pixel_gen_values" in batch else 0,
            "images_to_read": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0,
            "trainable_parameters": trainable,
            **stats,
            "samples_per_s": batch_size / stats["median_s"],
        }
        del trained, optimizer
    return {
        "loop": "plain forward/backward/AdamW step after freeze_for_stage (benchmarks/training.py)",
        "optimizer": "AdamW lr 5e-5, float32, no gradient checkpointing, no gradient accumulation",
        "stages": stages,
    }
