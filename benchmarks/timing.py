"""Timing helpers (medians over repeats, interleaved comparisons) and the record of the machine and software."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def summarize(samples: list[float]) -> dict:
    """Median (the figure we report), min, max and all samples of a list of seconds."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": len(samples),
        "samples_s": [round(s, 6) for s in samples],
    }


def paired_ratio(timings: dict[str, dict], numerator: str, denominator: str, scale: float = 1.0) -> float:
    """Median over rounds of `scale` × numerator seconds / denominator seconds, each pair from one interleaved round.

    The two calls of a round run back to back, so a drift of the machine's speed (±25 % within minutes here) hits
    both; the ratio of two medians does not have that protection when the drift falls between rounds.
    """
    pairs = zip(timings[numerator]["samples_s"], timings[denominator]["samples_s"])
    return statistics.median(scale * a / b for a, b in pairs)


def paired_difference(timings: dict[str, dict], minuend: str, subtrahend: str) -> float:
    """Median over interleaved rounds of minuend seconds - subtrahend seconds (see `paired_ratio`)."""
    return statistics.median(a - b for a, b in zip(timings[minuend]["samples_s"], timings[subtrahend]["samples_s"]))


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call in seconds (garbage collected beforehand so it does not fire mid-run)."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """`warmup` untimed calls, then `repeats` timed calls; see `summarize`."""
    for _ in range(warmup):
        fn()
    return summarize([time_once(fn) for _ in range(repeats)])


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several callables in alternation (A B, B A, A B, ...) so that drifts of the machine hit all alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples = {name: [] for name in names}
    for index in range(repeats):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(time_once(fns[name]))
    return {name: summarize(values) for name, values in samples.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> dict:
    """HEAD commit of the repository and whether tracked files differ from it (src/ may be under edit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty_src": bool(git("status", "--porcelain", "--", "src"))}
    except OSError:
        return {"commit": "unknown", "dirty_src": None}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def write_result(path: Path, result: dict, indent: int = 1) -> None:
    """Write a benchmark's result as JSON to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=str) + "\n")


def environment() -> dict:
    """What a result depends on: code version, libraries, CPU, threads, and how busy the machine was."""
    import transformers

    return {
        **git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()).replace("torch.", ""),
        "load_average_1_5_15": load_average(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def machine_busy(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over `interval` seconds while this process sleeps (i.e. used by others)."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(interval)
        idle1, total1 = _cpu_times()
    except (OSError, IndexError, ValueError):
        return None
    total = total1 - total0
    return round(1 - (idle1 - idle0) / total, 3) if total > 0 else None


def wait_until_quiet(max_wait_s: float, threshold: float = 0.15) -> float | None:
    """Sleep (up to `max_wait_s`) until other processes use less than `threshold` of the CPUs; return the last
    busy fraction seen."""
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = machine_busy()
    return busy


class CpuMonitor:
    """Share of all CPUs that *other* processes used between `start()` and `stop()` (machine busy time from
    /proc/stat minus this process's and its waited-for children's CPU time). Contention makes timings slow."""

    def start(self) -> "CpuMonitor":
        self._machine = self._machine_busy_seconds()
        self._own = self._own_seconds()
        self._wall = time.monotonic()
        return self

    def stop(self) -> float | None:
        machine = self._machine_busy_seconds()
        if machine is None or self._machine is None:
            return None
        others = (machine - self._machine) - (self._own_seconds() - self._own)
        capacity = (time.monotonic() - self._wall) * (os.cpu_count() or 1)
        return round(max(0.0, others / capacity), 3) if capacity > 0 else None

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @staticmethod
    def _machine_busy_seconds() -> float | None:
        try:
            idle, total = _cpu_times()
        except (OSError, IndexError, ValueError):
            return None
        return (total - idle) / os.sysconf("SC_CLK_TCK")
