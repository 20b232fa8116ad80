"""How text-to-image latency grows with the number of scales (and so the resolution).

Each point is a separate medium model whose `patch_nums` is a prefix of the released 1..16 (1..4 → 64 px, 30 codes;
... 1..16 → 256 px, 680 codes) with `image_gen_size = last scale * 16`; everything else is the medium
configuration. Batch 1, greedy, no guidance; one extra instrumented run splits each point into LLM, VAR blocks
(+ projectors) and VQVAE decode.
"""

from __future__ import annotations

import logging

from .medium import FULL_PATCH_NUMS, build_medium, t2i_inputs
from .t2i import ComponentTimer, generate
from .timing import measure

logger = logging.getLogger(__name__)

FULL_PREFIX_LENGTHS = (4, 5, 6, 7, 8, 9, 10)
QUICK_PREFIX_LENGTHS = (4, 7, 10)


def _split(model, inputs) -> dict[str, float]:
    timer = ComponentTimer(model)
    with timer.installed():
        generate(model, inputs)
    split = {"llm": 0.0, "var_blocks_and_projectors": 0.0, "vqvae_decode": 0.0}
    for name, start, end in timer.events:
        key = "llm" if name == "llm" else "vqvae_decode" if name == "vqvae_decode" else "var_blocks_and_projectors"
        split[key] += end - start
    return split


def run(model, processor, quick: bool = False) -> dict:
    """Median latency per `patch_nums` prefix; the full configuration reuses `model`."""
    points = []
    for length in QUICK_PREFIX_LENGTHS if quick else FULL_PREFIX_LENGTHS:
        patch_nums = FULL_PATCH_NUMS[:length]
        if length == len(FULL_PATCH_NUMS):
            point_model, point_processor = model, processor
        else:
            point_model, point_processor = build_medium(patch_nums)
        logger.info("scales: patch_nums=%s", patch_nums)
        inputs = t2i_inputs(point_processor, 1)
        stats = measure(lambda: generate(point_model, inputs), repeats=3 if quick else 5)
        points.append({
            "patch_nums": list(patch_nums),
            "num_scales": length,
            "image_size": point_model.config.image_gen_size,
            "codes": point_model.config.num_image_gen_tokens,
            **stats,
            "split_s": _split(point_model, inputs),
        })
        del point_model
    return {"points": points}
