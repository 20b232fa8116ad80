"""The three VARGPT training stages: which parameters learn, and the LoRA presets that go with them.

| stage | trains (module paths of `VargptForConditionalGeneration`) |
|---|---|
| 1 pre-training | `model.gen_input_projector`, `model.gen_output_projector`, `model.scale_decoder.class_embed` |
| 2 mixed instruction SFT | `model.language_model`, `lm_head` |
| 3 generation SFT | `model.scale_decoder` (all of it), `model.gen_input_projector`, `model.gen_output_projector` |

Everything else (vision tower, multi-modal projector, VQVAE, ...) is frozen; the VQVAE always is. This is the
effective result of the released recipe, which froze by substring match on its own parameter names. The gen
projectors' `norm` (the released `ln_q`, unused by the forward) is trained in stages 1 and 3 as in the released
recipe, so trainable counts match it (it receives no gradient).
"""

from __future__ import annotations

import re

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

STAGE_TRAINABLE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("model.gen_input_projector", "model.gen_output_projector", "model.scale_decoder.class_embed"),
    2: ("model.language_model", "lm_head"),
    3: ("model.scale_decoder", "model.gen_input_projector", "model.gen_output_projector"),
}
ALWAYS_FROZEN_MODULES: tuple[str, ...] = ("model.vqvae",)

# LoRA presets: regular expressions over module names (PEFT full-matches a string `target_modules`).
STAGE_LORA_TARGET_MODULES: dict[int, str] = {
    1: r"model\.gen_(input|output)_projector\.(fc1|fc2)",
    2: r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
    3: r"model\.scale_decoder\.blocks\.\d+\.(attn\.qkv|attn\.out_proj|mlp\.fc1|mlp\.fc2|adaln)",
}
# Small modules of the stage trained in full next to the adapters (PEFT `modules_to_save`).
STAGE_LORA_MODULES_TO_SAVE: dict[int, tuple[str, ...]] = {
    1: ("model.scale_decoder.class_embed",),
    2: (),
    3: ("model.scale_decoder.class_embed",),
}

# Prefixes that wrappers put in front of our parameter names: PEFT (`base_model.model.`) and DDP (`module.`).
_WRAPPER_PREFIX = re.compile(r"^(module\.|base_model\.model\.|_orig_mod\.)+")


def _check_stage(stage: int) -> int:
    if isinstance(stage, bool) or int(stage) not in STAGE_TRAINABLE_MODULES:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    return int(stage)


def _under(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def is_stage_parameter(name: str, stage: int) -> bool:
    """Whether a parameter (our name, possibly wrapped by PEFT / DDP) belongs to a module the stage trains."""
    name = _WRAPPER_PREFIX.sub("", name)
    stage = _check_stage(stage)
    return _under(name, STAGE_TRAINABLE_MODULES[stage]) and not _under(name, ALWAYS_FROZEN_MODULES)


def _adapter_markers(model: nn.Module) -> tuple[str, ...] | None:
    """Name fragments of PEFT's own trainable parameters (adapters, `modules_to_save` copies); None if not PEFT."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is in the `train` extra
        return None
    if not isinstance(model, PeftModel):
        return None
    prefix = getattr(model.base_model, "prefix", "lora_")
    return (prefix, ".modules_to_save.", "trainable_tokens_")


def freeze_for_stage(model: nn.Module, stage: int) -> int:
    """Set `requires_grad` for a VARGPT training stage and return the number of trainable parameters.

    On a plain model, exactly the stage's modules (see the table above) are trainable. On a PEFT model only PEFT's
    own parameters (adapters, `modules_to_save` copies) are, and they must all lie inside the stage's modules: an
    adapter outside them would stay frozen (saved as initialised, `lora_B` all zero), so that is an error naming
    the modules, raised before anything trains.
    """
    stage = _check_stage(stage)
    markers = _adapter_markers(model)
    trainable = total = 0
    outside: dict[str, None] = {}  # adapted modules outside the stage, in model order
    for name, parameter in model.named_parameters():
        wanted = is_stage_parameter(name, stage)
        if markers is not None:
            found = [name.find(marker) for marker in markers if marker in name]
            if found and not wanted:
                outside[_WRAPPER_PREFIX.sub("", name[: min(found)].rstrip("."))] = None
            wanted = wanted and bool(found)
        parameter.requires_grad_(wanted)
        numel = getattr(parameter, "ds_numel", parameter.numel())  # DeepSpeed ZeRO-3 partitions hold 0 locally
        total += numel
        trainable += numel if wanted else 0
    if outside:
        names = list(outside)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise ValueError(
            f"{len(names)} module(s) with PEFT adapters (or modules_to_save) lie outside what stage {stage} trains "
            f"({', '.join(STAGE_TRAINABLE_MODULES[stage])}), so they would be saved untrained: {shown}. Target only "
            f"the stage's modules (the default --lora_target_modules does: {STAGE_LORA_TARGET_MODULES[stage]!r}) or "
            "choose the stage that trains them"
        )
    if trainable == 0:
        raise ValueError(
            f"stage {stage} leaves no trainable parameter"
            + (" (the PEFT adapters target no module of this stage)" if markers is not None else "")
        )
    logger.info(f"stage {stage}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%)")
    return trainable


def lora_config_for_stage(
    stage: int,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
    modules_to_save: list[str] | None = None,
    **kwargs,
):
    """A `peft.LoraConfig` for a stage: the stage's preset `target_modules` and `modules_to_save` unless given.

    `target_modules` as a string is a regular expression over full module names (PEFT's rule); as a list, module
    name suffixes. Extra keyword arguments go to `LoraConfig`.
    """
    from peft import LoraConfig

    stage = _check_stage(stage)
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=STAGE_LORA_TARGET_MODULES[stage] if target_modules is None else target_modules,
        modules_to_save=list(STAGE_LORA_MODULES_TO_SAVE[stage] if modules_to_save is None else modules_to_save) or None,
        **kwargs,
    )


__all__ = [
    "STAGE_TRAINABLE_MODULES",
    "STAGE_LORA_TARGET_MODULES",
    "STAGE_LORA_MODULES_TO_SAVE",
    "freeze_for_stage",
    "is_stage_parameter",
    "lora_config_for_stage",
]
