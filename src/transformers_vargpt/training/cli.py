"""`vargpt-train`: fine-tune one of the three VARGPT training stages, optionally with LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .data import load_vargpt_dataset
from .trainer import VargptSFTConfig, VargptSFTTrainer

logger = logging.getLogger("transformers_vargpt.train")


@dataclass
class VargptScriptArguments:
    """What `vargpt-train` trains on; every training setting is in `VargptSFTConfig`."""

    model_name_or_path: str = field(
        metadata={"help": "Model directory (ours or the released layout) to fine-tune.", "aliases": ["--model"]}
    )
    data: list[str] = field(
        metadata={"help": "Training data: JSON / JSONL file(s) in the released 'messages' or LLaVA 'conversations' "
                  "format."}
    )
    eval_data: list[str] | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor directory, if not the model's."}
    )


def build_trainer(script_args: VargptScriptArguments, training_args: VargptSFTConfig) -> VargptSFTTrainer:
    """The `VargptSFTTrainer` of parsed `vargpt-train` arguments: it loads the model (and, unless another directory
    is named, the processor) from `model_name_or_path`."""
    processor = None
    if script_args.processor_name_or_path:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(script_args.processor_name_or_path)
    train_dataset = load_vargpt_dataset(script_args.data, training_args.image_root)
    eval_dataset = None
    if script_args.eval_data:
        eval_dataset = load_vargpt_dataset(script_args.eval_data, training_args.image_root)
    return VargptSFTTrainer(
        model=script_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
    )


def train_main(argv: list[str] | None = None) -> None:
    """`vargpt-train`: fine-tune a VARGPT stage.

    `vargpt-train --stage {1,2,3} --model PATH --data FILE [FILE ...] --image-root DIR --output DIR [--lora
    --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --lora-target-modules ...]` plus every `TrainingArguments` option
    (`--learning_rate`, `--max_steps`, `--save_steps`, `--resume_from_checkpoint last`, ...), or
    `vargpt-train --config train.yaml` with the same names as keys (command-line options override the file).

    Several processes: `accelerate launch --multi_gpu --num_processes N -m transformers_vargpt.training ...` or
    `torchrun --nproc_per_node N -m transformers_vargpt.training ...`; on a machine without GPUs the processes train
    with DDP over gloo. (`accelerate launch --cpu --num_processes N` starts a single process unless given an MPI
    hostfile.) `--per_device_train_batch_size` is per process: keep N × it × gradient accumulation fixed to keep the
    loss curve.
    """
    import transformers
    from trl import TrlParser

    parser = TrlParser((VargptScriptArguments, VargptSFTConfig), prog="vargpt-train")
    script_args, training_args = parser.parse_args_and_config(argv)
    if training_args.stage is None:
        parser.error("--stage (1, 2 or 3) is required")
    if training_args.output_dir is None:
        parser.error("--output (the output directory) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())

    trainer = build_trainer(script_args, training_args)
    logger.info(
        f"stage {training_args.stage}{' (LoRA)' if training_args.lora else ''}: "
        f"{trainer.num_trainable_parameters:,} trainable parameters"
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the latest checkpoint in output_dir
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


__all__ = ["VargptScriptArguments", "build_trainer", "train_main"]
