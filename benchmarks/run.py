"""One command for every benchmark: `python -m benchmarks.run [--quick] [--only ...] [--output-dir DIR]`.

Writes `results.json` and PNG plots into the output directory (default `benchmarks/results`, or
`benchmarks/results/quick` with `--quick`) and prints a summary table. With `--only`, the sections named are
re-measured and merged into an existing `results.json` of the same mode (each section records its own commit and
time). All timings are medians over repeats, float32, `torch.set_num_threads(2)`. The `released_code` section times
the released implementation itself and needs a reference environment (`--reference-dir`, benchmarks/REFERENCE.md);
without one it records that it was skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from . import flops, memory, raster, released, released_code, scales, t2i, training, understanding
from .medium import GENERATION_SIZES, NUM_THREADS, TEXT_CONFIG, VISION_CONFIG, build_medium, count_parameters, setup_torch
from .timing import REPO_ROOT, CpuMonitor, environment, machine_busy, wait_until_quiet

logger = logging.getLogger("benchmarks")

SECTIONS = {
    "t2i": t2i.run,
    "released": released.run,
    "raster": raster.run,
    "understanding": understanding.run,
    "flops": flops.run,
    "scales": scales.run,
    "training": training.run,
    "memory": memory.run,
    "released_code": released_code.run,
}
# What the issue author measured on this configuration with the released implementation, on this machine.
REFERENCE = {"t2i_batch1_s": 0.97, "understanding_s": 0.40, "matmul_peak_gflops_per_s": 205.0}
BUSY_WARNING = 0.25
OTHERS_WARNING = 0.10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and points: under 5 minutes")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where results.json and the plots go (default benchmarks/results[/quick])")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None,
                        help="run only these sections (merged into an existing results.json)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each section wait up to this long for other processes to leave the CPUs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--reference-dir", default=os.environ.get(released_code.ENV_VAR), metavar="REF_DIR",
                        help="reference environment for the released_code section (benchmarks/REFERENCE.md; default "
                             f"${released_code.ENV_VAR}); without one that section is skipped")
    return parser.parse_args(argv)


def _bar(value, target, higher_is_better: bool, unit: str, what: str) -> dict:
    passed = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"what": what, "value": value, "target": target, "unit": unit,
            "comparison": ">=" if higher_is_better else "<=", "pass": passed}


def _get(results: dict, *keys):
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def bar_checks(sections: dict) -> dict:
    """The issue's acceptance bars as pass/fail (None where the section was not measured)."""
    by_batch = _get(sections, "t2i", "by_batch") or {}
    b1, b8 = by_batch.get("1", {}).get("images_per_s"), by_batch.get("8", {}).get("images_per_s")
    return {
        "t2i_batch1_latency": _bar(_get(sections, "t2i", "by_batch", "1", "median_s"), 0.8, False, "s",
                                   "text-to-image latency, batch 1 (1.2x faster than the released 0.97 s)"),
        "t2i_vs_released_style": _bar(_get(sections, "released", "speedup"), 1.2, True, "x",
                                      "text-to-image batch 1 vs the released loop's work on the same model, same run"),
        "t2i_vs_released_code": _bar(_get(sections, "released_code", "t2i_ratio", "median"), 1.5, True, "x",
                                     "text-to-image batch 1 vs the released code itself (reference venv, "
                                     "alternating processes; issue 17)"),
        "t2i_fraction_of_matmul_peak": _bar(_get(sections, "flops", "t2i_batch1", "fraction_of_peak"), 0.65, True,
                                            "", "text-to-image batch 1 FLOP rate / measured fp32 matmul peak "
                                                "(issue 17)"),
        "raster_speedup": _bar(_get(sections, "raster", "speedup"), 5.0, True, "x",
                               "next-scale VARGPT vs raster-scan AR of the same parameters"),
        "understanding_vs_llava": _bar(_get(sections, "understanding", "ratio_llava_over_vargpt"), 0.95, True, "x",
                                       "understanding speed relative to transformers LLaVA (LLaVA s / VARGPT s)"),
        "batch8_throughput_gain": _bar(b8 / b1 if b1 and b8 else None, 2.5, True, "x",
                                       "text-to-image images/s at batch 8 over batch 1"),
    }


def _load_previous(path: Path, mode: str) -> dict:
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("mode") == mode:
            return previous.get("sections", {})
    return {}


