"""VARGPT in transformers' `pipeline()`: the `image-text-to-text` task, and `image-to-text` as transformers 4 had it.

`image-text-to-text` already works with VARGPT through transformers' own `ImageTextToTextPipeline` (chat messages,
plain prompts, `max_new_tokens`, batches) with one exception this module mends: the pipeline's batch collator pads with
the tokenizer's `padding_side`, and the released tokenizer pads on the right, which a decoder-only model cannot
generate from. For VARGPT models the pipeline below pads on the left.

transformers 5 removed the `image-to-text` task: `pipeline("image-to-text", ...)` is rewritten to
`"image-text-to-text"` before the task registry is consulted, and `ImageTextToTextPipeline` refuses a call without
text. So registering a class for `"image-to-text"` alone (done below, for discovery) is not reached by `pipeline()`;
instead the `image-text-to-text` implementation is replaced by [`VargptImageTextToTextPipeline`], a subclass that is
the transformers class for every other model and, for VARGPT models, also accepts the transformers 4 image-to-text
call:

```python
import transformers_vargpt  # registers the pipelines
from transformers import pipeline

captioner = pipeline("image-to-text", model="path/to/vargpt")  # our layout or the released one
captioner(image)                                                # [{"generated_text": "..."}]
captioner([image_a, image_b], prompt="What color is the shape?", generate_kwargs={"max_new_tokens": 20})
# [[{"generated_text": "..."}], [{"generated_text": "..."}]]
```

The released checkpoint layout does not record the VAR/VQVAE sizes; pass them with `model_kwargs`, which
`pipeline()` hands to both the model and the processor:
`pipeline("image-to-text", model=released_dir, model_kwargs={"patch_nums": [...], "var_depth": ..., ...})`.
A model object needs its processor: `pipeline("image-to-text", model=model, processor=processor)`.
"""

from __future__ import annotations

import logging as stdlib_logging
from typing import Any

from transformers import AutoModelForImageTextToText
from transformers.pipelines import PIPELINE_REGISTRY, ImageTextToTextPipeline
from transformers.pipelines.base import Pipeline
from transformers.utils import logging

logger = logging.get_logger(__name__)

VARGPT_MODEL_TYPE = "vargpt_llava"
IMAGE_TOKEN = "<image>"


def _is_single_image(images: Any) -> bool:
    """One image (a PIL image, a path or URL, an array), as opposed to a list or tuple of them."""
    return not isinstance(images, (list, tuple))


