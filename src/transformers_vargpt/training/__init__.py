"""Training VARGPT with TRL: data formats, collator, stage presets and the SFT trainer.

Needs the `train` extra (`pip install transformers-vargpt[train]`: peft, trl, accelerate, datasets, pyyaml).
Command line: `vargpt-train` (see `transformers_vargpt.training.cli.train_main`), or
`python -m transformers_vargpt.training`.
"""

from .collator import VICUNA_SYSTEM_MESSAGE, VargptDataCollator
from .data import load_vargpt_dataset, normalize_example, to_vargpt_dataset
from .stages import (
    STAGE_LORA_MODULES_TO_SAVE,
    STAGE_LORA_TARGET_MODULES,
    STAGE_TRAINABLE_MODULES,
    freeze_for_stage,
    is_stage_parameter,
    lora_config_for_stage,
)
from .trainer import VargptSFTConfig, VargptSFTTrainer

__all__ = [
    "VargptDataCollator",
    "VICUNA_SYSTEM_MESSAGE",
    "load_vargpt_dataset",
    "normalize_example",
    "to_vargpt_dataset",
    "STAGE_TRAINABLE_MODULES",
    "STAGE_LORA_TARGET_MODULES",
    "STAGE_LORA_MODULES_TO_SAVE",
    "freeze_for_stage",
    "is_stage_parameter",
    "lora_config_for_stage",
    "VargptSFTConfig",
    "VargptSFTTrainer",
]
