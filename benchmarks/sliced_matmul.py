"""Thread-sliced linear layers on CPU (`transformers_vargpt.cpu_matmul`) against plain `nn.Linear`, same run.

Two measurements, 2 threads, float32:
- products: the medium model's weight shapes (LLM 512→1376, 1376→512; VAR 512→2048, 2048→512; code head
  512→4096) times the row counts of a drawing's scales (1, 4, 9, ... 256), GFLOP/s of `F.linear` and of the sliced
  product. Each call runs over a pool of distinct weights larger than the caches, as a forward pass reads them.
- the medium model: understanding (one image, 32 greedy tokens, where `generate` slices) and, for the record,
  text-to-image at batch 1 (greedy, no guidance) run inside `sliced_cpu_matmuls` though the package does not slice
  drawings; slicing on and off in interleaved rounds (ratio = median over rounds of off seconds / on seconds), and
  whether the greedy codes and tokens are the same both ways.

    python -m benchmarks.sliced_matmul [--quick] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transformers_vargpt import cpu_matmul

from .medium import build_medium, setup_torch, t2i_inputs, understanding_inputs
from .precision import cpu_features
from .timing import measure_interleaved, paired_ratio, write_result

SHAPES = {"llm_up": (512, 1376), "llm_down": (1376, 512), "var_fc1": (512, 2048), "var_fc2": (2048, 512),
          "code_head": (512, 4096)}
ROWS = (1, 4, 9, 16, 25, 36, 64, 100, 169, 256)
POOL_BYTES = 128 * 2**20  # distinct weights per call: more than any CPU's caches
NEW_TOKENS = 32


def _gflops(call, flop: float, repeats: int) -> float:
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return flop * repeats / (time.perf_counter() - start) / 1e9


def _sliced_calls(layers: list[nn.Linear], x: torch.Tensor) -> None:
    with cpu_matmul.sliced_cpu_matmuls(nn.ModuleList(layers)):
        for layer in layers:
            layer(x)


def products(repeats: int) -> dict:
    """GFLOP/s of plain and sliced products for each weight shape and row count."""
    result = {}
    with torch.no_grad():
        for name, (fan_in, fan_out) in SHAPES.items():
            layers = [nn.Linear(fan_in, fan_out) for _ in range(max(1, POOL_BYTES // (4 * fan_in * fan_out)))]
            result[name] = {}
            for rows in ROWS:
                x = torch.randn(rows, fan_in)
                flop = 2.0 * rows * fan_in * fan_out * len(layers)
                plain = _gflops(lambda: [F.linear(x, m.weight, m.bias) for m in layers], flop, repeats)
                sliced_calls = with_cpu_matmul_setting("enabled", True, lambda: _sliced_calls(layers, x))
                sliced = _gflops(sliced_calls, flop, repeats)
                result[name][rows] = {"plain_gflops": round(plain, 1), "sliced_gflops": round(sliced, 1),
                                      "speedup": round(sliced / plain, 3)}
    return result


def with_cpu_matmul_setting(name: str, value: bool, call):
    """`call`, wrapped to run with `transformers_vargpt.cpu_matmul.<name>` set to `value` (restored afterwards)."""
    def run():
        default = getattr(cpu_matmul, name)
        setattr(cpu_matmul, name, value)
        try:
            return call()
        finally:
            setattr(cpu_matmul, name, default)

    return run


def whole_model(model, processor, repeats: int) -> dict:
    """Understanding and text-to-image with slicing on and off, interleaved; speed-ups and output agreement."""
    drawing = t2i_inputs(processor)
    question = understanding_inputs(processor)

    def draw():
        with cpu_matmul.sliced_cpu_matmuls(model):
            return model.generate_images(**drawing, do_sample=False, guidance_scale=1.0).image_tokens

    def answer():
        return model.generate(**question, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)

    result = {}
    with torch.no_grad():
        for task, call in (("understanding", answer), ("t2i_batch1_if_sliced", draw)):
            on = with_cpu_matmul_setting("enabled", True, call)
            off = with_cpu_matmul_setting("enabled", False, call)
            timings = measure_interleaved({"sliced": on, "plain": off}, repeats)
            result[task] = {"speedup": paired_ratio(timings, "plain", "sliced"),
                            "same_output": torch.equal(on(), off()), "timings": timings}
    return result


def parse_arguments(module: str, description: str, argv) -> argparse.Namespace:
    """The command line of a `cpu_matmul` benchmark script: `python -m benchmarks.<module> [--quick] [--output F]`."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=description)
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def machine_record(setting: str) -> dict:
    """What a `cpu_matmul` result depends on: the CPU, torch, threads, and whether `setting` is on by default."""
    return {"cpu": cpu_features(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "on_by_default": getattr(cpu_matmul, setting), "num_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def write_and_print_products(result: dict, output: Path | None) -> None:
    """Writes `result` as JSON to `output` (if given) and prints its product speed-ups per shape and row count."""
    if output:
        write_result(output, result)
    for name, by_rows in result["products"].items():
        print(name, " ".join(f"{rows}:{r['speedup']:.2f}x" for rows, r in by_rows.items()))


def main(argv=None) -> dict:
    args = parse_arguments("sliced_matmul", __doc__.splitlines()[0], argv)
    setup_torch()
    model, processor = build_medium()
    result = {**machine_record("enabled"), "products": products(repeats=3 if args.quick else 10),
              "whole_model": whole_model(model, processor, repeats=3 if args.quick else 9)}
    for task, measured in result["whole_model"].items():
        print(f"{task}: sliced {measured['speedup']:.2f}x faster than plain, same output: {measured['same_output']}")
    write_and_print_products(result, args.output)
    return result


if __name__ == "__main__":
    main()
