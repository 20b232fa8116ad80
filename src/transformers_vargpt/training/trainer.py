"""`VargptSFTConfig` and `VargptSFTTrainer`: TRL's SFT trainer for the three VARGPT training stages.

The trainer keeps TRL's loop and only changes what VARGPT needs: its own data preparation (the collator renders and
tokenises raw conversations on the fly, so TRL's dataset preparation is skipped), the stage's frozen/trainable split,
and a loss that is the sum of the text cross-entropy and the image-code cross-entropy, each normalised over the whole
accumulated (and, with `average_tokens_across_devices`, global) batch, with `text_loss` and `image_loss` logged apart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer

from ..modeling_vargpt import VargptForConditionalGeneration
from .collator import TRUNCATION_MODES, VICUNA_SYSTEM_MESSAGE, VargptDataCollator
from .data import load_vargpt_dataset, to_vargpt_dataset
from .stages import freeze_for_stage, lora_config_for_stage

logger = logging.get_logger(__name__)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _default_mixed_precision() -> tuple[bool, bool]:
    """(bf16, fp16) for this machine: bf16 where the GPU has it, fp16 on older GPUs, full precision on CPU."""
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return bf16, not bf16
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True, False
    return False, False


@dataclass
class VargptSFTConfig(SFTConfig):
    r"""
    Configuration of [`VargptSFTTrainer`]: every [`~trl.SFTConfig`] / [`~transformers.TrainingArguments`] option plus
    the VARGPT ones below. Defaults follow the released recipe (lr 5e-5, cosine, warmup 10 %, cutoff 2048 tokens).

    Parameters:
        stage (`int`, *optional*):
            Training stage, 1, 2 or 3 (see `transformers_vargpt.training.stages`): which modules learn. `None` leaves
            `requires_grad` as the model has it.
        image_root (`str`, *optional*):
            Directory that relative image paths of the dataset are resolved against.
        truncation (`str`, defaults to `"truncate"`):
            What to do with examples longer than `max_length`: `"truncate"` (never inside an image's token block) or
            `"skip"`.
        system_message (`str`, *optional*):
            System line of the prompt; defaults to Vicuna's, which VARGPT was trained with.
        lora (`bool`, defaults to `False`):
            Train LoRA adapters (plus the stage's small `modules_to_save`) instead of the stage's full modules.
        lora_r (`int`, defaults to 16), lora_alpha (`int`, defaults to 32), lora_dropout (`float`, defaults to 0.05):
            LoRA rank, scaling numerator and dropout.
        lora_target_modules (`list[str]`, *optional*):
            Modules that get adapters: module-name suffixes (`attn.qkv`), or one regular expression over full
            module names (recognised by its special characters), or `"all-linear"`. Defaults per stage: stage 1 the
            gen projectors' `fc1`/`fc2`, stage 2 the LLM's q/k/v/o/gate/up/down projections, stage 3 the VAR blocks'
            `attn.qkv`, `attn.out_proj`, `mlp.fc1`, `mlp.fc2` and `adaln`.
        lora_modules_to_save (`list[str]`, *optional*):
            Modules trained in full next to the adapters and saved with them; defaults to
            `model.scale_decoder.class_embed` in stages 1 and 3 and nothing in stage 2. `none` for nothing.
    """

    # ---- VARGPT ----
    stage: int | None = field(
        default=None,
        metadata={"help": "Training stage (1, 2 or 3): which modules learn. Unset: keep requires_grad as it is.",
                  "choices": [1, 2, 3]},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Directory that relative image paths of the dataset are resolved against."}
    )
    truncation: str = field(
        default="truncate",
        metadata={"help": "Examples longer than max_length: 'truncate' (never inside an image block) or 'skip'.",
                  "choices": list(TRUNCATION_MODES)},
    )
    system_message: str | None = field(
        default=None, metadata={"help": "System line of the prompt (default: Vicuna's, as VARGPT was trained)."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the stage's full modules."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling numerator)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get adapters: name suffixes, or one regular expression over full module "
                  "names, or 'all-linear'. Default: the stage's preset."},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full next to the adapters ('none' for nothing). Default: the stage's "
                  "preset (class_embed in stages 1 and 3)."},
    )

    # ---- defaults that differ from SFTConfig ----
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where checkpoints and the trained model are written.", "aliases": ["--output"]},
    )
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Longest tokenised example (the released cutoff); longer ones are truncated or skipped."},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Initial learning rate (released recipe: 5e-5)."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning rate schedule (released recipe: cosine)."}
    )
    warmup_steps: float = field(
        default=0.1,
        metadata={"help": "Linear warmup: a step count, or a ratio of the training steps if < 1 (released: 0.1)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep the raw 'messages'/'images' columns: the collator needs them."},
    )

    def __post_init__(self):
        launched_on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        if launched_on_cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator()):
            # several processes on a machine without GPUs (torchrun / accelerate launch): DDP over gloo, which
            # TrainingArguments only sets up with use_cpu; without it each process would train alone
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16, fp16 = (False, False) if (self.use_cpu or self.fp16) else _default_mixed_precision()
            self.fp16 = self.fp16 or fp16
        if self.dataset_kwargs is None:
            self.dataset_kwargs = {"skip_prepare_dataset": True}
        if self.ddp_find_unused_parameters is None:
            # every trainable parameter is tied into each step's loss (see VargptSFTTrainer.compute_loss)
            self.ddp_find_unused_parameters = False
        if self.lora_modules_to_save is not None and [m.lower() for m in self.lora_modules_to_save] == ["none"]:
            self.lora_modules_to_save = []
        if self.stage is not None and int(self.stage) not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        super().__post_init__()

    def lora_config(self):
        """The `peft.LoraConfig` these settings describe (requires `stage` unless target modules are given)."""
        target_modules = self.lora_target_modules
        if target_modules is not None and len(target_modules) == 1 and (
            target_modules[0] == "all-linear" or re.search(r"[\\^$*+?()\[\]{}|]", target_modules[0])
        ):
            target_modules = target_modules[0]  # a regular expression over full module names, or "all-linear"
        if self.stage is None:
            if target_modules is None:
                raise ValueError("--lora needs --stage or --lora_target_modules")
            from peft import LoraConfig

            return LoraConfig(
                r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                target_modules=target_modules,
                modules_to_save=self.lora_modules_to_save or None,
            )
        return lora_config_for_stage(
            self.stage,
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=target_modules,
            modules_to_save=self.lora_modules_to_save,
        )


def align_processor_with_config(processor, config) -> None:
    """Make the processor's image-generation settings match the model's (a checkpoint's processor files may lack
    them, like the released `processor_config.json`, which leaves `patch_nums` at the released default)."""
    patch_nums, size = list(config.patch_nums), int(config.image_gen_size)
    if list(processor.patch_nums) != patch_nums or processor.image_gen_size != size:
        logger.warning(
            f"processor draws with patch_nums={processor.patch_nums}, image_gen_size={processor.image_gen_size}; "
            f"using the model's patch_nums={patch_nums}, image_gen_size={size}"
        )
        processor.patch_nums, processor.image_gen_size = patch_nums, size


def load_vargpt_model(model_name_or_path: str, model_init_kwargs: dict[str, Any] | None = None):
    """`VargptForConditionalGeneration.from_pretrained` with TRL's defaults: float32 master weights, no device map."""
    kwargs = dict(model_init_kwargs or {})
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", "float32"))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    return VargptForConditionalGeneration.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)


class VargptSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] for VARGPT.

    Args:
        model (`str` or [`VargptForConditionalGeneration`]): the model, or a path to load it from.
        args ([`VargptSFTConfig`]): training settings (`stage`, `image_root`, LoRA, ...).
        train_dataset / eval_dataset: a `datasets.Dataset` in either released format (normalised here), or JSON /
            JSONL file path(s).
        processing_class ([`VargptProcessor`], *optional*): loaded from the model's path when not given.
        data_collator (*optional*): defaults to [`VargptDataCollator`] with `args.max_length` and `args.truncation`.
        peft_config (`peft.PeftConfig`, *optional*): defaults to `args.lora_config()` when `args.lora` is set.

    Logged next to `loss`: `text_loss` and `image_loss` (per-token means over the logging interval),
    `mean_token_accuracy` (text) and `num_tokens`.
    """

    _tag_names = ["trl", "sft", "vargpt"]
    _name = "VARGPT SFT"

    def __init__(
        self,
        model,
        args: VargptSFTConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            args = VargptSFTConfig(output_dir="vargpt-sft")
        if isinstance(model, str):
            model_path = model
            model = load_vargpt_model(model, args.model_init_kwargs)
            args.model_init_kwargs = None  # used here; TRL warns about it for an instantiated model
        else:
            model_path = getattr(model, "name_or_path", None)
        if processing_class is None:
            from transformers import AutoProcessor

            if not model_path:
                raise ValueError("pass processing_class (the VargptProcessor): the model has no path to load it from")
            processing_class = AutoProcessor.from_pretrained(model_path)
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        align_processor_with_config(processing_class, config)

        if train_dataset is not None:
            train_dataset = self._as_dataset(train_dataset, args)
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: self._as_dataset(value, args) for key, value in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._as_dataset(eval_dataset, args)
        if data_collator is None:
            data_collator = VargptDataCollator(
                processing_class,
                max_length=args.max_length,
                truncation=args.truncation,
                system_message=args.system_message or VICUNA_SYSTEM_MESSAGE,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        if peft_config is None and args.lora:
            peft_config = args.lora_config()
        if args.stage is not None and peft_config is None and not _is_peft(model):
            freeze_for_stage(model, args.stage)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        if args.stage is not None and _is_peft(self.model):
            freeze_for_stage(self.model, args.stage)
        self.num_trainable_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self._remove_fused_lm_head()
        self._loss_normalizers: torch.Tensor | None = None
        self._anchor_parameters: list[torch.nn.Parameter] | None = None
        self._scaled_for_ga = False

    @staticmethod
    def _as_dataset(data, args):
        import datasets

        if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
            return to_vargpt_dataset(data, args.image_root)
        return load_vargpt_dataset(data, args.image_root)

    def _remove_fused_lm_head(self) -> None:
        """TRL patches `model.forward` with a fused LM head that returns text log-probabilities only; VARGPT's loss
        needs its own forward (image logits), so the patch is undone and the class's forward is used."""
        base = self.model.get_base_model() if _is_peft(self.model) else self.model
        patched = base.__dict__.get("forward")
        if patched is not None and getattr(patched, "__wrapped__", None) is type(base).forward:
            del base.forward

    # ---- loss ---------------------------------------------------------------------------------------------------
    @property
    def loss_is_scaled_for_ga(self) -> bool:
        """Whether the last training loss was normalised over the accumulated batch (see `compute_loss`)."""
        return self._scaled_for_ga

    @staticmethod
    def _local_counts(inputs: dict[str, Any]) -> torch.Tensor:
        """[supervised text tokens, images to draw] of one micro-batch."""
        labels = inputs["labels"]
        num_images = 0
        if inputs.get("pixel_gen_values") is not None:
            num_images = inputs["pixel_gen_values"].shape[0]
        elif inputs.get("image_gen_tokens") is not None:
            num_images = inputs["image_gen_tokens"].shape[0]
        return torch.stack([(labels[:, 1:] != -100).sum(), torch.tensor(num_images, device=labels.device)]).float()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count the text targets and the images to draw of the whole accumulated batch (all processes when
        `average_tokens_across_devices`), to normalise both losses over it."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(2, device=device)
        for batch in batch_samples:
            counts += self._local_counts(batch).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        self._loss_normalizers = counts if batch_samples else None
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`text_loss + image_loss`. In training each is a per-token mean over the accumulated batch (summed over
        micro-batches and, like TRL's token loss, over processes); in evaluation, the micro-batch means."""
        mode = "train" if self.model.training else "eval"
        # The LM head only where a text target follows: not over the L pads of every image to draw.
        target_positions = supervised_positions(inputs["labels"])
        inputs = {**inputs, "use_cache": False, "logits_to_keep": target_positions}
        outputs = model(**inputs)
        local = self._local_counts(inputs)
        text_loss = outputs.text_loss if outputs.text_loss is not None else outputs.logits.sum() * 0.0
        image_loss = outputs.image_loss
        text_sum = text_loss * local[0]
        image_sum = image_loss * local[1] if image_loss is not None else None

        normalizers = self._loss_normalizers if mode == "train" else None
        self._scaled_for_ga = normalizers is not None
        if normalizers is not None:
            scale = 1
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                scale = self.accelerator.num_processes  # DDP averages gradients over processes
            loss = text_sum / normalizers[0].clamp(min=1) * scale
            if image_sum is not None:
                loss = loss + image_sum / normalizers[1].clamp(min=1) * scale
        else:
            loss = text_loss + image_loss if image_loss is not None else text_loss
        if mode == "train":
            loss = self._anchor(model, loss)

        with torch.no_grad():
            labels = inputs["labels"][:, target_positions + 1]
            mask = labels != -100
            correct = ((outputs.logits.argmax(-1) == labels) & mask).sum()
            stats = torch.stack(
                [
                    text_sum.detach().float(),
                    local[0],
                    image_sum.detach().float() if image_sum is not None else local.new_zeros(()),
                    local[1],
                    correct.float(),
                    inputs["attention_mask"].sum().float(),
                ]
            )
            stats = self.accelerator.gather(stats.unsqueeze(0)).sum(0).tolist()
        text_total, text_count, image_total, image_count, correct_total, tokens = stats
        if text_count > 0:
            self._metrics[mode]["text_loss"].append(text_total / text_count)
            self._metrics[mode]["mean_token_accuracy"].append(correct_total / text_count)
        if image_count > 0:
            self._metrics[mode]["image_loss"].append(image_total / image_count)
        if mode == "train":
            self._total_train_tokens += int(tokens)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def _anchor(self, model, loss: torch.Tensor) -> torch.Tensor:
        """Add 0 × one element of every trainable parameter, so each gets a (zero) gradient on every step.

        A micro-batch can leave the stage's modules out of the graph (a text-only batch in stages 1 and 3): without
        this, backward fails on a loss with no graph, and DDP (run with `find_unused_parameters=False`) would wait
        for gradients that never come. Skipped under DeepSpeed / FSDP, which shard parameters, and when DDP looks
        for unused parameters itself.
        """
        distributed = self.accelerator.distributed_type
        if distributed in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return loss
        if self.args.ddp_find_unused_parameters and self.accelerator.num_processes > 1:
            return loss
        if self._anchor_parameters is None:
            self._anchor_parameters = [p for p in model.parameters() if p.requires_grad]
        if not self._anchor_parameters:
            return loss
        anchor = sum(p.reshape(-1)[:1].float().sum() for p in self._anchor_parameters)
        return loss + anchor * 0.0


def supervised_positions(labels: torch.Tensor) -> torch.LongTensor:
    """Positions t (1-D) whose next label `labels[:, t + 1]` is a text target in some row of the batch."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().flatten()


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


__all__ = ["VargptSFTConfig", "VargptSFTTrainer", "align_processor_with_config", "load_vargpt_model"]
