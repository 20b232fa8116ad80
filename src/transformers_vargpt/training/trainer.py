"""`VargptSFTConfig` and `VargptSFTTrainer`: supervised fine-tuning of the three VARGPT training stages.

The trainer is a [`transformers.Trainer`] with VARGPT's data path (the collator renders raw conversations with the
chat template and tokenises them with their images on the fly), the stage's frozen/trainable split, optional LoRA,
and metrics: `text_loss` and `image_loss` logged apart. The loss is the model's own (`text_loss + image_loss`), each
term normalised over the whole accumulated and, with `average_tokens_across_devices`, global batch through
`num_items_in_batch`, as transformers does for text models.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer, set_seed
from transformers.utils import logging
from trl import SFTConfig

from ..modeling_vargpt import VargptForConditionalGeneration
from ..tokens_vargpt import IMAGE_GEN_MARKER
from .checkpoints import checkpoint_problems, newest_intact_checkpoint
from .collator import TRUNCATION_MODES, VargptDataCollator
from .data import check_dataset_images, load_vargpt_dataset, to_vargpt_dataset
from .model_card import write_training_card
from .stages import STAGE_TRAINABLE_MODULES, freeze_for_stage, lora_config_for_stage

logger = logging.get_logger(__name__)

# SFTConfig options that drive TRL's own data preparation and text-only loss, with the values that leave them off.
_SFT_ONLY_OPTIONS = {
    "packing": (False,),
    "eval_packing": (None, False),
    "padding_free": (False,),
    "loss_type": ("nll",),
    "completion_only_loss": (None,),
    "truncation_mode": ("keep_start",),
    "activation_offloading": (False,),
    "eos_token": (None,),
    "pad_token": (None,),
    "router_aux_loss_coef": (None,),
}


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
    Configuration of [`VargptSFTTrainer`]: the [`~transformers.TrainingArguments`] and [`~trl.SFTConfig`] options plus
    the VARGPT ones below. Defaults follow the released recipe (lr 5e-5, cosine, warmup 10 %, cutoff 2048 tokens).

    Of the SFT options, `max_length`, `pad_to_multiple_of`, `model_init_kwargs` and `chat_template_path` (a Jinja
    file) apply; labels are always the assistant answers. The others describe TRL's own data preparation and text-only
    loss (packing, padding-free batches, DFT loss, ...), which VARGPT does not use: setting them is an error.

    Parameters:
        stage (`int`, *optional*):
            Training stage, 1, 2 or 3 (see `transformers_vargpt.training.stages`): which modules learn. `None` leaves
            `requires_grad` as the model has it.
        image_root (`str`, *optional*):
            Directory that relative image paths of the dataset are resolved against. Paths that leave it (`../`,
            absolute paths elsewhere) are refused unless `allow_images_outside_root`.
        allow_images_outside_root (`bool`, defaults to `False`):
            Accept image paths outside `image_root`.
        check_images (`bool`, defaults to `True`):
            Open and decode every image of a (map-style) dataset before training, so that a missing or unreadable
            one is reported with its example's file and line instead of failing at step N.
        skip_bad_images (`bool`, defaults to `False`):
            Drop the examples whose images cannot be read (a warning says how many) instead of stopping.
        truncation (`str`, defaults to `"truncate"`):
            What to do with examples longer than `max_length`: `"truncate"` (never inside an image's token block) or
            `"skip"`.
        system_message (`str`, *optional*):
            System turn put before conversations that have none. Default: none, as at inference (the released recipe
            used `transformers_vargpt.training.VICUNA_SYSTEM_MESSAGE`).
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
        default=None,
        metadata={"help": "Directory that relative image paths of the dataset are resolved against; paths that leave "
                  "it are refused unless --allow_images_outside_root."},
    )
    allow_images_outside_root: bool = field(
        default=False, metadata={"help": "Accept image paths outside --image-root ('../', absolute paths)."}
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Open every image before training, so that a missing or unreadable one is reported with "
                  "its example's file and line."},
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={"help": "Drop examples whose images cannot be read (and say how many) instead of stopping."},
    )
    truncation: str = field(
        default="truncate",
        metadata={"help": "Examples longer than max_length: 'truncate' (never inside an image block) or 'skip'.",
                  "choices": list(TRUNCATION_MODES)},
    )
    system_message: str | None = field(
        default=None,
        metadata={"help": "System turn put before conversations without one (default: none, as at inference)."},
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
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments (a JSON object) for VargptForConditionalGeneration.from_pretrained when "
                  "--model is a path: `dtype` (default float32), and config overrides such as the VAR/VQVAE sizes a "
                  "released-layout checkpoint does not record, e.g. '{\"var_depth\": 16, \"patch_nums\": [1, 2, 3, "
                  "4, 5, 6, 8, 10, 13, 16]}' (the released flat names var_*, vq_*, patch_nums, image_gen_size of "
                  "RELEASED_FLAT_NAMES in released_checkpoint_vargpt.py, or any VargptConfig field)."},
    )
    # TrainingArguments' deprecated `gradient_checkpointing` alias warns whenever it is set; SFTConfig sets it by
    # default, so every run warned. Unset here; the SFT default (on) goes to `activation_checkpointing`.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of --activation_checkpointing (on by default)."}
    )
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin data loader memory (default: only when a GPU is used)."}
    )

    def __post_init__(self):
        launched_on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        if launched_on_cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator()):
            # several processes on a machine without GPUs (torchrun / accelerate launch): DDP over gloo, which
            # TrainingArguments only sets up with use_cpu; without it each process would train alone
            self.use_cpu = True
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's SFT default, under the name that does not warn
        if self.dataloader_pin_memory is None:  # pinning without an accelerator only makes torch warn
            self.dataloader_pin_memory = _has_accelerator() and not self.use_cpu
        self.output_dir_given = self.output_dir is not None  # TrainingArguments replaces None by "trainer_output"
        if self.bf16 is None:
            self.bf16, fp16 = (False, False) if (self.use_cpu or self.fp16) else _default_mixed_precision()
            self.fp16 = self.fp16 or fp16
        if self.ddp_find_unused_parameters is None:
            # every trainable module runs on every step (VargptModel.runs_idle; the rest: _zero_gradient_anchor)
            self.ddp_find_unused_parameters = False
        if self.lora_modules_to_save is not None and [m.lower() for m in self.lora_modules_to_save] == ["none"]:
            self.lora_modules_to_save = []
        if self.stage is not None and int(self.stage) not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        super().__post_init__()
        if self.deepspeed and self.use_cpu and self.world_size > 1:
            # DeepSpeed on CPU processes: its communication layer must wrap the gloo group now, before ZeRO-3 builds
            # the model partitioned (`zero.Init` reads the world size from it, and would see 1 process)
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")
        unsupported = {
            name: getattr(self, name)
            for name, off in _SFT_ONLY_OPTIONS.items()
            if hasattr(self, name) and getattr(self, name) not in off
        }
        if unsupported:
            raise ValueError(
                f"VargptSFTTrainer does not use TRL's data preparation or text-only loss; unset {unsupported}"
            )

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


class VargptSFTTrainer(Trainer):
    """Supervised fine-tuning of VARGPT: a [`~transformers.Trainer`] configured by [`VargptSFTConfig`].

    Why not [`~trl.SFTTrainer`]: what it adds to `Trainer` is its dataset preparation (tokenising, packing,
    completion masks) and a fused LM head that computes the text loss only. VARGPT needs neither: its collator renders
    and tokenises conversations with images to read and to draw on the fly, and its loss adds the image-code
    cross-entropy. The config still extends `SFTConfig`, so TRL's command line and config files work unchanged.

    Args:
        model (`str` or [`VargptForConditionalGeneration`] or `peft.PeftModel`): the model, or a path to load it from
            (with `args.model_init_kwargs`; float32 unless they say otherwise).
        args ([`VargptSFTConfig`]): training settings (`stage`, `image_root`, LoRA, ...).
        train_dataset / eval_dataset: a `datasets.Dataset` in either released format (normalised here), or JSON /
            JSONL file path(s).
        processing_class ([`VargptProcessor`], *optional*): loaded from the model's path when not given.
        data_collator (*optional*): defaults to [`VargptDataCollator`] with `args.max_length`, `args.truncation`,
            `args.system_message` and `args.pad_to_multiple_of`.
        peft_config (`peft.PeftConfig`, *optional*): defaults to `args.lora_config()` when `args.lora` is set.
        Other keyword arguments go to `Trainer`.

    Logged next to `loss`: `text_loss` and `image_loss` (per-token means over the logging interval, all processes),
    `mean_token_accuracy` (text) and `num_tokens`.
    """

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
        elif not isinstance(args, VargptSFTConfig):
            raise TypeError(f"args must be a VargptSFTConfig, got {type(args).__name__}")
        set_seed(args.seed)  # before PEFT draws its adapter weights
        check_launched_world_size()
        if isinstance(model, str):
            model_path = model
            model = load_vargpt_model(model, args.model_init_kwargs)
        else:
            model_path = getattr(model, "name_or_path", None)
            if args.model_init_kwargs:
                logger.warning("model_init_kwargs are ignored: the model is already loaded")
        if processing_class is None:
            from transformers import AutoProcessor

            if not model_path:
                raise ValueError("pass processing_class (the VargptProcessor): the model has no path to load it from")
            processing_class = AutoProcessor.from_pretrained(model_path)
        if args.chat_template_path is not None:
            if not os.path.isfile(args.chat_template_path):
                raise ValueError(f"chat_template_path must be a Jinja template file, got {args.chat_template_path!r}")
            with open(args.chat_template_path, encoding="utf-8") as template:
                processing_class.chat_template = template.read()
        config = model.get_base_model().config if _is_peft(model) else model.config
        align_processor_with_config(processing_class, config)

        if train_dataset is not None:
            train_dataset = self._as_dataset(train_dataset, args)
            if _is_iterable_dataset(train_dataset):
                # batches hold a variable number of images: each process must collate its own
                args.accelerator_config.dispatch_batches = False
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: self._as_dataset(value, args) for key, value in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._as_dataset(eval_dataset, args)
        if data_collator is None:
            data_collator = VargptDataCollator(
                processing_class,
                max_length=args.max_length,
                truncation=args.truncation,
                system_message=args.system_message,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )

        if peft_config is None and args.lora:
            peft_config = args.lora_config()
        if peft_config is not None:
            if _is_peft(model):
                raise ValueError("the model already has PEFT adapters; merge them or pass no peft_config")
            from peft import get_peft_model

            with warnings.catch_warnings():  # PEFT reads the deprecated `is_gradient_checkpointing` property
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                set_seed(args.seed)  # the adapters' initial weights must not depend on how loading used the generator
                model = get_peft_model(model, peft_config)
        if _is_peft(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need inputs that require grad
        if args.stage is not None:
            freeze_for_stage(model, args.stage)
            if train_dataset is not None:
                check_stage_has_data(train_dataset, args.stage)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if args.n_gpu > 1:
            raise ValueError(
                "VargptSFTTrainer does not support nn.DataParallel (several GPUs visible to one process): a batch's "
                "images do not split by rows. Launch with `accelerate launch` or `torchrun`, or make one GPU visible."
            )
        self.num_trainable_parameters = sum(
            getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad
        )  # ZeRO-3 partitions hold 0 elements locally
        self._image_gen_pad_token_id = config.image_gen_pad_token_id
        self._base_config = config
        self._base_model_name = model_path or getattr(config, "_name_or_path", None)
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._total_train_tokens = 0
        self._trainable_parameters: list[torch.nn.Parameter] | None = None

    @staticmethod
    def _as_dataset(data, args):
        """Normalised examples whose image paths stay under `image_root` and whose images all read (see
        `VargptSFTConfig.check_images`)."""
        import datasets

        if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
            dataset = to_vargpt_dataset(data, args.image_root, args.allow_images_outside_root)
            return check_dataset_images(dataset, args.skip_bad_images) if args.check_images else dataset
        return load_vargpt_dataset(
            data,
            args.image_root,
            check_images=args.check_images,
            skip_bad_images=args.skip_bad_images,
            allow_images_outside_root=args.allow_images_outside_root,
        )

    # ---- resuming -----------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint` may also be `"last"` (as `True`: the newest checkpoint of
        `output_dir`). Checkpoints are checked first: an explicit one with a truncated or corrupt file (weights,
        optimizer, scheduler, RNG state, trainer state) is an error naming the file; `True` / `"last"` falls back to
        the newest intact checkpoint and says which broken ones it skipped."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last"):
            resume_from_checkpoint = True
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("false", "none", ""):
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            checkpoint, skipped = newest_intact_checkpoint(self.args.output_dir)
            if skipped:
                details = "; ".join(f"{path.name}: {problems[0]}" for path, problems in skipped.items())
                logger.warning(
                    f"resuming from {checkpoint}, the newest intact checkpoint; skipped the broken newer one(s): "
                    f"{details}"
                )
            resume_from_checkpoint = str(checkpoint)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            problems = checkpoint_problems(resume_from_checkpoint)
            if problems:
                raise ValueError(
                    f"cannot resume from {str(resume_from_checkpoint)!r}:\n  " + "\n  ".join(problems) + "\n"
                    "Resume from an earlier checkpoint, or pass --resume_from_checkpoint last to take the newest "
                    "intact one"
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ---- saving ---------------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        """`Trainer._save`, then a VARGPT model card (base model, stage, adapters; how to load and merge) in place of
        PEFT's blank template or the plain model card."""
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        lora = None
        if _is_peft(self.model):
            peft_config = self.model.peft_config["default"]
            target = peft_config.target_modules
            lora = {
                "r": peft_config.r,
                "lora_alpha": peft_config.lora_alpha,
                "target_modules": target if isinstance(target, str) else sorted(target or []),
                "modules_to_save": list(peft_config.modules_to_save or []),
            }
        write_training_card(
            output_dir,
            self._base_config,
            base=self._base_model_name,
            stage=self.args.stage,
            lora=lora,
            steps=self.state.global_step,
        )

    # ---- loss normalisation ---------------------------------------------------------------------------------------
    def loss_counts(self, batches: list[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
        """`{"text": supervised text tokens, "image": image codes to predict}` over `batches` (and over all processes
        when `average_tokens_across_devices`): the `num_items_in_batch` that the model divides its summed losses by."""
        counts = torch.zeros(2, device=device)
        for batch in batches:
            counts += self._local_counts(batch).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        return {"text": counts[0], "image": counts[1]}

    def _local_counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """[text targets, image codes] of one micro-batch, counted as the model counts them."""
        labels, input_ids = batch["labels"], batch["input_ids"]
        pads = input_ids == self._image_gen_pad_token_id
        text = ((labels != -100) & ~pads)[:, 1:].sum()  # position t predicts label t + 1; pads are never text
        # images to draw come as pixels or codes (`image_gen_tokens`: the codes' deprecated name)
        drawn = any(batch.get(key) is not None for key in ("pixel_gen_values", "image_tokens", "image_gen_tokens"))
        image = pads.sum() if drawn else torch.zeros_like(text)
        return torch.stack([text, image]).float()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The accumulated micro-batches and their text and image counts (see `loss_counts`) as `num_items_in_batch`."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batch_samples, self.loss_counts(batch_samples, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`Trainer.compute_loss` (the model's `text_loss + image_loss`, normalised by `num_items_in_batch`), plus the
        metrics. Training passes both counts (see `get_batch_samples`); evaluation counts its micro-batch here."""
        training = model.training
        if num_items_in_batch is not None and not isinstance(num_items_in_batch, Mapping):
            num_items_in_batch = self.loss_counts([inputs], inputs["input_ids"].device)
        # The LM head only where a text target follows: not over the L pads of every image to draw.
        if "labels" in inputs:
            inputs = {**inputs, "logits_to_keep": supervised_positions(inputs["labels"])}
        inputs = {**inputs, "use_cache": False}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if training:
            loss = loss + self._zero_gradient_anchor(model)
        if "labels" in inputs:
            self._record_metrics("train" if training else "eval", inputs, outputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _zero_gradient_anchor(self, model) -> torch.Tensor | float:
        """0 × one element of every trainable parameter, under DDP only: a gradient (exactly zero) for parameters
        that no forward reads, so that DDP can run without `find_unused_parameters`.

        Modules that a batch merely leaves idle are not the concern: the model runs them on a dummy input whose
        contribution is 0 (`VargptModel.runs_idle`), under every backend. What remains are parameters no forward
        reaches at all: the generation projectors' LayerNorm (the released checkpoint's `ln_q`, trained in stages
        1 and 3 as in the released recipe but never applied), or e.g. CLIP's last layer if a user unfreezes the
        vision tower (the features come from the layer before). DeepSpeed gives such parameters a zero gradient
        itself, and their sharded copies could not be read outside the forward under ZeRO-3 / FSDP: skipped there.
        """
        if self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return 0.0
        if self._trainable_parameters is None:
            self._trainable_parameters = [p for p in model.parameters() if p.requires_grad]
        if not self._trainable_parameters:
            return 0.0
        return sum(p.reshape(-1)[:1].float().sum() for p in self._trainable_parameters) * 0.0

    # ---- metrics --------------------------------------------------------------------------------------------------
    def _record_metrics(self, mode: str, inputs, outputs, num_items_in_batch) -> None:
        """Add this micro-batch's summed text and image losses, counts, correct tokens and tokens (all processes)."""
        local = self._local_counts(inputs).to(outputs.logits.device)
        divisors = local
        if num_items_in_batch is not None:
            divisors = torch.stack([torch.as_tensor(num_items_in_batch[key]).to(local) for key in ("text", "image")])
        with torch.no_grad():
            zero = local.new_zeros(())
            # the model divided each summed loss by its divisor (at least 1): undo that to add sums over steps
            text_sum = zero if outputs.text_loss is None else outputs.text_loss.detach() * divisors[0].clamp(min=1)
            image_sum = zero if outputs.image_loss is None else outputs.image_loss.detach() * divisors[1].clamp(min=1)
            labels = inputs["labels"][:, inputs["logits_to_keep"] + 1]
            correct = ((outputs.logits.argmax(-1) == labels) & (labels != -100)).sum().float()
            stats = torch.stack(
                [text_sum, local[0], image_sum, local[1], correct, inputs["attention_mask"].sum().float()]
            )
            stats = self.accelerator.gather(stats.unsqueeze(0)).sum(0)
        self._metric_sums[mode] = self._metric_sums.get(mode, 0) + stats

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `text_loss`, `image_loss`, `mean_token_accuracy` (means over the interval) and `num_tokens`."""
        mode = "train" if self.model.training else "eval"
        sums = self._metric_sums.pop(mode, None)
        prefix = "eval_" if mode == "eval" else ""
        if sums is not None:
            text_sum, text_count, image_sum, image_count, correct, tokens = sums.tolist()
            if text_count > 0:
                logs[f"{prefix}text_loss"] = text_sum / text_count
                logs[f"{prefix}mean_token_accuracy"] = correct / text_count
            if image_count > 0:
                logs[f"{prefix}image_loss"] = image_sum / image_count
            if mode == "train":
                self._total_train_tokens += int(tokens)
        if mode == "train":
            logs["num_tokens"] = self._total_train_tokens
        super().log(logs, start_time)


def check_stage_has_data(dataset, stage: int) -> None:
    """Refuse a stage that its data cannot train: stages 1 and 3 learn only from images to draw (`<image_gen>`), so
    on understanding / text data their gradient is zero at every step. (Stage 2 learns from every answer.) An
    `IterableDataset` is not read ahead, so not checked."""
    import datasets

    if stage == 2 or not isinstance(dataset, datasets.Dataset):
        return
    for messages in dataset["messages"]:
        if any(IMAGE_GEN_MARKER in message["content"] for message in messages):
            return
    raise ValueError(
        f"stage {stage} trains only the image-generation modules ({', '.join(STAGE_TRAINABLE_MODULES[stage])}), but "
        f"none of the {len(dataset)} training example(s) has an image to draw ({IMAGE_GEN_MARKER} in a turn, with its "
        "image): every step would have a zero gradient. Add text-to-image examples, or train stage 2 on this data"
    )


def requested_num_processes(parent_command_line: list[str] | None = None) -> int | None:
    """The `--num_processes` that `accelerate launch` was given, when this process was started by it (read from the
    parent process's command line), else None."""
    if parent_command_line is None:
        try:
            import psutil

            parent_command_line = psutil.Process(os.getppid()).cmdline()
        except Exception:  # no psutil, or the parent is gone / not readable
            return None
    line = " ".join(parent_command_line)
    if "accelerate" not in line or "launch" not in line:
        return None
    for index, argument in enumerate(parent_command_line):
        for flag in ("--num_processes", "--num-processes"):
            value = None
            if argument == flag and index + 1 < len(parent_command_line):
                value = parent_command_line[index + 1]
            elif argument.startswith(flag + "="):
                value = argument.split("=", 1)[1]
            if value is not None and value.isdigit():
                return int(value)
    return None


def check_launched_world_size(world_size: int | None = None, parent_command_line: list[str] | None = None) -> None:
    """Raise when `accelerate launch --num_processes N` started fewer processes than asked: without `--multi_gpu`
    (or a config that says so) on a machine without GPUs, accelerate starts one process and says nothing, and that
    process would train alone with a different effective batch."""
    requested = requested_num_processes(parent_command_line)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if requested is not None and requested > world_size:
        command = shlex.join(parent_command_line) if parent_command_line else "accelerate launch"
        raise RuntimeError(
            f"`{command[:200]}` asked for {requested} processes but started {world_size} (accelerate's single-process "
            f"launcher). Start {requested} with `accelerate launch --multi_gpu --num_processes {requested} -m "
            f"transformers_vargpt.training ...` (DDP over gloo on a machine without GPUs) or `torchrun "
            f"--nproc_per_node {requested} -m transformers_vargpt.training ...`"
        )


def supervised_positions(labels: torch.Tensor) -> torch.LongTensor:
    """Positions t (1-D) whose next label `labels[:, t + 1]` is a text target in some row of the batch."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().flatten()


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _is_iterable_dataset(dataset) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


__all__ = [
    "VargptSFTConfig",
    "VargptSFTTrainer",
    "align_processor_with_config",
    "check_launched_world_size",
    "check_stage_has_data",
    "load_vargpt_model",
    "requested_num_processes",
]
