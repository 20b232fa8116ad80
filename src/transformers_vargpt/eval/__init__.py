"""Evaluation of VARGPT with lmms-eval (`pip install "transformers-vargpt[eval]"`).

- `lmms-eval --model vargpt --model_args pretrained=DIR_OR_HUB_ID ...`: lmms-eval finds the model through this
  package's `lmms_eval.models` entry point (`model_manifest`); the class is `lmms_vargpt.VargptLmms`.
- `python -m transformers_vargpt.eval ...`: the same command line, with this package's tasks (`TASKS_DIR`, e.g. the
  offline `vargpt_shapes_qa`) added to lmms-eval's `--include_path`. lmms-eval 0.7 finds external tasks only there.

Importing this module does not import lmms-eval.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "vargpt"
MODEL_CLASS_PATH = "transformers_vargpt.eval.lmms_vargpt.VargptLmms"


def model_manifest():
    """The `lmms_eval.models` entry point: `--model vargpt` names `VargptLmms` (an lmms-eval "simple" model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)


__all__ = ["TASKS_DIR", "MODEL_NAME", "MODEL_CLASS_PATH", "model_manifest"]
