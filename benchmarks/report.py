"""Markdown tables of a `results.json`, written into BENCHMARKS.md between its result markers.

`python -m benchmarks.report [RESULTS_JSON] [--markdown BENCHMARKS.md]`; `benchmarks.run` calls it after a full run
into the default output directory, so BENCHMARKS.md always shows the committed results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .timing import REPO_ROOT

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def run_info(results: dict) -> str:
    env = results["environment"]
    commit = env["commit"][:12] + (" (src/ modified)" if env.get("dirty_src") else "")
    contention = []
    for name, section in results["sections"].items():
        others = section.get("section_environment", {}).get("other_processes_cpu_fraction")
        contention.append(f"{name} {'?' if others is None else f'{100 * others:.0f}%'}")
    times = sorted(sec["section_environment"]["time_utc"] for sec in results["sections"].values()
                   if "section_environment" in sec)
    commits = sorted({sec["section_environment"]["commit"][:12] for sec in results["sections"].values()
                      if "section_environment" in sec})
    return _table(["", ""], [
        ["mode", f"{results['mode']} (wall of the last invocation {results['wall_s'] / 60:.1f} min)"],
        ["sections finished (UTC)", f"{times[0]} … {times[-1]}" if len(times) > 1 else env["time_utc"]],
        ["git commit", commit + (f" (sections measured at {', '.join(commits)})" if len(commits) > 1 else "")],
        ["torch / transformers / python", f"{env['torch']} / {env['transformers']} / {env['python']}"],
        ["CPU", f"{env['cpu_model']}, {env['logical_cpus']} logical CPUs, torch threads {env['torch_threads']}"],
        ["dtype", env["dtype"]],
        ["CPU used by other processes per section", ", ".join(contention)],
    ])


def bars(results: dict) -> str:
    rows = []
    for name, bar in results["bars"].items():
        verdict = "n/a" if bar["pass"] is None else "**pass**" if bar["pass"] else "**FAIL**"
        value = "-" if bar["value"] is None else f"{bar['value']:.3f} {bar['unit']}"
        rows.append([bar["what"], value, f"{bar['comparison']} {bar['target']} {bar['unit']}", verdict])
    return _table(["bar", "measured", "target", "result"], rows)


def t2i(section: dict) -> str:
    rows = [[b, f"{v['median_s']:.3f}", f"{v['seconds_per_image']:.3f}", f"{v['images_per_s']:.3f}",
             f"{v['throughput_vs_batch1']:.2f}x", v["repeats"]] for b, v in section["by_batch"].items()]
    table = _table(["batch", "s / call (median)", "s / image", "images / s", "vs batch 1", "repeats"], rows)
    phases = section["breakdown"]["phases"]
    split_rows = []
    for label, p in phases.items():
        name = label if "side" not in p else f"{label} ({p['side']}x{p['side']})"
        projectors = p.get("gen_input_projector", 0) + p.get("gen_output_projector", 0)
        split_rows.append([name, _ms(p["total_s"]), _ms(p["llm"]), _ms(p["var_blocks"]), _ms(projectors),
                           _ms(p["vqvae_decode"]), _ms(p["other"])])
    t = section["breakdown"]["components_total_s"]
    projectors = t["gen_input_projector"] + t["gen_output_projector"]
    split_rows.append(["**total**", _ms(t["total_s"]), _ms(t["llm"]), _ms(t["var_blocks"]), _ms(projectors),
                       _ms(t["vqvae_decode"]), _ms(t["other"])])
    split_rows.append(["share", "100%"] + [f"{100 * x / t['total_s']:.0f}%" for x in
                                           (t["llm"], t["var_blocks"], projectors, t["vqvae_decode"], t["other"])])
    split = _table(["phase (batch 1, ms, median)", "total", "LLM", "VAR blocks", "gen projectors", "VQVAE decode",
                    "other"], split_rows)
    faults = section["breakdown"].get("minor_page_faults")
    if faults:
        parts = ", ".join(f"{name} {count:,}" for name, count in faults.items() if name != "whole_generation")
        split += (f"\n\nMinor page faults per batch-1 generation (memory mapped in afresh and zeroed instead of "
                  f"reused; 4 KiB each): {faults['whole_generation']:,} "
                  f"(≈{faults['whole_generation'] * 4 / 1024:.0f} MiB); {parts}.")
    return f"{table}\n\n{split}"


def released(section: dict) -> str:
    t = section["timings"]
    table = _table(["method", "s / image (median)", "min", "max", "repeats"], [
        [name, f"{t[key]['median_s']:.3f}", f"{t[key]['min_s']:.3f}", f"{t[key]['max_s']:.3f}", t[key]["repeats"]]
        for name, key in (("VARGPT `generate_images`", "vargpt"), ("released-style loop, same model", "released_style"))
    ])
    speedup = f"\n\nSpeed-up over the released loop's work, same run: **{section['speedup']:.2f}x**."
    return table + speedup + _waste_rows(section) + _decode_rows(section)


def released_code(section: dict) -> str:
    if "skipped" in section:
        return f"Skipped: {section['skipped']}."
    seconds = section["seconds"]
    rows = [[task, f"{seconds[f'released_{key}']['median']:.3f}", f"{seconds[f'ours_{key}']['median']:.3f}",
             f"**{section[ratio]['median']:.2f}x**", f"{section[ratio]['min']:.2f}–{section[ratio]['max']:.2f}"]
            for task, key, ratio in (("text-to-image (680 codes)", "t2i", "t2i_ratio"),
                                     ("understanding (32 tokens)", "understanding", "understanding_ratio"))]
    others = section.get("other_processes_cpu_fraction") or {}
    notes = (f"\n\n{section['rounds']} rounds of alternating processes, {section['repeats_per_process']} timed calls "
             f"each, {section['threads']} threads; released code under transformers "
             f"{section['released_environment']['transformers']}. Greedy codes identical: "
             f"{'yes' if section['codes_identical'] else '**no**'}; answer tokens identical: "
             f"{'yes' if section['tokens_identical'] else '**no**'}.")
    if others:
        notes += (f" CPU taken by other processes per timing process: median {100 * others['median']:.0f}%, "
                  f"max {100 * others['max']:.0f}%.")
    return _table(["task", "released s (median)", "ours s (median)", "released / ours", "per-round range"],
                  rows) + notes


def _waste_rows(section: dict) -> str:
    waste = section.get("waste")
    if not waste:
        return ""
    released = section["timings"]["released_style"]["median_s"]
    table = _table(["wasted work in the released loop", "s / image it adds", "share of the released-style median"], [
        [waste["what"][item], f"{cost:.3f}", f"{cost / released:.0%}"] for item, cost in waste["cost_s"].items()
    ])
    return ("\n\nWhat each item of waste adds, same run, each timed alone on the generation's shapes "
            "(`released.waste_costs`):\n\n" + table)


def _decode_rows(section: dict) -> str:
    decode = section.get("decode")
    if not decode:
        return ""
    table = _table(["VQVAE decode, batch", "released work s / image", "ours s / image", "speed-up"], [
        [batch, f"{d['seconds_per_image']['released_style']:.3f}", f"{d['seconds_per_image']['vargpt']:.3f}",
         f"{d['speedup']:.2f}x"]
        for batch, d in decode.items()
    ])
    return ("\n\nThe decode alone, same f̂ (released: channels-first, whole batch, nearest upsampling + 3×3 conv; "
            "ours: channels-last, one image per call, 2×2 phase convs, in-place activations):\n\n" + table)


def raster(section: dict) -> str:
    t = section["timings"]
    return _table(["method", "sequential steps", "s / image (median)", "repeats"], [
        ["next-scale (VARGPT)", section["sequential_steps"]["next_scale_vargpt"],
         f"{t['next_scale_vargpt']['median_s']:.3f}", t["next_scale_vargpt"]["repeats"]],
        ["raster-scan AR, same model", section["sequential_steps"]["raster_scan"],
         f"{t['raster_scan']['median_s']:.2f}", t["raster_scan"]["repeats"]],
    ]) + (f"\n\nSpeed-up **{section['speedup']:.1f}x**; both use the same "
          f"{section['generation_parameters'] / 1e6:.1f} M generation parameters "
          f"({1000 * section['raster_seconds_per_code']:.1f} ms per raster step).")


def understanding(section: dict) -> str:
    t = section["timings"]
    return _table(["model", "s (median)", "min", "max", "repeats"], [
        [name, f"{t[key]['median_s']:.3f}", f"{t[key]['min_s']:.3f}", f"{t[key]['max_s']:.3f}", t[key]["repeats"]]
        for name, key in (("VARGPT", "vargpt"), ("transformers LLaVA, same weights", "llava"))
    ]) + (f"\n\nLLaVA / VARGPT = **{section['ratio_llava_over_vargpt']:.3f}x**; prompt {section['prompt_tokens']} "
          f"tokens ({section['image_tokens']} image tokens), {section['new_tokens']} new tokens; identical greedy "
          f"tokens: {section['same_greedy_tokens_as_llava']}, max prefill logit difference "
          f"{section['max_abs_prefill_logit_difference']:.1e}.")


def flops(section: dict) -> str:
    peak = section["matmul_peak"]
    rows = [[name, f"{c['gflop']:.1f}", _ms(c["seconds"]),
             "-" if c["gflops_per_s"] is None else f"{c['gflops_per_s']:.0f}",
             "-" if c["fraction_of_peak"] is None else f"{100 * c['fraction_of_peak']:.0f}%"]
            for name, c in section["t2i_batch1"]["components"].items()]
    for name, key in (("**whole generation**", "t2i_batch1"), ("understanding (prefill + 32)", "understanding")):
        s = section[key]
        rows.append([name, f"{s['gflop']:.1f}", _ms(s["median_s"]), f"{s['gflops_per_s']:.0f}",
                     f"{100 * s['fraction_of_peak']:.0f}%"])
    return (f"Matmul peak (2048² float32, same run): **{peak['gflops_per_s']:.0f} GFLOP/s** "
            f"(median of {peak['repeats']}).\n\n"
            + _table(["part", "GFLOP", "ms", "GFLOP/s", "of peak"], rows)
            + f"\n\nRoofline: {section['roofline']}.")


def memory(section: dict) -> str:
    rows = [[name, f"{w['peak_rss_mb']:.0f}", f"{w['rss_before_mb']:.0f}", f"{w['workload_mb']:.0f}"]
            for name, w in section["workloads"].items() if w.get("peak_rss_mb")]
    return _table(["workload", "peak RSS (MB)", "resident before (MB)", "added by the workload (MB)"], rows)


def scales(section: dict) -> str:
    rows = [[",".join(map(str, p["patch_nums"])), f"{p['image_size']}px", p["codes"], f"{p['median_s']:.3f}",
             _ms(p["split_s"]["llm"]), _ms(p["split_s"]["var_blocks_and_projectors"]),
             _ms(p["split_s"]["vqvae_decode"])] for p in section["points"]]
    return _table(["patch_nums", "image", "codes", "s (median)", "LLM ms", "VAR + proj. ms", "VQVAE ms"], rows)


def training(section: dict) -> str:
    rows = [[stage, s["data"], s["batch_size"], s["sequence_length"], f"{s['trainable_parameters'] / 1e6:.1f} M",
             f"{s['median_s']:.2f}", f"**{s['samples_per_s']:.2f}**"] for stage, s in section["stages"].items()]
    return _table(["stage", "data", "batch", "seq len", "trainable", "s / step", "samples / s"], rows) + (
        f"\n\n{section['loop']}; {section['optimizer']}.")


RENDERERS = [("t2i", "Text-to-image latency, throughput and where the time goes", t2i, ["t2i_throughput.png",
              "t2i_breakdown.png"]),
             ("released", "Against the released loop's work (same model, same run)", released,
              ["released_vs_ours.png"]),
             ("released_code", "Against the released code itself (reference environment)", released_code, []),
             ("raster", "Next-scale vs raster-scan autoregression", raster, ["raster_vs_next_scale.png"]),
             ("understanding", "Understanding vs transformers LLaVA", understanding, ["understanding_vs_llava.png"]),
             ("flops", "FLOPs and roofline", flops, ["roofline.png"]),
             ("memory", "Peak memory", memory, ["memory.png"]),
             ("scales", "Latency vs number of scales", scales, ["scales.png"]),
             ("training", "Training throughput", training, ["training.png"])]


def history(path: Path, last: int = 10) -> str:
    """The last full runs' headline numbers (benchmarks/results/history.jsonl): how much runs drift."""
    if not path.is_file():
        return ""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # full runs that measured text-to-image themselves (a `--only` run repeats the numbers it merged in)
    entries = [e for e in entries if e.get("mode") == "full" and "t2i" in e.get("measured", e["sections"])][-last:]

    def fmt(value, pattern):
        return "-" if value is None else pattern.format(value)

    rows = [[e["time_utc"], e["commit"] + ("*" if e.get("dirty_src") else ""), fmt(e["t2i_batch1_s"], "{:.3f}"),
             fmt(e.get("released_speedup"), "{:.2f}x"), fmt(e["batch8_gain"], "{:.2f}x"),
             fmt(e["raster_speedup"], "{:.1f}x"),
             fmt(e["understanding_ratio"], "{:.3f}x"), fmt(e["matmul_peak_gflops_per_s"], "{:.0f}"),
             fmt(e["max_other_processes_cpu_fraction"], "{:.0%}")] for e in entries]
    return _table(["run (UTC)", "commit", "t2i batch 1 s", "vs released loop", "batch 8 gain", "raster speed-up",
                   "LLaVA ratio",
                   "peak GFLOP/s", "max CPU of others"], rows)


