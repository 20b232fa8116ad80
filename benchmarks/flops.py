"""FLOPs of one generation (torch.utils.flop_counter) against the machine's float32 matmul peak: a roofline.

The peak is measured in the same run: a 2048x2048 @ 2048x2048 float32 matmul on the benchmark's threads. The
FLOP counter counts matmuls, convolutions and attention (CPU's fused SDPA kernel is added through
`custom_mapping`, stock torch does not map it); element-wise work (norms, activations, softmax) is not counted.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .medium import t2i_inputs, understanding_inputs
from .t2i import ComponentTimer, generate
from .timing import measure
from .understanding import answer

PEAK_SIDE = 2048
# Components by the name FlopCounterMode's module tracker gives them: a module called outside any tracked parent
# is named by its class (how `generate_images` calls them), one inside the model's forward by its attribute path.
COMPONENT_NAMES = {
    "LlamaModel": "llm",
    "model.language_model": "llm",
    "VargptScaleDecoder": "var_blocks",
    "model.scale_decoder": "var_blocks",
    "VargptGenProjector": "gen_projectors",
    "model.gen_input_projector": "gen_projectors",
    "model.gen_output_projector": "gen_projectors",
    "VQDecoder": "vqvae_decode",
    "Conv2d": "vqvae_decode",  # post_quant_conv
    "ResidualFilter": "fhat_update",
    "CLIPVisionModel": "vision_tower",
    "model.vision_tower": "vision_tower",
    "model.multi_modal_projector": "mm_projector",
    "lm_head": "lm_head",
}


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """QK^T and PV of `_scaled_dot_product_flash_attention_for_cpu` (shapes B×H×L×D)."""
    batch, heads, q_len, head_dim = query
    k_len, v_dim = key[-2], value[-1]
    return 2 * batch * heads * q_len * k_len * (head_dim + v_dim)


def custom_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flops} if op is not None else {}


def count_flops(fn) -> tuple[int, dict[str, int]]:
    """Total FLOPs of `fn()` and the FLOPs of each component (see `COMPONENT_NAMES`)."""
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=custom_mapping())
    with counter:
        fn()
    components: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        root, _, path = name.partition(".")
        label = COMPONENT_NAMES.get(path or root)  # a top-level module by class, or a path under the model
        if label is not None:
            components[label] = components.get(label, 0) + sum(ops.values())
    components["other"] = counter.get_total_flops() - sum(components.values())
    return counter.get_total_flops(), components


def matmul_peak(repeats: int = 10) -> dict:
    """float32 GFLOP/s of a 2048² matmul on the current threads (median over repeats)."""
    a = torch.randn(PEAK_SIDE, PEAK_SIDE)
    b = torch.randn(PEAK_SIDE, PEAK_SIDE)
    out = torch.empty(PEAK_SIDE, PEAK_SIDE)
    stats = measure(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=2)
    flops = 2 * PEAK_SIDE**3
    return {"matrix_side": PEAK_SIDE, "flops": flops, **stats, "gflops_per_s": flops / stats["median_s"] / 1e9}


def _component_times(model, inputs) -> dict[str, float]:
    timer = ComponentTimer(model)
    with timer.installed():
        generate(model, inputs)
    times: dict[str, float] = {}
    for name, start, end in timer.events:
        label = "gen_projectors" if name.startswith("gen_") else name
        times[label] = times.get(label, 0.0) + end - start
    return times


def run(model, processor, quick: bool = False) -> dict:
    """FLOPs, seconds and GFLOP/s of one text-to-image generation and one understanding answer vs the peak."""
    peak = matmul_peak(repeats=5 if quick else 15)
    t2i = t2i_inputs(processor, 1)
    und = understanding_inputs(processor)
    with torch.no_grad():
        t2i_flops, t2i_parts = count_flops(lambda: generate(model, t2i))
        und_flops, und_parts = count_flops(lambda: answer(model, und))
    repeats = 3 if quick else 7
    t2i_time = measure(lambda: generate(model, t2i), repeats=repeats)
    und_time = measure(lambda: answer(model, und), repeats=repeats)
    times = _component_times(model, t2i)
    peak_rate = peak["gflops_per_s"] * 1e9
    components = {
        label: {
            "gflop": t2i_parts[label] / 1e9,
            "seconds": times.get(label),
            "gflops_per_s": t2i_parts[label] / times[label] / 1e9 if times.get(label) else None,
            "fraction_of_peak": t2i_parts[label] / times[label] / peak_rate if times.get(label) else None,
        }
        for label in ("llm", "var_blocks", "gen_projectors", "vqvae_decode")
    }

    def summary(flops: int, seconds: float) -> dict:
        return {
            "gflop": flops / 1e9,
            "median_s": seconds,
            "gflops_per_s": flops / seconds / 1e9,
            "fraction_of_peak": flops / seconds / peak_rate,
            "seconds_at_peak": flops / peak_rate,
        }

    t2i_summary = summary(t2i_flops, t2i_time["median_s"])
    # batching cannot raise GFLOP/s above the peak: the most any batch size can gain over batch 1
    t2i_summary["max_batch_throughput_gain_at_peak"] = 1 / t2i_summary["fraction_of_peak"]
    und_summary = summary(und_flops, und_time["median_s"])
    return {
        "matmul_peak": peak,
        "t2i_batch1": {**t2i_summary, "components": components},
        "understanding": {**und_summary, "components_gflop": {k: v / 1e9 for k, v in und_parts.items() if v}},
        "roofline": (
            f"one 256x256 generation is {t2i_summary['gflop']:.1f} GFLOP: at the measured {peak['gflops_per_s']:.0f} "
            f"GFLOP/s matmul peak it needs at least {t2i_summary['seconds_at_peak']:.3f} s; it takes "
            f"{t2i_summary['median_s']:.3f} s, i.e. {t2i_summary['gflops_per_s']:.0f} GFLOP/s = "
            f"{100 * t2i_summary['fraction_of_peak']:.0f}% of peak, so no batch size can raise images/s by more than "
            f"{t2i_summary['max_batch_throughput_gain_at_peak']:.2f}x"
        ),
        "measured_at": time.strftime("%H:%M:%S"),
    }
