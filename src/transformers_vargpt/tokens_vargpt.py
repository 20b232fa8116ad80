"""VARGPT's special tokens (strings and the released ids) and how many tokens one image takes.

Reading: each `<image>` in a prompt becomes one `<image>` token per CLIP feature (`num_image_tokens`). Drawing: an
image is `<|image_gen_start|>`, one `<|image_gen_pad|>` per code of all scales (`num_image_gen_tokens`), then
`<|image_gen_end|>`; in chat text `<image_gen>` marks where such an image goes.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
IMAGE_GEN_START_TOKEN = "<|image_gen_start|>"
IMAGE_GEN_END_TOKEN = "<|image_gen_end|>"
IMAGE_GEN_PAD_TOKEN = "<|image_gen_pad|>"
IMAGE_GEN_MARKER = "<image_gen>"  # placeholder in chat text, expanded by the processor; not a vocabulary token

# the tokens VARGPT adds to the Llama vocabulary, in the released order
ADDED_TOKENS = (IMAGE_TOKEN, PAD_TOKEN, IMAGE_GEN_START_TOKEN, IMAGE_GEN_END_TOKEN, IMAGE_GEN_PAD_TOKEN)
# ids of the released checkpoint (VARGPT-family/VARGPT_LLaVA-v1): right after Vicuna's 32000 tokens
RELEASED_TOKEN_IDS = {
    IMAGE_TOKEN: 32000,
    PAD_TOKEN: 32001,
    IMAGE_GEN_START_TOKEN: 32002,
    IMAGE_GEN_END_TOKEN: 32003,
    IMAGE_GEN_PAD_TOKEN: 32004,
}

# `config.special_tokens` (the released config.json's layout) names the generation tokens by these keys
GENERATION_TOKENS = {
    "image_gen_start": IMAGE_GEN_START_TOKEN,
    "image_gen_end": IMAGE_GEN_END_TOKEN,
    "image_gen_pad": IMAGE_GEN_PAD_TOKEN,
}


def special_tokens_entry(token_ids: dict[str, int]) -> dict:
    """`config.special_tokens` for the given ids (by token string): `{"image_gen_start": "<|image_gen_start|>",
    "image_gen_start_token_id": id, ...}` for the three generation tokens."""
    entry = {}
    for name, token in GENERATION_TOKENS.items():
        entry[name] = token
        entry[f"{name}_token_id"] = token_ids[token]
    return entry


def num_image_gen_tokens(scale_sizes: Sequence[int]) -> int:
    """Tokens (codes, and `<|image_gen_pad|>` pads) of one image to draw: Σ s² over the scales (680 for 1..16)."""
    return sum(int(side) * int(side) for side in scale_sizes)


def num_image_tokens(height: int, width: int, patch_size: int, vision_feature_select_strategy: str = "default") -> int:
    """`<image>` tokens of one preprocessed `height x width` image: one per CLIP patch, plus CLS unless the
    "default" strategy drops it (576 for the released 336 px, patch 14)."""
    count = (height // patch_size) * (width // patch_size) + 1
    return count - 1 if vision_feature_select_strategy == "default" else count


__all__ = [
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "IMAGE_GEN_START_TOKEN",
    "IMAGE_GEN_END_TOKEN",
    "IMAGE_GEN_PAD_TOKEN",
    "IMAGE_GEN_MARKER",
    "ADDED_TOKENS",
    "RELEASED_TOKEN_IDS",
    "GENERATION_TOKENS",
    "special_tokens_entry",
    "num_image_gen_tokens",
    "num_image_tokens",
]