def summary_table(results: dict) -> str:
    """A plain-text table of the headline numbers and the bars."""
    s = results["sections"]
    rows = [("machine", f"{results['environment']['cpu_model']}, {results['environment']['torch_threads']} threads")]
    if "t2i" in s:
        for batch, stats in s["t2i"]["by_batch"].items():
            rows.append((f"t2i batch {batch}", f"{stats['median_s']:.3f} s/call, {stats['images_per_s']:.2f} images/s"))
    if "released" in s:
        timings = s["released"]["timings"]
        rows.append(("released-style loop (same model)", f"{timings['released_style']['median_s']:.3f} s vs "
                     f"{timings['vargpt']['median_s']:.3f} s: {s['released']['speedup']:.2f}x"))
    if "released_code" in s:
        rows.append(("released code (reference venv)", released_code.summary_line(s["released_code"])))
    if "raster" in s:
        timings = s["raster"]["timings"]
        rows.append(("raster-scan AR (same params)", f"{timings['raster_scan']['median_s']:.2f} s vs "
                     f"{timings['next_scale_vargpt']['median_s']:.3f} s: {s['raster']['speedup']:.1f}x"))
    if "understanding" in s:
        timings = s["understanding"]["timings"]
        rows.append(("understanding vs LLaVA", f"{timings['vargpt']['median_s']:.3f} s vs "
                     f"{timings['llava']['median_s']:.3f} s: {s['understanding']['ratio_llava_over_vargpt']:.3f}x"))
    if "flops" in s:
        f = s["flops"]
        rows.append(("matmul peak (2048^2)", f"{f['matmul_peak']['gflops_per_s']:.0f} GFLOP/s"))
        rows.append(("t2i FLOPs / achieved", f"{f['t2i_batch1']['gflop']:.1f} GFLOP, "
                     f"{f['t2i_batch1']['gflops_per_s']:.0f} GFLOP/s ({100 * f['t2i_batch1']['fraction_of_peak']:.0f}%)"))
    if "training" in s:
        for stage, stats in s["training"]["stages"].items():
            rows.append((f"training stage {stage}", f"{stats['samples_per_s']:.2f} samples/s (batch "
                         f"{stats['batch_size']}, seq {stats['sequence_length']})"))
    if "memory" in s:
        for name, stats in s["memory"]["workloads"].items():
            if "peak_rss_mb" in stats:
                rows.append((f"peak RSS {name}", f"{stats['peak_rss_mb']:.0f} MB"))
    contended = [f"{name} {100 * sec['section_environment']['other_processes_cpu_fraction']:.0f}%"
                 for name, sec in s.items()
                 if (sec.get("section_environment", {}).get("other_processes_cpu_fraction") or 0) > OTHERS_WARNING]
    rows.append(("CPU taken by other processes", ", ".join(contended) if contended else "none above 10%"))
    for name, bar in results["bars"].items():
        verdict = "n/a" if bar["pass"] is None else "PASS" if bar["pass"] else "FAIL"
        value = "-" if bar["value"] is None else f"{bar['value']:.3f}"
        rows.append((f"bar {name}", f"{verdict}: {value} {bar['unit']} (target {bar['comparison']} {bar['target']})"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def append_history(results: dict, path: Path, measured: list[str]) -> dict:
    """One line per run in `history.jsonl`: the headline numbers, to show drift between runs and commits.
    `measured`: the sections this invocation ran (with `--only`, the others are earlier runs' numbers)."""
    s, env = results["sections"], results["environment"]
    others = [sec.get("section_environment", {}).get("other_processes_cpu_fraction") or 0 for sec in s.values()]
    entry = {
        "time_utc": env["time_utc"], "commit": env["commit"][:12], "dirty_src": env.get("dirty_src"),
        "mode": results["mode"], "sections": sorted(s), "measured": sorted(measured),
        "t2i_batch1_s": _get(s, "t2i", "by_batch", "1", "median_s"),
        "released_speedup": _get(s, "released", "speedup"),
        "released_code_t2i_ratio": _get(s, "released_code", "t2i_ratio", "median"),
        "batch8_gain": results["bars"]["batch8_throughput_gain"]["value"],
        "raster_speedup": _get(s, "raster", "speedup"),
        "understanding_ratio": _get(s, "understanding", "ratio_llava_over_vargpt"),
        "matmul_peak_gflops_per_s": _get(s, "flops", "matmul_peak", "gflops_per_s"),
        "max_other_processes_cpu_fraction": max(others) if others else None,
    }
    with path.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    setup_torch(NUM_THREADS)
    mode = "quick" if args.quick else "full"
    output_dir = args.output_dir or REPO_ROOT / "benchmarks" / "results" / ("quick" if args.quick else "")
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / "results.json"
    names = args.only or list(SECTIONS)
    sections = _load_previous(results_path, mode) if args.only else {}

    started = time.perf_counter()
    logger.info("building the medium model")
    model, processor = build_medium()
    for name in names:
        busy = wait_until_quiet(args.wait_quiet) if args.wait_quiet else machine_busy()
        if busy is not None and busy > BUSY_WARNING:
            logger.warning("%.0f%% of the CPUs are busy with other processes: timings of %s will be slow", 100 * busy, name)
        logger.info("section %s", name)
        section_start = time.perf_counter()
        monitor = CpuMonitor().start()
        options = {"reference_dir": args.reference_dir} if name == "released_code" else {}
        result = SECTIONS[name](model, processor, quick=args.quick, **options)
        others = monitor.stop()
        if others is not None and others > OTHERS_WARNING:
            logger.warning("other processes used %.0f%% of the CPUs during %s: its timings are inflated",
                           100 * others, name)
        result["section_wall_s"] = time.perf_counter() - section_start
        result["section_environment"] = {**environment(), "machine_busy_before": busy,
                                         "other_processes_cpu_fraction": others}
        sections[name] = result

    results = {
        "mode": mode,
        "environment": environment(),
        "configuration": {
            "text": TEXT_CONFIG, "vision": VISION_CONFIG, "generation": GENERATION_SIZES,
            "patch_nums": list(model.config.patch_nums), "image_gen_size": model.config.image_gen_size,
            "parameters": {name: count_parameters(child) for name, child in model.model.named_children()}
            | {"lm_head": count_parameters(model.lm_head), "total": count_parameters(model)},
        },
        "reference": REFERENCE,
        "sections": sections,
        "bars": bar_checks(sections),
        "wall_s": time.perf_counter() - started,
    }
    results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    append_history(results, output_dir / "history.jsonl", names)
    if not args.no_plots:
        from . import plots  # matplotlib: the `bench` extra

        written = plots.write_all(results, output_dir)
        logger.info("plots: %s", ", ".join(path.name for path in written))
    if mode == "full" and args.output_dir is None:
        from .report import update_markdown

        if update_markdown(results):
            logger.info("updated the results in BENCHMARKS.md")
    logger.info("results: %s (wall %.0f s)", results_path, results["wall_s"])
    print(summary_table(results))  # the one print: the final summary
    return results


if __name__ == "__main__":
    main()
