"""Column-major weights for drawings on CPU (`transformers_vargpt.cpu_matmul.column_major_weights`) against the
row-major weights `nn.Linear` is created with, same run.

Two measurements, 2 threads, float32:
- products: the medium model's weight shapes times the row counts of a drawing's scales (1, 4, 9, ... 256), GFLOP/s
  of `F.linear` on row-major and on column-major copies of the same weights. Each call runs over a pool of distinct
  weights larger than the caches, as a scale's forward pass reads them; the two layouts alternate, best of rounds.
- the medium model: text-to-image at batch 1 (greedy, no guidance) on two copies of one model, one drawing with
  `column_major_drawing_weights` off (row-major) and one with it on, in interleaved rounds (ratio = median over
  rounds of row-major seconds / column-major seconds), and whether the greedy codes are the same; then
  understanding (one image, 32 greedy tokens) on the same two copies, since the layout stays after a drawing.

    python -m benchmarks.column_major [--quick] [--output FILE.json]
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from transformers_vargpt import cpu_matmul

from .medium import build_medium, setup_torch, t2i_inputs, understanding_inputs
from .sliced_matmul import (
    POOL_BYTES,
    ROWS,
    SHAPES,
    machine_record,
    parse_arguments,
    with_cpu_matmul_setting,
    write_and_print_products,
)
from .timing import measure_interleaved, paired_ratio

NEW_TOKENS = 32


def _seconds(weights: list[torch.Tensor], x: torch.Tensor) -> float:
    start = time.perf_counter()
    for weight in weights:
        F.linear(x, weight)
    return time.perf_counter() - start


def products(rounds: int) -> dict:
    """GFLOP/s of row-major and column-major products for each weight shape and row count."""
    result = {}
    with torch.no_grad():
        for name, (fan_in, fan_out) in SHAPES.items():
            row_major = [torch.randn(fan_out, fan_in) for _ in range(max(1, POOL_BYTES // (4 * fan_in * fan_out)))]
            column_major = [weight.t().contiguous().t() for weight in row_major]
            result[name] = {}
            for rows in ROWS:
                x = torch.randn(rows, fan_in)
                flop = 2.0 * rows * fan_in * fan_out * len(row_major)
                best = {"row_major": float("inf"), "column_major": float("inf")}
                for _ in range(rounds):
                    best["row_major"] = min(best["row_major"], _seconds(row_major, x))
                    best["column_major"] = min(best["column_major"], _seconds(column_major, x))
                result[name][rows] = {"row_major_gflops": round(flop / best["row_major"] / 1e9, 1),
                                      "column_major_gflops": round(flop / best["column_major"] / 1e9, 1),
                                      "speedup": round(best["row_major"] / best["column_major"], 3)}
    return result


def whole_model(model, processor, repeats: int) -> dict:
    """Drawing, then understanding, on a row-major and a column-major copy of `model`, interleaved."""
    copies = {"row_major": model, "column_major": copy.deepcopy(model)}
    drawing = t2i_inputs(processor)
    question = understanding_inputs(processor)
    result = {}
    with torch.no_grad():
        draws = {layout: with_cpu_matmul_setting(
            "column_major_drawing_weights", layout == "column_major",
            lambda m=m: m.generate_images(**drawing, do_sample=False, guidance_scale=1.0).image_tokens,
        ) for layout, m in copies.items()}
        answers = {layout: lambda m=m: m.generate(**question, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                                  do_sample=False) for layout, m in copies.items()}
        for task, calls in (("t2i_batch1", draws), ("understanding_after_a_drawing", answers)):
            timings = measure_interleaved(calls, repeats)  # its warm-up drawing converts the column-major copy
            result[task] = {"speedup": paired_ratio(timings, "row_major", "column_major"),
                            "same_output": torch.equal(calls["row_major"](), calls["column_major"]()),
                            "timings": timings}
    layers = [m for part in copies["column_major"].layers_run_per_scale() for m in part.modules()
              if isinstance(m, torch.nn.Linear)]
    result["column_major_layers"] = sum(cpu_matmul.is_column_major(m.weight) for m in layers)
    result["per_scale_linear_layers"] = len(layers)
    return result


def main(argv=None) -> dict:
    args = parse_arguments("column_major", __doc__.splitlines()[0], argv)
    setup_torch()
    model, processor = build_medium()
    result = {**machine_record("column_major_drawing_weights"), "products": products(rounds=2 if args.quick else 5),
              "whole_model": whole_model(model, processor, repeats=3 if args.quick else 15)}
    for task in ("t2i_batch1", "understanding_after_a_drawing"):
        measured = result["whole_model"][task]
        print(f"{task}: column-major {measured['speedup']:.2f}x faster than row-major, "
              f"same output: {measured['same_output']}")
    write_and_print_products(result, args.output)
    return result


if __name__ == "__main__":
    main()
