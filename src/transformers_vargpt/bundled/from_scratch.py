"""Stage 0 of the bundled recipe: train the LLM, the projectors and the VAR decoder of a fresh VARGPT at once.

The released recipe starts from a pretrained CLIP, Vicuna and VAR; nothing here is pretrained, so before stages 1–3
(which each train only some modules) one stage teaches the LLM, the projectors and the VAR decoder together (the
vision tower was pre-trained on its own just before), with the same trainer, collator and losses as `vargpt-train`
(`VargptSFTTrainer` with no stage preset).
"""

from __future__ import annotations

import logging
import os

from ..processing_vargpt import IMAGE_GEN_MARKER
from ..training import VargptSFTConfig, VargptSFTTrainer, load_vargpt_dataset
from ..training.data import IMAGE_MARKER

logger = logging.getLogger("transformers_vargpt.bundled")


def with_lengths(dataset, processor, image_seq_length: int):
    """Add a `length` column (about the tokens of each example: words, image tokens and image pads) for grouping."""

    def length(example):
        text = " ".join(message["content"] for message in example["messages"])
        tokens = len(text.split()) + text.count(IMAGE_MARKER) * image_seq_length
        return {"length": tokens + text.count(IMAGE_GEN_MARKER) * processor.num_image_gen_tokens}

    return dataset.map(length)


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
    use_cpu: bool = True,
):
    """Train all of `model` but its VQVAE and vision tower on `data` (released JSONL format, image paths relative to
    `image_root`), save the model in `output_dir`, and return it.

    The vision tower stays as `bundled.vision_pretraining` left it (frozen, as in every stage of the released
    recipe): trained on with the LLM, it drifts towards features of the training combinations' colour pairs, and
    answers about held-out combinations get worse."""
    frozen = ("model.vqvae.", "model.vision_tower.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen))
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
        # batches of similar length: drawing requests (L image pads each) are not padded together with questions
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        dataloader_num_workers=dataloader_num_workers,
        use_cpu=use_cpu,  # by default the same weights on any machine: the recipe is sized for CPUs
    )
    trainer = VargptSFTTrainer(
        model=model,
        args=args,
        train_dataset=with_lengths(load_vargpt_dataset(str(data), str(image_root)), processor,
                                   model.config.image_seq_length),
        processing_class=processor,
    )
    logger.info(f"stage 0 (from scratch): {trainer.num_trainable_parameters:,} trainable parameters")
    trainer.train()
    trainer.save_model(str(output_dir))
    return trainer.model


__all__ = ["train_from_scratch"]
