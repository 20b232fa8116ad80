"""Text-to-image: latency at batch 1, throughput at several batch sizes, and where the time goes.

Greedy codes, no guidance, one short prompt per image. The breakdown instruments the model from outside (nothing
in `src/` changes): forward hooks time `model.model.language_model`, `model.model.scale_decoder` and the two
generation projectors; a wrapper on the instance's `model.model.vqvae.decode_fhat` times the VQVAE decode; the
`scale_callback` of `generate_images` marks the end of every scale. Time between those is "other" (code lookup,
greedy selection, f̂ update, next-scale inputs).
"""

from __future__ import annotations

import resource
import statistics
import time
from contextlib import contextmanager

import torch

from .medium import t2i_inputs
from .timing import measure_interleaved, paired_ratio

GREEDY = {"do_sample": False, "guidance_scale": 1.0}
COMPONENTS = {
    "llm": "language_model",
    "var_blocks": "scale_decoder",
    "gen_input_projector": "gen_input_projector",
    "gen_output_projector": "gen_output_projector",
}


def generate(model, inputs, **kwargs):
    return model.generate_images(**inputs, **GREEDY, **kwargs)


def latency_and_throughput(model, processor, batch_sizes=(1, 4, 8), repeats: int = 5) -> dict:
    """Median seconds per `generate_images` call at each batch size; images/s = batch / median; the throughput
    gain over batch 1 is the median of the per-round ratios (`paired_ratio`).

    The batch sizes are timed in interleaved rounds (1, 4, 8, 8, 4, 1, ...) so that a drift of the machine's speed
    hits them alike and the throughput ratios stay meaningful.
    """
    inputs = {batch: t2i_inputs(processor, batch) for batch in batch_sizes}
    timed = measure_interleaved(
        {str(batch): (lambda batch=batch: generate(model, inputs[batch])) for batch in batch_sizes}, repeats=repeats
    )
    results = {}
    for batch in batch_sizes:
        stats = timed[str(batch)]
        stats["images_per_s"] = batch / stats["median_s"]
        stats["seconds_per_image"] = stats["median_s"] / batch
        results[str(batch)] = stats
    first = batch_sizes[0]
    for batch in batch_sizes:
        # images/s ratio per round: (batch / t_batch) / (first / t_first)
        stats = results[str(batch)]
        stats["throughput_vs_batch1"] = paired_ratio(timed, str(first), str(batch), scale=batch / first)
        stats["throughput_vs_batch1_of_medians"] = stats["images_per_s"] / results[str(first)]["images_per_s"]
    return {"prompt_tokens": int(inputs[batch_sizes[0]]["input_ids"].shape[1]), "by_batch": results}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class ComponentTimer:
    """Records (component, start, end) for every call of the instrumented modules during one generation."""

    def __init__(self, model):
        self.model = model
        self.events: list[tuple[str, float, float]] = []
        self.scale_ends: list[float] = []
        self.page_faults: dict[str, int] = {}  # minor page faults (fresh memory mapped in) per component
        self._open: dict[str, float] = {}
        self._faults_open: dict[str, int] = {}

    @contextmanager
    def installed(self):
        body = self.model.model
        handles = []
        for name, attribute in COMPONENTS.items():
            module = getattr(body, attribute)
            handles.append(module.register_forward_pre_hook(self._pre(name)))
            handles.append(module.register_forward_hook(self._post(name)))
        vqvae = body.vqvae
        original = vqvae.decode_fhat

        def timed_decode(*args, **kwargs):
            faults, start = _minor_faults(), time.perf_counter()
            out = original(*args, **kwargs)
            self.events.append(("vqvae_decode", start, time.perf_counter()))
            self._count_faults("vqvae_decode", faults)
            return out

        vqvae.decode_fhat = timed_decode  # instance attribute: the class is untouched
        try:
            yield self
        finally:
            del vqvae.decode_fhat
            for handle in handles:
                handle.remove()

    def _count_faults(self, name: str, before: int) -> None:
        self.page_faults[name] = self.page_faults.get(name, 0) + _minor_faults() - before

    def _pre(self, name):
        def hook(module, args):
            self._faults_open[name] = _minor_faults()
            self._open[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.events.append((name, self._open.pop(name), time.perf_counter()))
            self._count_faults(name, self._faults_open.pop(name))
        return hook

    def callback(self, scale_index: int, state: dict) -> None:
        self.scale_ends.append(time.perf_counter())

    def split(self, start: float, end: float, scale_sizes) -> dict:
        """Seconds per phase (prefill, each scale, decode) and per component inside each phase."""
        llm_calls = [e for e in self.events if e[0] == "llm"]
        prefill_end = llm_calls[0][2]
        bounds = [(start, prefill_end, "prefill")]
        previous = prefill_end
        for si, scale_end in enumerate(self.scale_ends):
            bounds.append((previous, scale_end, f"scale_{si}"))
            previous = scale_end
        bounds.append((previous, end, "decode"))
        phases = {}
        for low, high, label in bounds:
            parts = {name: 0.0 for name in [*COMPONENTS, "vqvae_decode"]}
            for name, s, e in self.events:
                if low <= s < high:
                    parts[name] += e - s
            parts["other"] = (high - low) - sum(parts.values())
            phases[label] = {"total_s": high - low, **parts}
        for si, side in enumerate(scale_sizes):
            phases[f"scale_{si}"]["side"] = side
            phases[f"scale_{si}"]["tokens"] = side * side
        return phases


def breakdown(model, processor, repeats: int = 3) -> dict:
    """Median over `repeats` instrumented batch-1 generations of the per-phase, per-component split."""
    inputs = t2i_inputs(processor, 1)
    scale_sizes = list(model.config.patch_nums)
    generate(model, inputs)  # warm-up
    runs, faults = [], []
    for _ in range(repeats):
        timer = ComponentTimer(model)
        with timer.installed():
            start, faults_before = time.perf_counter(), _minor_faults()
            generate(model, inputs, scale_callback=timer.callback)
            end, faults_after = time.perf_counter(), _minor_faults()
        runs.append(timer.split(start, end, scale_sizes))
        faults.append({**timer.page_faults, "whole_generation": faults_after - faults_before})
    phases = {}
    for label in runs[0]:
        phases[label] = {
            key: runs[0][label][key] if key in ("side", "tokens") else statistics.median(run[label][key] for run in runs)
            for key in runs[0][label]
        }
    totals = {name: sum(phase[name] for phase in phases.values()) for name in [*COMPONENTS, "vqvae_decode", "other"]}
    totals["total_s"] = sum(phase["total_s"] for phase in phases.values())
    totals["var_blocks_plus_projectors"] = (
        totals["var_blocks"] + totals["gen_input_projector"] + totals["gen_output_projector"]
    )
    # minor page faults: memory the allocator maps in afresh (and zeroes) during the call instead of reusing it
    minor_faults = {name: int(statistics.median(run.get(name, 0) for run in faults)) for name in faults[0]}
    return {"repeats": repeats, "phases": phases, "components_total_s": totals, "minor_page_faults": minor_faults}


def run(model, processor, quick: bool = False) -> dict:
    """Latency, throughput and the breakdown on the medium model."""
    torch.manual_seed(0)
    return {
        "settings": {"decoding": "greedy", "guidance_scale": 1.0, "num_images_per_prompt": 1},
        **latency_and_throughput(model, processor, repeats=3 if quick else 7),
        "breakdown": breakdown(model, processor, repeats=2 if quick else 5),
    }