class VargptImageTextToTextPipeline(ImageTextToTextPipeline):
    r"""
    transformers' [`ImageTextToTextPipeline`] that, for VARGPT models, pads batches on the left and also answers the
    transformers 4 `image-to-text` call.

    Every call that `ImageTextToTextPipeline` accepts (chat messages, `images` + `text`, text only, lists of them)
    behaves as there. For a VARGPT model, a call *without* `text` is an image-to-text call:

    Args:
        images (`str`, `PIL.Image.Image`, `np.ndarray` or a list of them):
            One image (path, URL, PIL image, array) or a list of images.
        prompt (`str` or `list[str]`, *optional*):
            A question about each image (one string for all images, or one per image), rendered with the chat
            template after the image. A prompt that already contains `<image>` is used as it is (the transformers 4
            LLaVA style, e.g. `"USER: <image>\nWhat is this? ASSISTANT:"`). Without a prompt the user turn holds only
            the image and the model describes it.
        max_new_tokens (`int`, *optional*): how many tokens to generate (pipeline default 256).
        generate_kwargs (`dict`, *optional*): passed to `generate()`.
        return_full_text (`bool`, *optional*, defaults to `False`):
            `False`: the answer alone, without leading whitespace; `True`: the prompt text followed by the answer.
        batch_size (`int`, *optional*): images per forward pass for a list of images.

    Returns:
        For one image, `[{"generated_text": answer}]`; for a list of N images, N such lists.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.serves_vargpt and self.tokenizer is not None and self.tokenizer.padding_side != "left":
            # the batch collator pads with the tokenizer's side; generation continues from the last position
            logger.info("VARGPT pipeline: padding batches on the left (the tokenizer pads on the right)")
            self.tokenizer.padding_side = "left"

    @property
    def serves_vargpt(self) -> bool:
        return getattr(self.model.config, "model_type", None) == VARGPT_MODEL_TYPE

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any):
        if not self.serves_vargpt:
            return super().__call__(images, text, **kwargs)
        if "inputs" in kwargs and images is None:  # transformers 4's ImageToTextPipeline named the argument `inputs`
            images = kwargs.pop("inputs")
        prompt = kwargs.pop("prompt", None)
        if text is None and images is not None and self._are_images(images):
            return self._image_to_text(images, prompt, **kwargs)
        if prompt is not None:
            raise ValueError("`prompt` belongs to the image-to-text call (images only, no `text`); pass `text` instead")
        return super().__call__(images, text, **kwargs)

    @staticmethod
    def _are_images(images: Any) -> bool:
        """Images (one or a list), as opposed to chats or `{"images": ..., "text": ...}` dicts."""
        items = [images] if _is_single_image(images) else list(images)
        return bool(items) and not any(isinstance(item, (dict, list, tuple)) for item in items)

    def _image_prompt(self, prompt: str | None) -> str:
        """The text for one image: the prompt as it is if it places `<image>` itself, else a chat-template turn."""
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        if prompt is not None and IMAGE_TOKEN in prompt:
            return prompt
        content = [{"type": "image"}]
        if prompt is not None and prompt.strip():
            content.append({"type": "text", "text": prompt})
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError("the processor has no chat_template; pass a prompt that contains '<image>'")
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _image_to_text(self, images: Any, prompt: str | list[str] | None, **kwargs: Any):
        single = _is_single_image(images)
        images = [images] if single else list(images)
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; pass one prompt or one per image")
        full_text = kwargs.setdefault("return_full_text", False)
        items = [{"images": image, "text": self._image_prompt(text)} for image, text in zip(images, prompts)]
        # Pipeline.__call__ directly: ImageTextToTextPipeline.__call__ would read a list of dicts as a chat
        results = Pipeline.__call__(self, items[0] if single else items, **kwargs)

        def as_v4(records: list[dict]) -> list[dict[str, str]]:
            # the answer is cut from the decoded sequence after the decoded prompt, which may leave its separator
            texts = [record["generated_text"] for record in records]
            return [{"generated_text": text if full_text else text.lstrip()} for text in texts]

        return as_v4(results) if single else [as_v4(records) for records in results]


class _StrayWarningCategoryFilter(stdlib_logging.Filter):
    """transformers 5.24 logs the `image-to-text` → `image-text-to-text` rewrite as `warning_once(message,
    UserWarning)`; the stray argument breaks %-formatting ("--- Logging error ---", and a TypeError under pytest).
    Dropping it lets the message print as intended."""

    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        if record.args == (UserWarning,):
            record.args = ()
        return True


def register_pipelines() -> None:
    """Make `pipeline("image-text-to-text")` and `pipeline("image-to-text")` serve VARGPT models (idempotent).

    The `image-text-to-text` entry keeps its model classes, default checkpoint and type; only its implementation
    becomes [`VargptImageTextToTextPipeline`], which is transformers' class unchanged for other models.
    """
    pipelines_logger = stdlib_logging.getLogger("transformers.pipelines")
    if not any(isinstance(existing, _StrayWarningCategoryFilter) for existing in pipelines_logger.filters):
        pipelines_logger.addFilter(_StrayWarningCategoryFilter())
    tasks = PIPELINE_REGISTRY.supported_tasks
    current = tasks["image-text-to-text"]
    if current["impl"] is not VargptImageTextToTextPipeline:
        tasks["image-text-to-text"] = {**current, "impl": VargptImageTextToTextPipeline}
    if "image-to-text" not in tasks:
        PIPELINE_REGISTRY.register_pipeline(
            "image-to-text",
            pipeline_class=VargptImageTextToTextPipeline,
            pt_model=AutoModelForImageTextToText,
            type="multimodal",
        )
        # `register_pipeline` marks the class as a Hub custom pipeline: `Pipeline.save_pretrained` would then write
        # `custom_pipelines` into saved configs and demand `trust_remote_code` to load them. The code is installed.
        del VargptImageTextToTextPipeline._registered_impl


__all__ = ["VargptImageTextToTextPipeline", "register_pipelines"]
