"""torch.compile (inductor) against eager, same model, same run: is a compile option worth offering?

Two parts, each compiled the way a user would opt in, with its compile time (first call included) reported:

- `decode`: the VQVAE decode of one 256² image (`torch.compile(vqvae.decode_fhat, dynamic=False)`; one shape);
- `scale_step`: the per-scale work of a drawing, the LLM's decoder layers and VAR's blocks compiled in place
  (`module.compile(dynamic=True)`: one graph for all scales and prompt lengths), drawings timed against an eager
  copy of the model with the same weights, greedy codes compared.

    python -m benchmarks.torch_compile [--part decode|scale_step|all] [--repeats 6] [--output FILE.json]

Prints, per part, the compile time, the median seconds of alternating eager / compiled calls, the paired speed-up
and the difference of the outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .medium import build_medium, setup_torch, t2i_inputs
from .timing import environment, measure_interleaved, paired_ratio, write_result

PARTS = ("decode", "scale_step")


@contextmanager
def recompile_limits(per_code: int = 64, total: int = 1024):
    """Raise dynamo's recompile limits for the run (restored afterwards). The 8 LLM layers (and the 8 VAR blocks)
    share one `forward` code object, and each compiles a graph for an empty and a filled KV cache: 16 entries,
    over the default limit of 8, past which dynamo would quietly run the rest eagerly."""
    config = torch._dynamo.config
    saved = config.recompile_limit, config.accumulated_recompile_limit
    config.recompile_limit, config.accumulated_recompile_limit = per_code, total
    try:
        yield
    finally:
        config.recompile_limit, config.accumulated_recompile_limit = saved


def compile_decode(model, processor, repeats: int) -> dict:
    vqvae = model.model.vqvae
    with torch.no_grad():
        codes = model.generate_images(**t2i_inputs(processor), do_sample=False, guidance_scale=1.0).image_tokens
        f_hat = vqvae.tokens_to_fhat(codes)
        compiled = torch.compile(vqvae.decode_fhat, dynamic=False)
        start = time.perf_counter()
        compiled_image = compiled(f_hat)
        compile_s = time.perf_counter() - start
        timings = measure_interleaved({"eager": lambda: vqvae.decode_fhat(f_hat), "compiled": lambda: compiled(f_hat)},
                                      repeats)
        difference = (compiled_image - vqvae.decode_fhat(f_hat)).abs().max().item()
    return {"compile_and_first_call_s": compile_s, "timings": timings,
            "compiled_speedup": paired_ratio(timings, "eager", "compiled"), "max_abs_difference": difference}


def scale_step_modules(model) -> list[torch.nn.Module]:
    """The modules a drawing runs at every scale that `compile_scale_step` compiles: the LLM's decoder layers and
    VAR's blocks (the projectors and the code head are single products)."""
    return list(model.model.language_model.layers) + list(model.model.scale_decoder.blocks)


def compile_scale_step(model, processor, repeats: int) -> dict:
    inputs = t2i_inputs(processor)
    compiled_model = copy.deepcopy(model)  # same weights; the eager model stays as it is

    def draw(which):
        return lambda: which.generate_images(**inputs, do_sample=False, guidance_scale=1.0).image_tokens

    with recompile_limits():
        for module in scale_step_modules(compiled_model):
            module.compile(dynamic=True)
        start = time.perf_counter()
        compiled_codes = draw(compiled_model)()
        compile_s = time.perf_counter() - start
        timings = measure_interleaved({"eager": draw(model), "compiled": draw(compiled_model)}, repeats)
        eager_codes = draw(model)()
        compiled_codes_again = draw(compiled_model)()
    same = bool(torch.equal(eager_codes, compiled_codes) and torch.equal(eager_codes, compiled_codes_again))
    return {"compile_and_first_call_s": compile_s, "timings": timings,
            "compiled_speedup": paired_ratio(timings, "eager", "compiled"),
            "identical_codes": same, "codes_per_image": int(eager_codes.shape[1]),
            "compiled_modules": len(scale_step_modules(compiled_model))}


def run(model, processor, parts=PARTS, repeats: int = 6) -> dict:
    measure = {"decode": compile_decode, "scale_step": compile_scale_step}
    return {part: measure[part](model, processor, repeats) for part in parts}


def summary(result: dict) -> dict:
    return {part: {key: value for key, value in section.items() if key != "timings"}
            | {f"{name}_median_s": timing["median_s"] for name, timing in section["timings"].items()}
            for part, section in result.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_compile", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    setup_torch()
    parts = PARTS if args.part == "all" else (args.part,)
    result = run(*build_medium(), parts=parts, repeats=args.repeats)
    if args.output:
        write_result(args.output, {**result, "environment": environment()})
    print(json.dumps(summary(result), indent=1))
    return result


if __name__ == "__main__":
    main()
