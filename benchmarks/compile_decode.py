"""torch.compile (inductor) of the VQVAE decode against the eager decode, same f̂, same run: is a compile option worth
offering on CPU?

    python -m benchmarks.compile_decode [--repeats 6]

Prints the compile time (first call included) and the median seconds of alternating eager / compiled calls on the
medium model's 256² decode, and their largest difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .medium import build_medium, setup_torch, t2i_inputs
from .timing import measure_interleaved, paired_ratio


def run(model, processor, repeats: int = 6) -> dict:
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args(argv)
    setup_torch()
    result = run(*build_medium(), repeats=args.repeats)
    print(json.dumps({k: v for k, v in result.items() if k != "timings"}
                     | {name: t["median_s"] for name, t in result["timings"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
