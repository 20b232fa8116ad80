"""Input checks at VARGPT's entry points (`forward`, `generate_images`, `decode_image_tokens`) and the non-finite
guards of image generation. Each turns what would be a silent wrong result or an obscure torch error into a message
that names the argument, what was expected and what was found.

The checks are cheap: one reduction per tensor, run once per call (or once per scale for the code logits).
"""

from __future__ import annotations

import torch

# What to try when a half-precision model overflows (the usual cause of NaN/Inf in otherwise sane inputs).
_DTYPE_ADVICE = (
    "float16 overflows easily in this model: load it with dtype=torch.bfloat16 (or float32) instead"
)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """`input_ids` must be a non-empty B×T integer tensor of ids in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids must be an integer tensor, got {kind}")
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty B x T tensor, got shape {tuple(input_ids.shape)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids hold ids outside the vocabulary [0, {vocab_size}) (got min {low}, max {high}); "
            "use the checkpoint's own processor / tokenizer"
        )


def check_attention_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> None:
    """A 2-D `attention_mask` must have the shape of `input_ids` (B×T); 4-D masks (and transformers' mask
    mappings) are the caller's own."""
    if not isinstance(attention_mask, torch.Tensor):
        return
    if attention_mask.ndim != 4 and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; "
            "they must match (1 for real tokens, 0 for padding)"
        )


def check_placeholders(
    input_ids: torch.Tensor,
    image_token_id: int,
    image_gen_pad_token_id: int | None,
    has_pixel_values: bool,
    has_gen_images: bool,
) -> None:
    """`<image>` tokens need `pixel_values` and `<|image_gen_pad|>` tokens need the images to draw: without them the
    placeholders would be embedded as text and answered."""
    if not has_pixel_values:
        count = int((input_ids == image_token_id).sum())
        if count:
            raise ValueError(
                f"input_ids hold {count} <image> tokens (id {image_token_id}) but no pixel_values were given; "
                "pass the images (the processor returns them) or remove the <image> tokens"
            )
    if not has_gen_images and image_gen_pad_token_id is not None:
        count = int((input_ids == image_gen_pad_token_id).sum())
        if count:
            raise ValueError(
                f"input_ids hold {count} <|image_gen_pad|> tokens (id {image_gen_pad_token_id}) but neither "
                "pixel_gen_values nor image_tokens were given; pass the images to draw (or their codes)"
            )


def check_pixel_values(pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
    """Images must be a non-empty N×3×h×w float tensor of finite values."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor (N x 3 x H x W), got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or 0 in pixel_values.shape:
        raise ValueError(f"{name} must be N x 3 x H x W (RGB, channels first), got shape {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (use the processor), got {pixel_values.dtype}")
    if not bool(torch.isfinite(pixel_values).all()):
        raise ValueError(f"{name} contain NaN or infinite values")


def check_generation_images(pixel_gen_values: torch.Tensor) -> None:
    """The images to draw (training targets) must be finite and scaled to [-1, 1], as the processor prepares them."""
    check_pixel_values(pixel_gen_values, "pixel_gen_values")
    low, high = float(pixel_gen_values.min()), float(pixel_gen_values.max())
    if low < -1.001 or high > 1.001:  # a hair of slack for resampling round-off
        raise ValueError(
            f"pixel_gen_values must be scaled to [-1, 1] (x / 127.5 - 1 for 8-bit images; the processor does it), "
            f"got values in [{low:g}, {high:g}]"
        )


def check_image_tokens(image_tokens: torch.Tensor, vocab_size: int, length: int) -> None:
    """Codes must be a non-empty N×L integer tensor of indices in [0, vocab_size)."""
    if not isinstance(image_tokens, torch.Tensor):
        raise TypeError(f"image_tokens must be a torch tensor of code indices, got {type(image_tokens).__name__}")
    if image_tokens.is_floating_point() or image_tokens.is_complex() or image_tokens.dtype == torch.bool:
        raise TypeError(f"image_tokens must be an integer tensor of code indices, got {image_tokens.dtype}")
    if image_tokens.ndim != 2 or image_tokens.shape[0] == 0 or image_tokens.shape[1] != length:
        raise ValueError(
            f"image tokens must be B x {length} code indices (B >= 1, all scales concatenated), "
            f"got shape {tuple(image_tokens.shape)}"
        )
    low, high = int(image_tokens.min()), int(image_tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"image_tokens must be codes in [0, {vocab_size}) (vq_config.vocab_size), got min {low}, max {high}"
        )


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def check_finite_output(values: torch.Tensor, where: str, model_dtype: torch.dtype) -> None:
    """Raise when a computed tensor went NaN/Inf, saying where and what to try."""
    if bool(torch.isfinite(values).all()):
        return
    advice = _DTYPE_ADVICE if model_dtype == torch.float16 else (
        "check the inputs and the weights for NaN/Inf; a float16 model is prone to overflow (prefer bfloat16)"
    )
    raise FloatingPointError(f"{where} contain NaN or infinite values (model dtype {model_dtype}); {advice}")


__all__ = [
    "check_attention_mask",
    "check_finite_output",
    "check_generation_images",
    "check_generator",
    "check_image_tokens",
    "check_pixel_values",
    "check_placeholders",
    "check_token_ids",
]
