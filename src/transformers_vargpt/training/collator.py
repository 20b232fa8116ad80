"""Batches of VARGPT training examples: chat-template prompts, answer-only labels, images to read and images to draw.

An example (see `data.py`) is rendered with the processor's chat template, the one inference prompts with, so the
tokens before each answer are exactly the prompt `processor.apply_chat_template(..., add_generation_prompt=True)`
gives for the same conversation. With the package's template (`tiny_models.VICUNA_CHAT_TEMPLATE`):

    "USER: {user} ASSISTANT: {answer}</s>USER: {user} ASSISTANT:<image_gen></s>"

`<image>` is expanded to the vision tower's image tokens and `<image_gen>` to `<|image_gen_start|>`, one
`<|image_gen_pad|>` per code of all scales and `<|image_gen_end|>`. Only the answers (what the template renders for
an assistant turn after the generation prompt, through the eos token) are text targets; image tokens and
image-generation pads never are (the pads are supervised by the image loss instead).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..image_processing_vargpt import load_rgb_image as _load_image
from ..processing_vargpt import IMAGE_GEN_MARKER
from .data import IMAGE_MARKER, placeholder_kinds

logger = logging.get_logger(__name__)

# The system line of the released training recipe (Vicuna v1); not used unless asked for, as inference has none.
VICUNA_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions."
)
TRUNCATION_MODES = ("truncate", "skip")


class VargptDataCollator:
    """Turns normalised examples (`{"messages", "images"}`) into a right-padded training batch.

    Args:
        processor ([`VargptProcessor`]): chat template, tokenizer (fast, with offsets), CLIP image processor and the
            image-generation settings (`patch_nums`, `image_gen_size`).
        max_length (`int`, *optional*, defaults to 2048): longest sequence kept (the released cutoff); `None` keeps
            everything. Longer examples are cut before `max_length`, never inside an image's token block (the cut
            moves to the block's start and the block's image is dropped).
        truncation (`str`, defaults to `"truncate"`): `"truncate"` as above, or `"skip"` to drop over-long examples.
            Examples left without any target token are dropped in both modes; every drop is counted and logged.
        system_message (`str`, *optional*): a system turn put before conversations that have none (default: none,
            as at inference; `VICUNA_SYSTEM_MESSAGE` is the released recipe's). A conversation's own system turn wins.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.

    Returns (from `__call__`), for B examples kept out of the batch:
        `input_ids`, `attention_mask`, `labels` (B×T, -100 where not supervised), and when present
        `pixel_values` (N×3×h×w, images to read, in order) and `pixel_gen_values` (M×3×S×S in [-1, 1], images to
        draw).
    """

    def __init__(
        self,
        processor,
        max_length: int | None = 2048,
        truncation: str = "truncate",
        system_message: str | None = None,
        pad_to_multiple_of: int | None = None,
        ignore_index: int = -100,
    ):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 (or None), got {max_length}")
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("the processor has no chat_template; the collator renders conversations with it")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if not getattr(self.tokenizer, "is_fast", True):
            raise ValueError("VargptDataCollator needs a fast tokenizer (it reads token offsets to place the labels)")
        if self.tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no eos_token, which ends every answer (the model learns to stop)")
        self.max_length = max_length
        self.truncation = truncation
        self.system_message = system_message
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ignore_index = ignore_index
        self.eos_token = self.tokenizer.eos_token
        pad_id = self.tokenizer.pad_token_id
        self.pad_token_id = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        self.image_token_id = processor.image_token_id
        self.image_gen_pad_token_id = processor.image_gen_pad_token_id
        self.num_image_gen_tokens = processor.num_image_gen_tokens
        self.num_truncated = 0
        self.num_skipped = 0
        self._warned_no_eos = False

    # ---- one example --------------------------------------------------------------------------------------------
    def _template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)

    def render(self, messages: list[dict[str, str]], num_image_tokens: int) -> tuple[str, list[tuple[int, int]]]:
        """The conversation through its last answer as the chat template renders it, image placeholders expanded,
        and the character spans of the answers (the targets).

        An answer is what the template adds for an assistant turn after the prompt it gives for the turns before
        with `add_generation_prompt=True`; so the text before each answer is the inference prompt. A template
        that does not end assistant turns with the eos token gets it appended (trailing spaces dropped), so that the
        model still learns to stop.
        """
        conversation = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        if self.system_message and not (messages and messages[0]["role"] == "system"):
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_message}]})
        image_text = self.processor.image_token * num_image_tokens
        gen_text = self.processor.image_gen_sequence

        def expand(content: str) -> str:
            return content.replace(IMAGE_MARKER, image_text).replace(IMAGE_GEN_MARKER, gen_text)

        text, rendered, spans = "", "", []
        for index, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            prompt = self._template(conversation[:index], add_generation_prompt=True)
            through = self._template(conversation[: index + 1])
            if not (prompt.startswith(rendered) and through.startswith(prompt)):
                raise ValueError(
                    "the chat template does not render a conversation as the continuation of its earlier turns and "
                    "generation prompt; the collator cannot tell prompts from answers with it"
                )
            answer = through[len(prompt) :]
            if not answer.endswith(self.eos_token):
                self._warn_no_eos()
                answer = answer.rstrip() + self.eos_token
            text += expand(prompt[len(rendered) :])
            answer = expand(answer)
            spans.append((len(text), len(text) + len(answer)))
            text += answer
            rendered = through
        # turns after the last answer (no target; they may still hold images) are rendered as plain context
        full = self._template(conversation)
        if not full.startswith(rendered):
            raise ValueError("the chat template does not render a conversation as a continuation of its earlier turns")
        return text + expand(full[len(rendered) :]), spans

    def _warn_no_eos(self) -> None:
        if not self._warned_no_eos:
            self._warned_no_eos = True
            logger.warning(
                f"the processor's chat template does not end assistant turns with {self.eos_token!r}; the collator "
                "appends it to every answer. Multi-turn prompts at inference then differ from training after the first "
                "answer: use a template that ends assistant turns with eos (transformers_vargpt.tiny_models."
                "VICUNA_CHAT_TEMPLATE)"
            )

    def _image_blocks(self, input_ids: np.ndarray, token_id: int, block_length: int, pad: int) -> list[tuple[int, int]]:
        """(first, last) positions of each image's token block; `pad` extra tokens on each side (start/end)."""
        positions = np.flatnonzero(input_ids == token_id)
        if block_length == 0 or len(positions) % block_length:
            raise ValueError(
                f"found {len(positions)} tokens of id {token_id}, "
                f"not a whole number of {block_length}-token image blocks"
            )
        return [
            (int(positions[i]) - pad, int(positions[i + block_length - 1]) + pad)
            for i in range(0, len(positions), block_length)
        ]

    def encode(self, example: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
        """One example → `input_ids`, `labels` (1-D int64 arrays) and its images, or None when it is dropped.

        With `force`, an example that would be dropped is truncated and kept anyway (used when a whole batch would
        otherwise be empty).
        """
        messages = example["messages"]
        images = list(example.get("images") or [])
        kinds = placeholder_kinds(messages)
        if len(kinds) != len(images):
            raise ValueError(
                f"an example has {len(kinds)} image placeholder(s) but {len(images)} image(s); normalise the data with "
                "transformers_vargpt.training.load_vargpt_dataset"
            )
        loaded = [_load_training_image(image) for image in images]
        read_images = [image for image, kind in zip(loaded, kinds) if kind == IMAGE_MARKER]
        gen_images = [image for image, kind in zip(loaded, kinds) if kind == IMAGE_GEN_MARKER]
        pixel_values = pixel_gen_values = None
        num_image_tokens = 0
        if read_images:
            pixel_values = self.processor(images=read_images, return_tensors="pt")["pixel_values"]
            num_image_tokens = self.processor.num_image_tokens(*pixel_values.shape[-2:])
        if gen_images:
            pixel_gen_values = self.processor(gen_images=gen_images, return_tensors="pt")["pixel_gen_values"]

        text, spans = self.render(messages, num_image_tokens)
        encoding = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        input_ids = np.asarray(encoding["input_ids"], dtype=np.int64)
        offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        supervised = np.zeros(len(input_ids), dtype=bool)
        for begin, end in spans:
            if ((starts < begin) & (ends > begin)).any():
                raise ValueError(
                    f"a token spans the end of a prompt and the start of its answer in {text[:begin][-40:]!r} | "
                    f"{text[begin:end][:40]!r}: the prompt would not tokenise as at inference"
                )
            supervised |= (starts >= begin) & (starts < end) & (ends > starts)
        supervised &= (input_ids != self.image_token_id) & (input_ids != self.image_gen_pad_token_id)
        labels = np.where(supervised, input_ids, self.ignore_index)

        read_blocks = self._image_blocks(input_ids, self.image_token_id, num_image_tokens, 0) if read_images else []
        gen_blocks = []
        if gen_images:  # pads plus the start and end tokens around them
            gen_blocks = self._image_blocks(input_ids, self.image_gen_pad_token_id, self.num_image_gen_tokens, 1)
        if len(read_blocks) != len(read_images) or len(gen_blocks) != len(gen_images):
            raise ValueError("the tokenizer did not keep the image placeholders as single tokens")

        if self.max_length is not None and len(input_ids) > self.max_length:
            if self.truncation == "skip" and not force:
                self._count_dropped(f"longer than max_length={self.max_length} ({len(input_ids)} tokens)")
                return None
            cut = self.max_length
            for first, last in sorted(read_blocks + gen_blocks):
                if first < cut <= last:  # the cut would split this block: cut before it instead
                    cut = first
            cut = max(cut, 1)
            input_ids, labels = input_ids[:cut], labels[:cut]
            keep_read = sum(last < cut for _, last in read_blocks)
            keep_gen = sum(last < cut for _, last in gen_blocks)
            pixel_values = pixel_values[:keep_read] if keep_read else None
            pixel_gen_values = pixel_gen_values[:keep_gen] if keep_gen else None
            self.num_truncated += 1
            if _is_power_of_two(self.num_truncated):
                logger.warning(
                    f"truncated {self.num_truncated} example(s) to max_length={self.max_length} so far (cuts are moved "
                    "before image blocks; images past the cut are dropped)"
                )
        if not force and not (labels[1:] != self.ignore_index).any():
            self._count_dropped("no target token left")
            return None
        return {
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": pixel_values,
            "pixel_gen_values": pixel_gen_values,
        }

    def _count_dropped(self, reason: str) -> None:
        self.num_skipped += 1
        if _is_power_of_two(self.num_skipped):
            logger.warning(f"skipped {self.num_skipped} training example(s) so far (latest: {reason})")

    # ---- a batch ------------------------------------------------------------------------------------------------
    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        encoded = [self.encode(example) for example in examples]
        encoded = [item for item in encoded if item is not None]
        if not encoded:
            # every example was dropped; keep the first one (truncated, possibly with no target) to keep the loop going
            encoded = [self.encode(examples[0], force=True)]

        length = max(len(item["input_ids"]) for item in encoded)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(encoded)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        labels = torch.full((batch_size, length), self.ignore_index, dtype=torch.long)
        for row, item in enumerate(encoded):
            size = len(item["input_ids"])
            input_ids[row, :size] = torch.from_numpy(item["input_ids"])
            attention_mask[row, :size] = 1
            labels[row, :size] = torch.from_numpy(item["labels"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key in ("pixel_values", "pixel_gen_values"):
            parts = [item[key] for item in encoded if item[key] is not None]
            if parts:
                batch[key] = torch.cat(parts)
        return batch


def _load_training_image(image: Any):
    """`load_rgb_image`, with an error that names the image when its file is missing, truncated or corrupt (a lazily
    opened PIL image is only read here)."""
    try:
        return _load_image(image)
    except (OSError, SyntaxError, ValueError) as error:  # ValueError: load_rgb_image's own "truncated or corrupt"
        name = getattr(image, "filename", None) or (image.get("path") if isinstance(image, dict) else None) or image
        raise ValueError(
            f"training image {str(name)[:200]!r} cannot be read ({type(error).__name__}: {error}); load the data with "
            "load_vargpt_dataset (it checks every image up front, and skip_bad_images drops such examples)"
        ) from error


def _is_power_of_two(count: int) -> bool:
    return count > 0 and count & (count - 1) == 0


__all__ = ["VargptDataCollator", "VICUNA_SYSTEM_MESSAGE", "TRUNCATION_MODES"]
