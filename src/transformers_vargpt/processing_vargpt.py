"""Processor of VARGPT: CLIP image preprocessing, the Llama tokenizer and the chat template, to read and to draw.

Reading (LLaVA-1.5): each `<image>` in the text becomes one `<image>` token per CLIP feature kept by the model, and
the images become `pixel_values`. Drawing (VAR): `<image_gen>` in an answer becomes `<|image_gen_start|>`, one
`<|image_gen_pad|>` per code of all scales (`sum(p * p for p in patch_nums)`) and `<|image_gen_end|>`; the target
images become `pixel_gen_values` in [-1, 1]. With `generation_mode="image"` a plain description is wrapped in a user
turn and ends with `<|image_gen_start|>`, where the model starts drawing.

The released `tokenizer.json` is the legacy Llama pipeline: a `Prepend("▁")` normalizer that also puts a "▁" before
text that follows a special token (`<image>\\nWhat` gives `<image>`, `▁`, `\\n`, ...). transformers 5 rebuilds
`LlamaTokenizer` from `tokenizer_config.json` (`legacy: false`) and drops that "▁", which changes the token ids the
model was trained on, so `from_pretrained` loads `tokenizer.json` as it is with `TokenizersBackend` (as transformers
itself does for `llava` checkpoints).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoImageProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

from .configuration_vargpt import RELEASED_PATCH_NUMS

logger = logging.get_logger(__name__)

IMAGE_GEN_MARKER = "<image_gen>"
IMAGE_GEN_START, IMAGE_GEN_END, IMAGE_GEN_PAD = "<|image_gen_start|>", "<|image_gen_end|>", "<|image_gen_pad|>"
GENERATION_MODES = ("text", "image")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class VargptProcessorKwargs(ProcessingKwargs, total=False):
    """
    generation_mode (`str`, *optional*, defaults to `"text"`):
        `"text"` tokenizes the prompts as they are; `"image"` reads each prompt as a plain description, wraps it in a
        user turn with the chat template and appends `<|image_gen_start|>` (see `build_text_to_image_prompt`).
    """

    generation_mode: str


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


def load_rgb_image(image: Any) -> PIL.Image.Image:
    """One input image as an 8-bit RGB PIL image.

    Accepts a PIL image (any mode: grayscale, palette, RGBA, 16-bit), an image file path, or a numpy array / torch
    tensor shaped `HxW`, `HxWxC` or `CxHxW` (tensors are read channels-first, arrays channels-last when ambiguous).
    """
    if isinstance(image, (str, os.PathLike)):
        return _open_image_file(Path(image))
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return _array_to_rgb((image.float() if image.is_floating_point() else image).numpy(), channels_first=True)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channels_first=False)
    raise TypeError(
        f"images must be PIL images, numpy arrays, torch tensors or image file paths; got {type(image).__name__}"
    )


def _flatten_images(images: Any) -> list[Any]:
    """A single image, a batch array (`B, ...` with 4 dims) or a (nested) list of images → flat list."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten_images(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