def render(results: dict, image_dir: str = "benchmarks/results") -> str:
    parts = ["### Run", run_info(results), "### Bars", bars(results)]
    past = history(REPO_ROOT / image_dir / "history.jsonl")
    if past:
        parts += ["### Recent full runs (drift between runs; `*`: src/ had uncommitted edits)", past]
    for key, title, renderer, images in RENDERERS:
        if key in results["sections"]:
            parts += [f"### {title}", renderer(results["sections"][key])]
            if images:
                parts += [" ".join(f"![{image}]({image_dir}/{image})" for image in images)]
    return "\n\n".join(parts)


def update_markdown(results: dict, markdown: Path = REPO_ROOT / "BENCHMARKS.md") -> bool:
    """Replace the text between the result markers of `markdown`; False when the file or markers are missing."""
    if not markdown.is_file():
        return False
    text = markdown.read_text()
    if START not in text or END not in text:
        return False
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    markdown.write_text(f"{head}{START}\n<!-- generated by `python -m benchmarks.report`; do not edit by hand -->\n\n"
                        f"{render(results)}\n\n{END}{tail}")
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "results.json")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not update_markdown(json.loads(args.results.read_text()), args.markdown):
        raise SystemExit(f"{args.markdown} is missing or has no {START} ... {END} markers")


if __name__ == "__main__":
    main()
