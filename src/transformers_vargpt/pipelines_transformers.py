"""VARGPT in transformers' `pipeline()`: the stock `image-text-to-text` task, and `vargpt-image-to-text`.

`pipeline("image-text-to-text", model=path)` is transformers' own [`ImageTextToTextPipeline`], unchanged: a VARGPT
directory carries what it needs (the processor's tokenizer pads on the left, the chat template, the generation
config's end and pad tokens), so chats, prompts and batches work as for any other model.

transformers 5 removed the `image-to-text` task: `pipeline("image-to-text", ...)` logs that the task was replaced and
builds an `image-text-to-text` pipeline, which refuses a call without text. The transformers 4 call (images alone,
optionally with a `prompt`) is this package's own task, registered through transformers' public
`PIPELINE_REGISTRY.register_pipeline` under its own name:

```python
import transformers_vargpt  # registers the task
from transformers import pipeline

captioner = pipeline("vargpt-image-to-text", model="path/to/vargpt")  # our layout or the released one
captioner(image)                                                       # [{"generated_text": "..."}]
captioner([image_a, image_b], prompt="What color is the shape?", generate_kwargs={"max_new_tokens": 20})
# [[{"generated_text": "..."}], [{"generated_text": "..."}]]
```

As for every pipeline registered this way, `captioner.save_pretrained(path)` records the task in the saved
`config.json` (`custom_pipelines`) and copies this file beside the weights; `pipeline("vargpt-image-to-text", path)`
then asks for `trust_remote_code=True`, while `pipeline("image-text-to-text", path)` is unaffected.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForImageTextToText
from transformers.pipelines import PIPELINE_REGISTRY, ImageTextToTextPipeline
from transformers.pipelines.base import Pipeline
from transformers.utils import logging

from .tokens_vargpt import IMAGE_TOKEN

logger = logging.get_logger(__name__)

IMAGE_TO_TEXT_TASK = "vargpt-image-to-text"


def _is_single_image(images: Any) -> bool:
    """One image (a PIL image, a path or URL, an array), as opposed to a list or tuple of them."""
    return not isinstance(images, (list, tuple))


class VargptImageToTextPipeline(ImageTextToTextPipeline):
    r"""
    The transformers 4 `image-to-text` call on transformers' [`ImageTextToTextPipeline`]: images alone, or images
    with a question. Every call that `ImageTextToTextPipeline` accepts (chats, `images` + `text`) behaves as there;
    a call with images and no `text` is an image-to-text call:

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

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any):
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


def register_pipelines() -> None:
    """Register the `vargpt-image-to-text` task with transformers' pipeline registry (idempotent).

    Only this package's own task name is added; an existing entry of that name is left as it is.
    """
    if IMAGE_TO_TEXT_TASK in PIPELINE_REGISTRY.get_supported_tasks():
        return
    PIPELINE_REGISTRY.register_pipeline(
        IMAGE_TO_TEXT_TASK,
        pipeline_class=VargptImageToTextPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )


__all__ = ["IMAGE_TO_TEXT_TASK", "VargptImageToTextPipeline", "register_pipelines"]