class VargptProcessor(ProcessorMixin):
    r"""
    Processor of VARGPT: a [`CLIPImageProcessor`] (PIL backend), the Llama tokenizer and the chat template.

    Args:
        image_processor ([`CLIPImageProcessor`]): preprocessing of the images to read.
        tokenizer ([`TokenizersBackend`]): the tokenizer with `<image>`, `<pad>` and the `<|image_gen_*|>` tokens.
        patch_size (`int`, *optional*): patch size of the vision tower; required to expand `<image>`.
        vision_feature_select_strategy (`str`, *optional*): `"default"` drops CLIP's CLS feature, `"full"` keeps it.
        chat_template (`str`, *optional*): Jinja template turning a conversation into a prompt.
        image_token (`str`, defaults to `"<image>"`): placeholder of an input image.
        patch_nums (`Sequence[int]`): side of the code map at each VAR scale; an image to draw takes
            `sum(p * p for p in patch_nums)` pad tokens (680 for the released 1..16).
        image_gen_size (`int`): side in pixels of the images to draw (`pixel_gen_values`).
    """

    valid_processor_kwargs = VargptProcessorKwargs
    text_kwargs = {"padding": True}
    generation_mode = "text"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        patch_nums: Sequence[int] = RELEASED_PATCH_NUMS,
        image_gen_size: int = 256,
    ):
        if vision_feature_select_strategy not in (None, "default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {vision_feature_select_strategy!r}"
            )
        if not patch_nums or any(int(p) < 1 for p in patch_nums):
            raise ValueError(f"patch_nums must be a non-empty list of positive sizes, got {patch_nums!r}")
        if int(image_gen_size) < 1:
            raise ValueError(f"image_gen_size must be positive, got {image_gen_size!r}")
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token = image_token
        self.patch_nums = [int(p) for p in patch_nums]
        self.image_gen_size = int(image_gen_size)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        token_ids = {}
        for token in (image_token, IMAGE_GEN_START, IMAGE_GEN_END, IMAGE_GEN_PAD):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token!r} token; VARGPT needs it as an added special token")
            token_ids[token] = token_id
        self.image_token_id = token_ids[image_token]
        self.image_gen_start_token_id = token_ids[IMAGE_GEN_START]
        self.image_gen_end_token_id = token_ids[IMAGE_GEN_END]
        self.image_gen_pad_token_id = token_ids[IMAGE_GEN_PAD]

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the CLIP image processor (PIL backend, as the released code used) and `tokenizer.json` as it is.

        The processor's own arguments (`patch_nums`, ...) are kept out of the sub-processors, whose saved configs
        would otherwise record them.
        """
        own_arguments = set(inspect.signature(cls.__init__).parameters)
        kwargs = {key: value for key, value in kwargs.items() if key not in own_arguments}
        backend = kwargs.pop("backend", "pil")
        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, backend=backend, **kwargs)
        tokenizer = TokenizersBackend.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    @property
    def num_image_gen_tokens(self) -> int:
        """Pad tokens of one image to draw: the codes of all scales."""
        return sum(p * p for p in self.patch_nums)

    @property
    def image_gen_sequence(self) -> str:
        """What one `<image_gen>` expands to: start, `num_image_gen_tokens` pads, end."""
        return IMAGE_GEN_START + IMAGE_GEN_PAD * self.num_image_gen_tokens + IMAGE_GEN_END

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` tokens for one preprocessed `height x width` image (CLS counted, then dropped by "default")."""
        if self.patch_size is None:
            raise ValueError("patch_size is not set: pass patch_size (the vision tower's) to expand `<image>` tokens")
        count = (height // self.patch_size) * (width // self.patch_size) + 1
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def build_text_to_image_prompt(self, text: str) -> str:
        """The prompt asking to draw `text`: one user turn, the generation prompt, then `<|image_gen_start|>`."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text-to-image prompt must be a non-empty string, got {text!r}")
        if self.chat_template is None:
            raise ValueError("this processor has no chat_template; it is needed to build text-to-image prompts")
        conversation = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        return self.apply_chat_template(conversation, add_generation_prompt=True) + IMAGE_GEN_START

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        images_gen: Any = None,
        **kwargs: Unpack[VargptProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Prepare prompts, images to read and images to draw for [`VargptForConditionalGeneration`].

        Args:
            images: images to read, one per `<image>` in the text, in order (PIL images, arrays, tensors or paths).
            text (`str` or `list[str]`): prompts; in `generation_mode="image"`, plain descriptions of images to draw.
            images_gen: target images to draw, one per `<image_gen>` in the text, in order (for training).
            generation_mode (`str`, defaults to `"text"`): `"text"` or `"image"`, see [`VargptProcessorKwargs`].
            padding_side (`str`, defaults to `"left"`): `"left"` for generation, `"right"` for training.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`; lists otherwise.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` (B x T), `pixel_values` (N x 3 x H x W, N images
            to read, CLIP-normalised) and `pixel_gen_values` (M x 3 x S x S in [-1, 1], S = `image_gen_size`).
        """
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"VARGPT reads images and text only; got {modality}")
        if images is None and text is None and images_gen is None:
            raise ValueError("pass at least one of `text`, `images` or `images_gen`")
        # left padding unless asked otherwise, whatever the tokenizer's own default (generation needs it)
        padding_side = kwargs.get("padding_side", kwargs.get("text_kwargs", {}).get("padding_side")) or "left"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' (generation) or 'right' (training), got {padding_side!r}")
        merged = self._merge_kwargs(VargptProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = {**merged["text_kwargs"], "padding_side": padding_side}
        return_tensors = text_kwargs.get("return_tensors")
        generation_mode = merged.get("generation_mode", self.generation_mode)
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")

        prompts = self._check_text(text)
        if prompts is not None and generation_mode == "image":
            prompts = [self.build_text_to_image_prompt(prompt) for prompt in prompts]

        data: dict[str, Any] = {}
        read_images = [load_rgb_image(image) for image in _flatten_images(images)] if images is not None else []
        if prompts is not None:
            self._check_count(self.image_token, prompts, len(read_images), "images", images is not None)
        if read_images:
            data.update(self.image_processor(read_images, **merged["images_kwargs"]))
        if images_gen is not None:
            targets = [self._prepare_generation_target(load_rgb_image(image)) for image in _flatten_images(images_gen)]
            if prompts is not None:
                self._check_count(IMAGE_GEN_MARKER, prompts, len(targets), "images_gen", True)
            data["pixel_gen_values"] = np.stack(targets)

        if prompts is not None:
            if read_images:
                height, width = data["pixel_values"][0].shape[-2:]
                expanded_image = self.image_token * self.num_image_tokens(height, width)
                prompts = [prompt.replace(self.image_token, expanded_image) for prompt in prompts]
            prompts = [prompt.replace(IMAGE_GEN_MARKER, self.image_gen_sequence) for prompt in prompts]
            data.update(self.tokenizer(prompts, **text_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_text(text: Any) -> list[str] | None:
        if text is None:
            return None
        prompts = [text] if isinstance(text, str) else text
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(prompt, str) for prompt in prompts):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
        if not prompts or any(not prompt.strip() for prompt in prompts):
            raise ValueError("empty prompt: every text must contain something besides whitespace")
        return list(prompts)

    @staticmethod
    def _check_count(marker: str, prompts: list[str], num_given: int, argument: str, given: bool) -> None:
        num_markers = sum(prompt.count(marker) for prompt in prompts)
        if num_markers != num_given and (given or num_markers):
            raise ValueError(
                f"the text has {num_markers} {marker} placeholder(s) but {num_given} {argument} were passed; "
                f"pass exactly one image per {marker}, in order"
            )

    def _prepare_generation_target(self, image: PIL.Image.Image) -> np.ndarray:
        """Short side resized to `image_gen_size` (bicubic), centre crop, scaled to [-1, 1]: (3, S, S) float32."""
        size = self.image_gen_size
        width, height = image.size
        scale = size / min(width, height)
        new_width, new_height = max(size, int(width * scale)), max(size, int(height * scale))
        image = image.resize((new_width, new_height), resample=PIL.Image.Resampling.BICUBIC)
        left, top = int(round((new_width - size) / 2)), int(round((new_height - size) / 2))
        image = image.crop((left, top, left + size, top + size))
        return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor | np.ndarray | list, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """Decode generated ids (B x T or T) to one string per sequence, by default without special tokens."""
        ids = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        if ids and isinstance(ids[0], int):
            ids = [ids]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names + ["pixel_gen_values"]
        return list(dict.fromkeys(names))


class VARGPTLlavaProcessor(VargptProcessor):
    """The name that the released checkpoints' `processor_config.json` gives the processor: [`VargptProcessor`]."""


__all__ = ["VARGPTLlavaProcessor", "VargptProcessor", "VargptProcessorKwargs", "load_rgb_image"]
