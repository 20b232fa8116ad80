"""What the sharding-safe idle runs cost: a stage-3 training step on the medium model, same run, interleaved.

    python -m benchmarks.idle_cost

Three steps (forward, backward, AdamW) alternate: a batch with nothing to draw under the former design
(`0 × parameter` anchors only), the same batch now (the VAR decoder runs a dummy drawing × 0, see
`VargptModel.runs_idle`), and a batch with real images to draw (no idle part) for scale. Prints the medians as JSON.
"""

from __future__ import annotations

import json
import random

import torch

import transformers_vargpt.modeling_vargpt as modeling
from transformers_vargpt.training import VICUNA_SYSTEM_MESSAGE, VargptDataCollator, freeze_for_stage

from .medium import build_medium, setup_torch
from .timing import measure_interleaved
from .training import example, stage_batch


def main() -> None:
    setup_torch()
    model, processor = build_medium()
    freeze_for_stage(model, 3)
    model.train()
    rng = random.Random(0)
    read_size = processor.image_processor.crop_size["height"]
    collator = VargptDataCollator(processor, max_length=2048, system_message=VICUNA_SYSTEM_MESSAGE)
    understanding = collator([example("understanding", rng, processor.image_gen_size, read_size) for _ in range(2)])
    generation = stage_batch(processor, 3, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    runs_idle = modeling.VargptModel.runs_idle

    def step(batch, idle: bool) -> None:
        # the former design is re-enacted by switching the idle runs off (benchmark only) and adding the anchors
        modeling.VargptModel.runs_idle = runs_idle if idle else (lambda self, *modules: False)
        try:
            loss = model(**batch).loss
            if not idle:
                loss = loss + sum(p.reshape(-1)[:1].sum() for p in params) * 0
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        finally:
            modeling.VargptModel.runs_idle = runs_idle

    timings = measure_interleaved(
        {
            "nothing to draw, anchors (before)": lambda: step(understanding, False),
            "nothing to draw, dummy drawing (now)": lambda: step(understanding, True),
            "images to draw (no idle part)": lambda: step(generation, True),
        },
        repeats=5,
        warmup=1,
    )
    print(json.dumps({name: round(t["median_s"], 3) for name, t in timings.items()}, indent=1))


if __name__ == "__main__":
    main()
