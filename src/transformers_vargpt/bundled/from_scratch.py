"""Stage 0 of the bundled recipe: train every part of a freshly initialised VARGPT at once (VQVAE frozen).

The released recipe starts from a pretrained CLIP, Vicuna and VAR; nothing here is pretrained, so before stages 1–3
(which each train only some modules) one stage teaches the vision tower, the LLM, the projectors and the VAR decoder
together, with the same trainer, collator and losses as `vargpt-train` (`VargptSFTTrainer` with no stage preset).
"""

from __future__ import annotations

import logging
import os

from ..training import VargptSFTConfig, VargptSFTTrainer, load_vargpt_dataset

logger = logging.getLogger("transformers_vargpt.bundled")
# The model is prompted without a system line (the chat template has none); a blank one renders to no token.
NO_SYSTEM_LINE = " "


def train_from_scratch(
    model,
    processor,
    data: str | os.PathLike,
    image_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    warmup_ratio: float = 0.05,
    logging_steps: int = 25,
    dataloader_num_workers: int = 0,
):
    """Train all of `model` but its VQVAE on `data` (released JSONL format), save model and processor in
    `output_dir`, and return the model."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("model.vqvae."))
    args = VargptSFTConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_ratio,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        image_root=str(image_root),
        dataloader_num_workers=dataloader_num_workers,
        use_cpu=True,  # the same weights on any machine: the recipe is sized for CPUs
        system_message=NO_SYSTEM_LINE,
    )
    trainer = VargptSFTTrainer(
        model=model,
        args=args,
        train_dataset=load_vargpt_dataset(str(data), str(image_root)),
        processing_class=processor,
    )
    logger.info(f"stage 0 (from scratch): {trainer.num_trainable_parameters:,} trainable parameters")
    trainer.train()
    trainer.save_model(str(output_dir))
    return trainer.model


__all__ = ["train_from_scratch"]
