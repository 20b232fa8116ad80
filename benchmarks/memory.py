"""Peak resident memory of each workload, each in a fresh Python process.

The child (`python -m benchmarks.memory WORKLOAD OUT.json`) builds only what the workload needs, notes its resident
set (VmRSS), resets the kernel's high-water mark (`/proc/self/clear_refs` = 5), runs the workload once and reads
the high-water mark again (VmHWM): `peak_rss_mb` is the process's peak during the workload (weights included),
`workload_mb` the part above the resident set before it. `ru_maxrss_mb` (`resource.getrusage`) is recorded too (on
Linux it follows the same high-water mark, so it agrees with `peak_rss_mb` once the mark was reset).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

QUICK_WORKLOADS = ("t2i_batch1", "understanding_vargpt", "understanding_llava")
WORKLOADS = (
    "t2i_batch1", "t2i_batch8", "raster_scan", "understanding_vargpt", "understanding_llava",
    "training_stage1", "training_stage2", "training_stage3",
)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _prepare(workload: str):
    """Build what `workload` needs; return the function to measure."""
    import torch

    from .medium import build_medium, medium_config, setup_torch, t2i_inputs, understanding_inputs, build_processor

    setup_torch()
    if workload == "understanding_llava":  # LLaVA alone, same sizes as VARGPT's understanding half
        from transformers import LlavaForConditionalGeneration

        from .understanding import answer, llava_config

        config = medium_config()
        torch.manual_seed(0)
        llava = LlavaForConditionalGeneration(llava_config(config)).eval()
        inputs = understanding_inputs(build_processor(config))
        return lambda: answer(llava, inputs)
    model, processor = build_medium()
    if workload.startswith("t2i_batch"):
        from .t2i import generate

        inputs = t2i_inputs(processor, int(workload.removeprefix("t2i_batch")))
        return lambda: generate(model, inputs)
    if workload == "raster_scan":
        from .raster import raster_generate

        input_ids = t2i_inputs(processor, 1)["input_ids"]
        return lambda: raster_generate(model, input_ids)
    if workload == "understanding_vargpt":
        from .understanding import answer

        inputs = understanding_inputs(processor)
        return lambda: answer(model, inputs)
    if workload.startswith("training_stage"):
        from .training import prepare_stage, stage_batch, train_step

        stage = int(workload.removeprefix("training_stage"))
        batch = stage_batch(processor, stage, 4)
        trained, optimizer, _ = prepare_stage(model, stage)
        del model
        return lambda: [train_step(trained, optimizer, batch) for _ in range(2)]  # step 2 holds the Adam state
    raise ValueError(f"unknown workload {workload!r}; choose from {WORKLOADS}")


def child_main(workload: str, out_path: str) -> None:
    """Runs in the fresh process: measure one workload, write JSON to `out_path`."""
    import torch

    fn = _prepare(workload)
    gc.collect()
    before = _status_mb("VmRSS")
    reset = _reset_high_water_mark()
    with torch.no_grad() if not workload.startswith("training") else torch.enable_grad():
        fn()
    result = {
        "rss_before_mb": before,
        "peak_rss_mb": _status_mb("VmHWM") if reset else None,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "high_water_mark_reset": reset,
    }
    if result["peak_rss_mb"] is not None and before is not None:
        result["workload_mb"] = result["peak_rss_mb"] - before
    Path(out_path).write_text(json.dumps(result))


def measure_workload(workload: str, out_dir: Path) -> dict:
    """Run one workload in a fresh interpreter and return what it measured."""
    out_path = out_dir / f"memory_{workload}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable, "-m", "benchmarks.memory", workload, str(out_path)]
    completed = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                               text=True)
    if completed.returncode != 0:
        logger.error("memory child %s failed:\n%s", workload, completed.stderr[-3000:])
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    result = json.loads(out_path.read_text())
    out_path.unlink()
    return result


def run(model=None, processor=None, quick: bool = False, scratch_dir: Path | None = None) -> dict:
    """Peak RSS per workload (the model passed in is not used: every workload runs in its own process)."""
    import tempfile

    workloads = QUICK_WORKLOADS if quick else WORKLOADS
    with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
        results = {}
        for workload in workloads:
            logger.info("memory: %s", workload)
            results[workload] = measure_workload(workload, Path(tmp))
    return {"method": "VmHWM after clear_refs=5 in a fresh process per workload (benchmarks/memory.py)",
            "training_batch_size": 4, "workloads": results}


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
