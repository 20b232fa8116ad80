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
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

from .configuration_vargpt import RELEASED_PATCH_NUMS
from .image_processing_vargpt import flatten_images, load_rgb_image, postprocess, prepare_generation_target
from .tokens_vargpt import (
    IMAGE_GEN_END_TOKEN,
    IMAGE_GEN_MARKER,
    IMAGE_GEN_PAD_TOKEN,
    IMAGE_GEN_START_TOKEN,
    IMAGE_TOKEN,
    num_image_gen_tokens,
    num_image_tokens,
)

logger = logging.get_logger(__name__)

GENERATION_MODES = ("text", "image")


class VargptProcessorKwargs(ProcessingKwargs, total=False):
    """
    generation_mode (`str`, *optional*, defaults to `"text"`):
        `"text"` tokenizes the prompts as they are; `"image"` reads each prompt as a plain description, wraps it in a
        user turn with the chat template and appends `<|image_gen_start|>` (see `build_text_to_image_prompt`).
    """

    generation_mode: str


class VargptProcessor(ProcessorMixin):
    r"""
    Processor of VARGPT: a [`CLIPImageProcessor`] (PIL backend), the Llama tokenizer and the chat template.

    Args:
        image_processor ([`CLIPImageProcessor`]): preprocessing of the images to read.
        tokenizer ([`TokenizersBackend`]): the tokenizer with `<image>`, `<pad>` and the `<|image_gen_*|>` tokens;
            set to pad on the left (generation), which a saved tokenizer records.
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
        image_token: str = IMAGE_TOKEN,
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
        # A decoder-only model continues from the last position: code that pads with the tokenizer itself
        # (transformers' pipeline batch collator) must pad on the left too; `init_kwargs` is what a save records.
        self.tokenizer.padding_side = self.tokenizer.init_kwargs["padding_side"] = "left"
        token_ids = {}
        for token in (image_token, IMAGE_GEN_START_TOKEN, IMAGE_GEN_END_TOKEN, IMAGE_GEN_PAD_TOKEN):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token!r} token; VARGPT needs it as an added special token")
            token_ids[token] = token_id
        self.image_token_id = token_ids[image_token]
        self.image_gen_start_token_id = token_ids[IMAGE_GEN_START_TOKEN]
        self.image_gen_end_token_id = token_ids[IMAGE_GEN_END_TOKEN]
        self.image_gen_pad_token_id = token_ids[IMAGE_GEN_PAD_TOKEN]

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
        return num_image_gen_tokens(self.patch_nums)

    @property
    def image_gen_sequence(self) -> str:
        """What one `<image_gen>` expands to: start, `num_image_gen_tokens` pads, end."""
        return IMAGE_GEN_START_TOKEN + IMAGE_GEN_PAD_TOKEN * self.num_image_gen_tokens + IMAGE_GEN_END_TOKEN

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` tokens for one preprocessed `height x width` image (CLS counted, then dropped by "default")."""
        if self.patch_size is None:
            raise ValueError("patch_size is not set: pass patch_size (the vision tower's) to expand `<image>` tokens")
        return num_image_tokens(height, width, self.patch_size, self.vision_feature_select_strategy or "full")

    def build_text_to_image_prompt(self, text: str) -> str:
        """The prompt asking to draw `text`: one user turn, the generation prompt, then `<|image_gen_start|>`."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text-to-image prompt must be a non-empty string, got {text!r}")
        if self.chat_template is None:
            raise ValueError("this processor has no chat_template; it is needed to build text-to-image prompts")
        conversation = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        return self.apply_chat_template(conversation, add_generation_prompt=True) + IMAGE_GEN_START_TOKEN

    def text_to_image_prompt_ids(self, text: str) -> list[int]:
        """The token ids of the prompt asking to draw `text`, as `generate_images` reads them (what a generation
        config's `image_generation["negative_prompt_ids"]` holds)."""
        return [int(i) for i in self(text=text, generation_mode="image")["input_ids"][0]]

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        gen_images: Any = None,
        **kwargs: Unpack[VargptProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Prepare prompts, images to read and images to draw for [`VargptForConditionalGeneration`].

        Args:
            images: images to read, one per `<image>` in the text, in order (PIL images, arrays, tensors or paths).
            text (`str` or `list[str]`): prompts; in `generation_mode="image"`, plain descriptions of images to draw.
            gen_images: target images to draw, one per `<image_gen>` in the text, in order (for training); they
                become `pixel_gen_values`. (`images_gen`, the former name, still works with a warning.)
            generation_mode (`str`, defaults to `"text"`): `"text"` or `"image"`, see [`VargptProcessorKwargs`].
            padding_side (`str`, defaults to `"left"`): `"left"` for generation, `"right"` for training.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`; lists otherwise.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` (B x T), `pixel_values` (N x 3 x H x W, N images
            to read, CLIP-normalised) and `pixel_gen_values` (M x 3 x S x S in [-1, 1], S = `image_gen_size`).
        """
        if "images_gen" in kwargs:
            warnings.warn(
                "`images_gen` is deprecated; pass the images to draw as `gen_images`", FutureWarning, stacklevel=2
            )
            if gen_images is not None:
                raise ValueError("pass the images to draw once, as gen_images (images_gen is its deprecated name)")
            gen_images = kwargs.pop("images_gen")
        for modality in ("videos", "audio"):
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"VARGPT reads images and text only; got {modality}")
        if images is None and text is None and gen_images is None:
            raise ValueError("pass at least one of `text`, `images` or `gen_images`")
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
        read_images = [load_rgb_image(image) for image in flatten_images(images)] if images is not None else []
        if prompts is not None:
            self._check_count(self.image_token, prompts, len(read_images), "images", images is not None)
        if read_images:
            data.update(self.image_processor(read_images, **merged["images_kwargs"]))
        if gen_images is not None:
            targets = [prepare_generation_target(image, self.image_gen_size) for image in flatten_images(gen_images)]
            if prompts is not None:
                self._check_count(IMAGE_GEN_MARKER, prompts, len(targets), "gen_images", True)
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

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor | np.ndarray | list, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """Decode generated ids (B x T or T) to one string per sequence, by default without special tokens."""
        ids = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        if ids and isinstance(ids[0], int):
            ids = [ids]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def postprocess(
        self, images: torch.Tensor, output_type: str = "pil", value_range: tuple[float, float] = (0.0, 1.0)
    ) -> Any:
        """Drawn images `(B, 3, H, W)` in `value_range` → a list of PIL images, a `(B, H, W, 3)` array or a tensor in
        [0, 1] (`output_type` "pil", "np" or "pt"); see [`image_processing_vargpt.postprocess`]."""
        return postprocess(images, output_type=output_type, value_range=value_range)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names + ["pixel_gen_values"]
        return list(dict.fromkeys(names))


class VARGPTLlavaProcessor(VargptProcessor):
    """The name that the released checkpoints' `processor_config.json` gives the processor: [`VargptProcessor`]."""


# `load_rgb_image` lives in image_processing_vargpt; imported from here by earlier code, so it stays importable here.
__all__ = ["IMAGE_GEN_MARKER", "VARGPTLlavaProcessor", "VargptProcessor", "VargptProcessorKwargs", "load_rgb_image"]
