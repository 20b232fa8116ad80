"""Pixels in and out of VARGPT's drawing half: loading any image as RGB, preparing the images to draw (training
targets in [-1, 1]) and post-processing drawn images to PIL / numpy / torch.

The images VARGPT *reads* go through the CLIP image processor of the checkpoint (`preprocessor_config.json`); this
module covers what that processor does not: the many forms an input image comes in, the VQVAE's target images
(short side resized, centre crop, [-1, 1], as the released training code prepared them) and the decoded output.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

OUTPUT_TYPES = ("pil", "np", "pt")
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit copy of image values: floats in [0, 1] (or [0, 255]), 8-bit or 16-bit integers, booleans."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    is_float = np.issubdtype(array.dtype, np.floating)
    if not (is_float or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float arrays")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image array contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 65535:
        raise ValueError(f"image values must lie in [0, 1], [0, 255] or [0, 65535] (8/16-bit); got [{low}, {high}]")
    if is_float and high <= 1.0:
        values = values * 255.0  # intensities in [0, 1]
    elif (array.dtype.kind == "u" and array.dtype.itemsize == 2) or high > 255:
        values = values / 257.0  # 16-bit: 65535 -> 255
    return np.round(values).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, channels_first: bool) -> PIL.Image.Image:
    """`HxW`, `HxWxC` or `CxHxW` (C in 1, 3, 4) array of any supported dtype -> 8-bit RGB image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and (channels_first or array.shape[-1] not in (1, 3, 4)):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.size == 0:
        raise ValueError(f"an image array must be HxW, HxWxC or CxHxW with C in (1, 3, 4); got shape {array.shape}")
    values = np.ascontiguousarray(_to_uint8(array))
    image = PIL.Image.fromarray(values[..., 0]) if values.shape[-1] == 1 else PIL.Image.fromarray(values)
    return _pil_to_rgb(image)


def _pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """A new 8-bit RGB image; transparency is composited on white (as transformers' `convert_to_rgb`)."""
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grayscale: PIL's `convert` would clip at 255, so rescale to 8 bits first
        return _array_to_rgb(np.asarray(image), channels_first=False)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert a {image.mode!r} image to RGB: {error}") from error


def _open_image_file(path: Path) -> PIL.Image.Image:
    if not path.is_file():
        raise ValueError(f"image path {str(path)!r} is not a file")
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            return _pil_to_rgb(opened)
    except PIL.UnidentifiedImageError as error:
        raise ValueError(f"{str(path)!r} is not an image file that PIL can read") from error
    except OSError as error:
        raise ValueError(f"image file {str(path)!r} is truncated or corrupt: {error}") from error


def _image_name(image: PIL.Image.Image) -> str:
    filename = getattr(image, "filename", "") or ""
    return repr(filename) if filename else f"in-memory {image.format or image.mode} image"


def _loaded(image: PIL.Image.Image) -> PIL.Image.Image:
    """A lazily opened image's pixels are read here, so that a truncated file is named (not a bare OSError)."""
    try:
        image.load()
    except OSError as error:
        raise ValueError(f"image {_image_name(image)} is truncated or corrupt: {error}") from error
    return image


def _checked_size(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} is empty ({image.width}x{image.height} pixels)")
    return image


def load_rgb_image(image: Any) -> PIL.Image.Image:
    """One input image as an 8-bit RGB PIL image.

    Accepts a PIL image (any mode: grayscale, palette, RGBA, 16-bit), an image file path, a numpy array / torch
    tensor shaped `HxW`, `HxWxC` or `CxHxW` (tensors are read channels-first, arrays channels-last when ambiguous),
    or a `datasets` image record (`{"bytes": ..., "path": ...}`).
    """
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            image = PIL.Image.open(io.BytesIO(image["bytes"]))
        elif image.get("path") is not None:
            image = image["path"]
        else:
            raise ValueError(f"image dict without bytes or path: {sorted(image)}")
    if isinstance(image, (str, os.PathLike)):
        return _checked_size(_open_image_file(Path(image)), str(image))
    if isinstance(image, PIL.Image.Image):
        return _checked_size(_pil_to_rgb(_loaded(image)), _image_name(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        array = (image.float() if image.is_floating_point() else image).numpy()
        return _checked_size(_array_to_rgb(array, channels_first=True), "tensor image")
    if isinstance(image, np.ndarray):
        return _checked_size(_array_to_rgb(image, channels_first=False), "array image")
    raise TypeError(
        "images must be PIL images, numpy arrays, torch tensors, image file paths or datasets image records; "
        f"got {type(image).__name__}"
    )


def flatten_images(images: Any) -> list[Any]:
    """A single image, a batch array (`B, ...` with 4 dims) or a (nested) list of images → flat list."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in flatten_images(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def prepare_generation_target(image: Any, size: int) -> np.ndarray:
    """An image to draw as the VQVAE reads it: short side resized to `size` (bicubic), centre crop, scaled to
    [-1, 1]. Accepts whatever [`load_rgb_image`] accepts. Returns a `(3, size, size)` float32 array."""
    image = load_rgb_image(image)
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, int(width * scale)), max(size, int(height * scale))
    image = image.resize((new_width, new_height), resample=PIL.Image.Resampling.BICUBIC)
    left, top = int(round((new_width - size) / 2)), int(round((new_height - size) / 2))
    image = image.crop((left, top, left + size, top + size))
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def postprocess(
    images: torch.Tensor, output_type: str = "pil", value_range: tuple[float, float] = (0.0, 1.0)
) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Drawn images `(B, 3, H, W)` with values in `value_range` ((0, 1) as `generate_images` returns them, or
    (-1, 1) as the VQVAE decodes them) → `output_type`:

    - `"pil"`: a list of B RGB `PIL.Image.Image` (values × 255, rounded);
    - `"np"`: a float32 array `(B, H, W, 3)` in [0, 1];
    - `"pt"`: a float tensor `(B, 3, H, W)` in [0, 1], on the input's device.

    Values outside the range are clamped to it.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    value_range = tuple(float(bound) for bound in value_range)
    if value_range not in VALUE_RANGES:
        raise ValueError(f"value_range must be one of {VALUE_RANGES}, got {value_range}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    low, high = value_range
    images = ((images.float() - low) / (high - low)).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]


__all__ = ["OUTPUT_TYPES", "flatten_images", "load_rgb_image", "postprocess", "prepare_generation_target"]
