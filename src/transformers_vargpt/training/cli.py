"""`vargpt-train`: fine-tune one of the three VARGPT training stages, optionally with LoRA."""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field

from trl import TrlParser

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


USAGE = (
    "vargpt-train --stage {1,2,3} --model PATH --data FILE [FILE ...] --output DIR [--image-root DIR] [--lora] "
    "[TrainingArguments options]\n       vargpt-train --config train.yaml [options that override the file]"
)


class VargptTrainParser(TrlParser):
    """TRL's parser with a one-line usage in errors (not the ~130 lines of every option), and config-file keys
    that may also be spelt like the command-line options: `model` / `output` (the aliases), `image-root`, ..."""

    def __init__(self):
        super().__init__((VargptScriptArguments, VargptSFTConfig), prog="vargpt-train", usage=USAGE)

    def error(self, message: str):
        sys.stderr.write(f"usage: {USAGE}\nvargpt-train: error: {message}\n(vargpt-train --help lists every option)\n")
        sys.exit(2)

    def set_defaults_with_config(self, **config) -> list[str]:
        """Config keys → option destinations (aliases and dashes accepted); an unknown key is a short error."""
        destinations = {}
        for action in self._actions:
            for option in action.option_strings:
                destinations[option.lstrip("-").replace("-", "_")] = action.dest
        renamed, unknown = {}, []
        for key, value in config.items():
            destination = destinations.get(str(key).replace("-", "_"))
            if destination is None:
                unknown.append(str(key))
            else:
                renamed[destination] = value
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key.replace("-", "_"), destinations, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            self.error(f"unknown key(s) in the config file: {', '.join(hints)}")
        return super().set_defaults_with_config(**renamed)


def build_trainer(script_args: VargptScriptArguments, training_args: VargptSFTConfig) -> VargptSFTTrainer:
    """The `VargptSFTTrainer` of parsed `vargpt-train` arguments: it loads the model (and, unless another directory
    is named, the processor) from `model_name_or_path`, and the data files (checking every image before training)."""
    processor = None
    if script_args.processor_name_or_path:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(script_args.processor_name_or_path)
    return VargptSFTTrainer(
        model=script_args.model_name_or_path,
        args=training_args,
        train_dataset=list(script_args.data),
        eval_dataset=list(script_args.eval_data) if script_args.eval_data else None,
        processing_class=processor,
    )


def train_main(argv: list[str] | None = None) -> None:
    """`vargpt-train`: fine-tune a VARGPT stage.

    `vargpt-train --stage {1,2,3} --model PATH --data FILE [FILE ...] --image-root DIR --output DIR [--lora
    --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --lora-target-modules ...]` plus every `TrainingArguments` option
    (`--learning_rate`, `--max_steps`, `--save_steps`, `--resume_from_checkpoint last`, ...), or
    `vargpt-train --config train.yaml` with the same names as keys, or the options' aliases (`model`, `output`,
    `image-root`); command-line options override the file.

    Several processes: `accelerate launch --multi_gpu --num_processes N -m transformers_vargpt.training ...` or
    `torchrun --nproc_per_node N -m transformers_vargpt.training ...`; on a machine without GPUs the processes train
    with DDP over gloo. (Without `--multi_gpu`, `accelerate launch --num_processes N` starts a single process on such
    a machine: that is an error at start-up.) `--per_device_train_batch_size` is per process: keep N × it × gradient
    accumulation fixed to keep the loss curve.
    """
    import transformers

    parser = VargptTrainParser()
    try:
        script_args, training_args = parser.parse_args_and_config(argv)
    except ValueError as error:  # e.g. a value the config classes reject in __post_init__
        parser.error(str(error))
    if training_args.stage is None:
        parser.error("--stage (1, 2 or 3) is required")
    if not training_args.output_dir_given:
        parser.error("--output (the output directory) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())

    trainer = build_trainer(script_args, training_args)
    logger.info(
        f"stage {training_args.stage}{' (LoRA)' if training_args.lora else ''}: "
        f"{trainer.num_trainable_parameters:,} trainable parameters"
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)  # "last": the newest intact one
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


__all__ = ["VargptScriptArguments", "VargptTrainParser", "build_trainer", "train_main"]
