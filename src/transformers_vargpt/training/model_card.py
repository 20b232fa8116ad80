"""The model card of a training run's output: what was fine-tuned from what, and how to load (and merge) it.

A full fine-tune gets the package's model card (`hub.build_model_card`) with a training section; LoRA adapters get
a card that says which base model they go on and how to merge them (PEFT would write its blank template).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..hub import GENERATED_CARD_MARKER, MODEL_CARD_TAGS, build_model_card
from .stages import STAGE_TRAINABLE_MODULES

_STAGE_NAMES = {1: "pre-training", 2: "mixed instruction fine-tuning", 3: "image-generation fine-tuning"}

_INSTALL = (
    "With the `transformers_vargpt` package installed (it is not published on PyPI: install it from a checkout of its "
    "source repository, `pip install path/to/transformers-vargpt`):"
)

_ADAPTER_BODY = """{marker}

# VARGPT LoRA adapters

LoRA adapters for [VARGPT](https://arxiv.org/abs/2501.12327), trained with `transformers_vargpt`'s
`VargptSFTTrainer`.

{training}

## Use

{install}

```python
from peft import PeftModel
from transformers_vargpt import VargptForConditionalGeneration, VargptProcessor

base = VargptForConditionalGeneration.from_pretrained("{base}")
processor = VargptProcessor.from_pretrained("{adapters}")
model = PeftModel.from_pretrained(base, "{adapters}")  # the adapters on the base model
model = model.merge_and_unload()  # or merged into plain weights
model.save_pretrained("merged-vargpt")  # a full model, loadable without peft
processor.save_pretrained("merged-vargpt")
```
"""

_FULL_USE = """
## Fine-tuning

{training}

```python
from transformers_vargpt import VargptForConditionalGeneration, VargptProcessor

model = VargptForConditionalGeneration.from_pretrained("{path}")
processor = VargptProcessor.from_pretrained("{path}")
```
"""


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1


def _training_summary(base: str | None, stage: int | None, lora: dict | None, steps: int | None) -> str:
    lines = [f"- base model: `{base}`" if base else "- base model: not recorded (the model was built in memory)"]
    if stage is not None:
        modules = ", ".join(f"`{module}`" for module in STAGE_TRAINABLE_MODULES[stage])
        lines.append(f"- stage {stage} ({_STAGE_NAMES[stage]}): trains {modules}")
    else:
        lines.append("- stage: none (the parameters the model left trainable)")
    if lora is not None:
        lines.append(
            f"- LoRA: r={lora['r']}, alpha={lora['lora_alpha']}, target modules `{lora['target_modules']}`, "
            f"trained in full next to them: {', '.join(lora['modules_to_save']) or 'nothing'}"
        )
    else:
        lines.append("- full fine-tune of the stage's modules (no adapters)")
    if steps is not None:
        lines.append(f"- {steps} optimizer steps")
    return "\n".join(lines)


def build_training_card(
    config,
    base: str | None,
    stage: int | None,
    lora: dict | None = None,
    steps: int | None = None,
    output_dir: str | os.PathLike | None = None,
) -> ModelCard:
    """The card of a training output: `lora` (the adapters' `r`, `lora_alpha`, `target_modules`,
    `modules_to_save`) for adapters, `None` for a full model with `config` its `VargptConfig`."""
    training = _training_summary(base, stage, lora, steps)
    here = str(output_dir or "path/to/output")
    if lora is None:
        card = build_model_card(config, base)
        return ModelCard(str(card) + _FULL_USE.format(training=training, path=here))
    card_data = ModelCardData(
        library_name="peft",
        pipeline_tag="image-text-to-text",
        license="apache-2.0",
        base_model=[base] if _is_hub_id(base) else None,
        tags=[*MODEL_CARD_TAGS, "lora"] + ([f"vargpt-stage-{stage}"] if stage is not None else []),
    )
    body = _ADAPTER_BODY.format(
        marker=GENERATED_CARD_MARKER,
        training=training,
        install=_INSTALL,
        base=base or "path/to/base-model",
        adapters=here,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def write_training_card(output_dir: str | os.PathLike, *args, **kwargs) -> Path:
    """Write `build_training_card(...)` as `output_dir/README.md` (over PEFT's or the plain model's card)."""
    path = Path(output_dir) / "README.md"
    build_training_card(*args, output_dir=output_dir, **kwargs).save(path)
    return path


__all__ = ["build_training_card", "write_training_card"]
