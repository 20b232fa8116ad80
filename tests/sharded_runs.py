"""Several `vargpt-train` runs in one distributed launch (process start-up and `import deepspeed` dominate a tiny run).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharded_runs.py RUNS.json

RUNS.json holds a list of argument lists for `train_main`; they run one after the other in every process. Used by
tests/test_training_sharded.py.
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    import importlib

    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from transformers_vargpt.training.cli import train_main

    # On CPU, DeepSpeed's process group compiles a shared-memory all-reduce (C++, minutes on a busy machine) that
    # only its inference path (`inference_all_reduce`) uses; ZeRO training communicates through gloo.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    with open(path, encoding="utf-8") as runs:
        for argv in json.load(runs):
            train_main(argv)
            # the next run brings its own DeepSpeed config: forget this one's (process group and device stay)
            unset_hf_deepspeed_config()
            AcceleratorState._reset_state(reset_partial_state=False)


if __name__ == "__main__":
    main(sys.argv[1])
