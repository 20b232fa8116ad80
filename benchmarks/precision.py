"""Half precision as a measured path: bf16 (and fp16 where the device runs it fast) against fp32, same run, same
weights, on the medium model.

Speed: text-to-image at batch 1 (greedy, no guidance) and understanding (prefill + 32 greedy tokens), each dtype
timed in interleaved rounds with fp32, ratio = median over rounds of fp32 seconds / half seconds.
Quality, against fp32 on the same device: the share of greedy image codes that are identical, the decoded images'
largest and mean absolute difference (0–1 pixel scale), and the share of identical greedy answer tokens.

Whether bf16 pays on a CPU depends on its instructions: with AVX512-BF16 or AMX (Intel Sapphire Rapids and later, AMD
Zen 4 and later) oneDNN runs bf16 matmuls natively; without them bf16 is emulated and slower than fp32. The section
records the CPU's flags beside the numbers.

    python -m benchmarks.precision [--device cuda] [--quick] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from .medium import build_medium, setup_torch, t2i_inputs, understanding_inputs
from .timing import measure_interleaved, paired_ratio, write_result

NEW_TOKENS = 32
GREEDY_IMAGE = {"do_sample": False, "guidance_scale": 1.0}
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")


def cpu_features() -> dict:
    """The CPU's model name and which of the bf16/fp16-relevant instruction flags it has (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (None, "", "x86_64"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": name, **{flag: flag in flags for flag in CPU_FLAGS}}


def half_dtypes(device: torch.device) -> list[torch.dtype]:
    """bf16 everywhere; fp16 on CUDA and on CPUs with AVX512-FP16 or AMX-FP16 (elsewhere fp16 matmuls are
    emulated on CPU)."""
    if device.type == "cuda":
        return [torch.bfloat16, torch.float16]
    features = cpu_features()
    return [torch.bfloat16, torch.float16] if features["avx512_fp16"] or features["amx_fp16"] else [torch.bfloat16]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _draw(model, inputs, device):
    output = model.generate_images(**inputs, **GREEDY_IMAGE)
    _sync(device)
    return output


def _answer(model, inputs, device):
    tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    _sync(device)
    return tokens


def agreement(reference, candidate) -> dict:
    """How far a half-precision drawing and answer are from fp32's (both `(drawing output, answer tokens)`)."""
    codes = (candidate[0].image_tokens == reference[0].image_tokens).float().mean().item()
    difference = (candidate[0].images.float() - reference[0].images.float()).abs()
    prompt_length = reference[1].shape[1] - NEW_TOKENS
    tokens = (candidate[1][:, prompt_length:] == reference[1][:, prompt_length:]).float().mean().item()
    return {"identical_codes": codes, "image_max_abs_diff": difference.max().item(),
            "image_mean_abs_diff": difference.mean().item(), "identical_answer_tokens": tokens}


def run(model, processor, quick: bool = False, device: str | torch.device = "cpu") -> dict:
    """Speed ratios and agreement of each half dtype against fp32 on `device` (the fp32 `model` is not changed)."""
    device = torch.device(device)
    models = {"float32": copy.deepcopy(model).to(device)}
    for dtype in half_dtypes(device):
        models[str(dtype).removeprefix("torch.")] = copy.deepcopy(model).to(device=device, dtype=dtype)
    draw_inputs = t2i_inputs(processor).to(device)
    question = understanding_inputs(processor).to(device)
    outputs, result = {}, {"device": str(device), "settings": {"batch_size": 1, **GREEDY_IMAGE,
                                                                 "answer_tokens": NEW_TOKENS}}
    with torch.no_grad():
        for name, candidate in models.items():
            pixels = question["pixel_values"].to(candidate.dtype)
            outputs[name] = (_draw(candidate, draw_inputs, device), _answer(candidate, {**question,
                                                                                     "pixel_values": pixels}, device))
        repeats = 3 if quick else 7
        draw_timings = measure_interleaved(
            {name: (lambda m=m: _draw(m, draw_inputs, device)) for name, m in models.items()}, repeats
        )
        answer_timings = measure_interleaved(
            {name: (lambda m=m: _answer(m, {**question, "pixel_values": question["pixel_values"].to(m.dtype)},
                                        device)) for name, m in models.items()}, repeats
        )
    result["timings"] = {"t2i_batch1": draw_timings, "understanding": answer_timings}
    result["half"] = {
        name: {
            "t2i_speedup_over_fp32": paired_ratio(draw_timings, "float32", name),
            "understanding_speedup_over_fp32": paired_ratio(answer_timings, "float32", name),
            **agreement(outputs["float32"], outputs[name]),
        }
        for name in models if name != "float32"
    }
    if device.type == "cpu":
        result["cpu"] = cpu_features()
        result["num_threads"] = torch.get_num_threads()
    else:
        result["accelerator"] = torch.cuda.get_device_name(device)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 timed rounds instead of 7")
    parser.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    setup_torch()
    model, processor = build_medium()
    result = run(model, processor, quick=args.quick, device=args.device)
    if args.output:
        write_result(args.output, result, indent=2)
    print(json.dumps({"device": result["device"], "cpu": result.get("cpu"), "half": result["half"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
