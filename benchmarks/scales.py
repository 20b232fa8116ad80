"""How text-to-image latency grows with the number of scales (and so the resolution).

Each point is a separate medium model whose `patch_nums` is a prefix of the released 1..16 (1..4 → 64 px, 30 codes;
... 1..16 → 256 px, 680 codes) with `image_gen_size = last scale * 16`; everything else is the medium
configuration. Batch 1, greedy, no guidance. All models are built first and timed in interleaved rounds, so a drift
of the machine's speed hits every point alike; every timed call is instrumented (forward hooks, negligible cost)
and the LLM / VAR blocks (+ projectors) / VQVAE decode split is the median over the same calls.
"""

from __future__ import annotations

import logging
import statistics

from .medium import FULL_PATCH_NUMS, build_medium, t2i_inputs
from .t2i import ComponentTimer, generate
from .timing import measure_interleaved

logger = logging.getLogger(__name__)

FULL_PREFIX_LENGTHS = (4, 5, 6, 7, 8, 9, 10)
QUICK_PREFIX_LENGTHS = (4, 7, 10)
SPLIT_KEYS = ("llm", "var_blocks_and_projectors", "vqvae_decode")


def _instrumented(model, inputs, splits: list) -> None:
    timer = ComponentTimer(model)
    with timer.installed():
        generate(model, inputs)
    split = dict.fromkeys(SPLIT_KEYS, 0.0)
    for name, start, end in timer.events:
        key = name if name in ("llm", "vqvae_decode") else "var_blocks_and_projectors"
        split[key] += end - start
    splits.append(split)


def run(model, processor, quick: bool = False) -> dict:
    """Median latency per `patch_nums` prefix; the full configuration reuses `model`."""
    points = {}
    for length in QUICK_PREFIX_LENGTHS if quick else FULL_PREFIX_LENGTHS:
        patch_nums = FULL_PATCH_NUMS[:length]
        if length == len(FULL_PATCH_NUMS):
            point_model, point_processor = model, processor
        else:
            logger.info("scales: building patch_nums=%s", patch_nums)
            point_model, point_processor = build_medium(patch_nums)
        points[str(length)] = (point_model, t2i_inputs(point_processor, 1), [])
    timings = measure_interleaved(
        {key: (lambda m=m, i=i, s=s: _instrumented(m, i, s)) for key, (m, i, s) in points.items()},
        repeats=3 if quick else 5,
    )
    results = []
    for key, (point_model, _, splits) in points.items():
        splits = splits[-timings[key]["repeats"]:]  # the timed calls (not the warm-up)
        results.append({
            "patch_nums": list(point_model.config.patch_nums),
            "num_scales": len(point_model.config.patch_nums),
            "image_size": point_model.config.image_gen_size,
            "codes": point_model.config.num_image_gen_tokens,
            **timings[key],
            "split_s": {k: statistics.median(s[k] for s in splits) for k in SPLIT_KEYS},
        })
    return {"points": results, "timing": "interleaved rounds over all points; split = median over the timed calls"}
