"""PNG plots of a `results.json` (matplotlib, Agg backend): one figure per measured section."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"llm": "#4c72b0", "var_blocks": "#dd8452", "gen_input_projector": "#c9a26b",
          "gen_output_projector": "#a5804a", "vqvae_decode": "#55a868", "other": "#8c8c8c",
          "gen_projectors": "#a5804a"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def t2i_throughput(section: dict, out: Path) -> Path:
    batches = [f"batch {b}" for b in section["by_batch"]]
    ips = [v["images_per_s"] for v in section["by_batch"].values()]
    spi = [v["seconds_per_image"] for v in section["by_batch"].values()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(batches, ips, color="#4c72b0")
    left.set(ylabel="images / s", title="text-to-image throughput")
    right.bar(batches, spi, color="#dd8452")
    right.axhline(0.97, color="k", ls="--", lw=1, label="released, batch 1 (0.97 s)")
    right.axhline(0.8, color="r", ls=":", lw=1, label="bar, batch 1 (0.8 s)")
    right.set(ylabel="seconds / image", title="time per image")
    right.legend(fontsize=8)
    return _save(fig, out / "t2i_throughput.png")


def t2i_breakdown(section: dict, out: Path) -> Path:
    phases = section["breakdown"]["phases"]
    labels = [p.replace("scale_", "s") + (f"\n{phases[p]['side']}²" if "side" in phases[p] else "") for p in phases]
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * len(phases)
    for component, color in COLORS.items():
        values = [phases[p].get(component, 0.0) * 1000 for p in phases]
        ax.bar(labels, values, bottom=bottom, color=color, label=component)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="ms (median)", title="text-to-image batch 1: time per phase and component")
    ax.legend(fontsize=8, ncol=3)
    return _save(fig, out / "t2i_breakdown.png")


def raster(section: dict, out: Path) -> Path:
    t = section["timings"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    names = ["next-scale (VARGPT)\n10 steps", f"raster-scan AR\n{section['codes']} steps"]
    values = [t["next_scale_vargpt"]["median_s"], t["raster_scan"]["median_s"]]
    ax.bar(names, values, color=["#4c72b0", "#c44e52"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f} s", ha="center", va="bottom")
    ax.set(ylabel="seconds per image (batch 1)",
           title=f"same {section['generation_parameters'] / 1e6:.0f} M parameters: {section['speedup']:.1f}x")
    return _save(fig, out / "raster_vs_next_scale.png")


def released(section: dict, out: Path) -> Path:
    t = section["timings"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    values = [t["vargpt"]["median_s"], t["released_style"]["median_s"]]
    ax.bar(["VARGPT generate_images", "released-style loop"], values, color=["#4c72b0", "#937860"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f} s", ha="center", va="bottom")
    ax.set(ylabel="seconds per image (batch 1)", title=f"same model, same run: {section['speedup']:.2f}x")
    return _save(fig, out / "released_vs_ours.png")


def understanding(section: dict, out: Path) -> Path:
    t = section["timings"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["VARGPT", "transformers LLaVA"]
    med = [t["vargpt"]["median_s"], t["llava"]["median_s"]]
    err = [[m - t[k]["min_s"] for m, k in zip(med, ("vargpt", "llava"))],
           [t[k]["max_s"] - m for m, k in zip(med, ("vargpt", "llava"))]]
    ax.bar(names, med, yerr=err, capsize=6, color=["#4c72b0", "#8172b2"])
    ax.axhline(0.40, color="k", ls="--", lw=1, label="released VARGPT (0.40 s)")
    ax.set(ylabel="seconds (median, min-max)",
           title=f"image + prompt, {section['new_tokens']} tokens: {section['ratio_llava_over_vargpt']:.3f}x")
    ax.legend(fontsize=8)
    return _save(fig, out / "understanding_vs_llava.png")


def roofline(section: dict, out: Path) -> Path:
    peak = section["matmul_peak"]["gflops_per_s"]
    parts = {k: v for k, v in section["t2i_batch1"]["components"].items() if v["gflops_per_s"]}
    names = list(parts) + ["whole generation", "understanding"]
    values = [parts[k]["gflops_per_s"] for k in parts] + [section["t2i_batch1"]["gflops_per_s"],
                                                        section["understanding"]["gflops_per_s"]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(names, values, color=[COLORS.get(k, "#4c72b0") for k in parts] + ["#333333", "#8172b2"])
    ax.axhline(peak, color="r", ls="--", lw=1, label=f"measured matmul peak {peak:.0f} GFLOP/s")
    for i, v in enumerate(values):
        ax.text(i, v, f"{100 * v / peak:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="achieved GFLOP/s", title=f"one generation: {section['t2i_batch1']['gflop']:.0f} GFLOP")
    ax.set_ylim(0, peak * 1.15)
    ax.legend(fontsize=8, loc="upper right")
    plt.setp(ax.get_xticklabels(), rotation=15)
    return _save(fig, out / "roofline.png")


def memory(section: dict, out: Path) -> Path:
    items = {k: v for k, v in section["workloads"].items() if v.get("peak_rss_mb")}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(items) + 1.5))
    names = list(items)
    before = [items[k]["rss_before_mb"] for k in names]
    extra = [items[k]["peak_rss_mb"] - items[k]["rss_before_mb"] for k in names]
    ax.barh(names, before, color="#8c8c8c", label="resident before (weights, libraries)")
    ax.barh(names, extra, left=before, color="#c44e52", label="added by the workload")
    ax.invert_yaxis()
    ax.set(xlabel="peak RSS (MB)", title="peak memory, fresh process per workload")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out / "memory.png")


def scales(section: dict, out: Path) -> Path:
    points = section["points"]
    x = [p["codes"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(points)
    for key, color in (("llm", COLORS["llm"]), ("var_blocks_and_projectors", COLORS["var_blocks"]),
                       ("vqvae_decode", COLORS["vqvae_decode"])):
        values = [p["split_s"][key] for p in points]
        ax.fill_between(x, bottom, [b + v for b, v in zip(bottom, values)], color=color, alpha=0.6, label=key)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.plot(x, [p["median_s"] for p in points], "ko-", label="total (median)")
    for p in points:
        ax.annotate(f"{p['image_size']}px", (p["codes"], p["median_s"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set(xlabel="codes per image (scales 1..k)", ylabel="seconds (batch 1)", title="latency vs number of scales")
    ax.legend(fontsize=8)
    return _save(fig, out / "scales.png")


def training(section: dict, out: Path) -> Path:
    stages = section["stages"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    names = [f"stage {s}\n{v['data']}" for s, v in stages.items()]
    ax.bar(names, [v["samples_per_s"] for v in stages.values()], color="#55a868")
    first = next(iter(stages.values()))
    ax.set(ylabel="samples / s", title=f"training, batch {first['batch_size']}, seq {first['sequence_length']}")
    return _save(fig, out / "training.png")


PLOTTERS = {"t2i": [t2i_throughput, t2i_breakdown], "released": [released], "raster": [raster], "understanding": [understanding],
            "flops": [roofline], "memory": [memory], "scales": [scales], "training": [training]}


def write_all(results: dict, out: Path) -> list[Path]:
    """Every plot whose section is in `results`; returns the paths written."""
    written = []
    for name, section in results["sections"].items():
        for plotter in PLOTTERS.get(name, []):
            written.append(plotter(section, out))
    return written
