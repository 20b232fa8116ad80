"""What the VARGPT Space runs, without any Gradio: loading the model, checking requests against the limits, streaming
an answer token by token and streaming a drawing scale by scale.

The app (`app.py`) turns `InputError` into a friendly `gr.Error`; everything here can also be used from plain Python.
Only public API of the package is used: `VargptPipeline` (its `callback_on_step_end` gives the partial image of every
scale), the model's `generate` with a `TextIteratorStreamer`, and the processor's chat template.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import PIL.Image
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

import transformers_vargpt
from transformers_vargpt import VargptPipeline
from transformers_vargpt.image_processing_vargpt import load_rgb_image

logger = logging.getLogger("vargpt_space")

# The checkpoint a Hugging Face Space serves when no model is named (the Space hardware is a GPU).
RELEASED_MODEL = "VARGPT-family/VARGPT_LLaVA-v1"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class InputError(ValueError):
    """A request the app refuses; the message is meant for the user."""


class ModelNotFoundError(RuntimeError):
    """No model was named and there is no default one to fall back on."""


def resolve_default_model() -> str:
    """The model to serve when neither `--model` nor `VARGPT_MODEL` names one.

    On a Hugging Face Space (`SPACE_ID` is set there) the released checkpoint; elsewhere the small model bundled with
    the package (`transformers_vargpt.BUNDLED_MODEL`, a directory inside the installed package).
    """
    if os.environ.get("SPACE_ID"):
        return RELEASED_MODEL
    bundled = getattr(transformers_vargpt, "BUNDLED_MODEL", None)
    if bundled is not None:
        if not os.path.isdir(bundled):
            raise ModelNotFoundError(
                f"the bundled model directory {os.fspath(bundled)!r} is missing from this installation; reinstall "
                "transformers-vargpt, or pass --model with a model directory or a Hub id"
            )
        return os.fspath(bundled)
    raise ModelNotFoundError(
        "no model to serve: this installation of transformers-vargpt has no bundled model. Pass --model with a "
        f"model directory or a Hub id (e.g. --model {RELEASED_MODEL}), or set the VARGPT_MODEL environment variable."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """bf16 on a GPU (the released weights' dtype), fp32 on a CPU (where bf16 matmuls are slow or missing)."""
    return "float32" if torch.device(device).type == "cpu" else "bfloat16"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The image limits are checked on the file before it is decoded."""

    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images_per_message: int = 4
    max_question_chars: int = 2000
    max_prompt_chars: int = 500
    max_images_per_drawing: int = 4
    max_seed: int = 2**31 - 1
    max_guidance_scale: float = 10.0
    max_new_tokens: int = 256


@dataclass
class Turn:
    """One message of a conversation: who speaks, the images they attach (already loaded) and the text."""

    role: str
    text: str = ""
    images: list[PIL.Image.Image] = field(default_factory=list)


@dataclass
class DrawingProgress:
    """One update of a drawing: after scale `scale` (1-based) of `num_scales`, the partial picture of every image
    side by side; `images` holds the finished images once the last scale is decoded."""

    scale: int
    num_scales: int
    preview: PIL.Image.Image
    images: list[PIL.Image.Image] | None = None


class _Cancelled(Exception):
    """Raised inside the worker when the request that started it has gone away."""


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def open_image(path: str | os.PathLike, limits: Limits) -> PIL.Image.Image:
    """An uploaded image file as RGB, refused before decoding when it is too large in bytes or in pixels."""
    size = os.path.getsize(path)
    if size > limits.max_image_bytes:
        raise InputError(
            f"the image file is {size / 2**20:.1f} MB; images up to {limits.max_image_bytes / 2**20:.0f} MB are accepted"
        )
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > limits.max_image_pixels:
                raise InputError(
                    f"the image is {width}x{height} pixels ({width * height / 1e6:.1f} MP); images up to "
                    f"{limits.max_image_pixels / 1e6:.1f} MP are accepted"
                )
            image.load()
            return load_rgb_image(image)
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as error:
        raise InputError(f"the file is not an image that can be read ({error})") from error
    except OSError as error:
        raise InputError(f"the image file is truncated or corrupt ({error})") from error


class VargptSpaceModel:
    """The model, processor and pipeline of the Space, with a cap on how many requests use them at once."""

    def __init__(self, pipe: VargptPipeline, limits: Limits = Limits(), max_concurrent: int = 1):
        self.pipe = pipe
        self.model = pipe.model
        self.processor = pipe.processor
        self.limits = limits
        # Gradio's queue limits each event; this caps all of them together (chat, /ask, drawing, examples).
        self._slots = threading.BoundedSemaphore(max_concurrent)
        pipe.set_progress_bar_config(disable=True)
        # now, before requests share the model: a first drawing would otherwise re-store weights that a concurrent
        # answer is computing with (transformers_vargpt.cpu_matmul, column-major weights)
        self.model.prepare_for_drawing()

    @classmethod
    def load(
        cls, model: str, device: str, dtype: str, limits: Limits = Limits(), max_concurrent: int = 1
    ) -> "VargptSpaceModel":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        logger.info("loading %s on %s in %s", model, device, dtype)
        pipe = VargptPipeline.from_pretrained(model, dtype=DTYPES[dtype]).to(device)
        return cls(pipe, limits=limits, max_concurrent=max_concurrent)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_scales(self) -> int:
        return self.pipe.num_scales

    @property
    def codebook_size(self) -> int:
        """Codes the VAR decoder samples from at every scale: the largest meaningful top-k."""
        return int(self.model.config.vq_config.vocab_size)

    @property
    def sampling_defaults(self):
        """The model's image sampling defaults (`generation_config.image_generation` over the released top-k 900,
        top-p 0.95, no guidance), as a `GenerationConfig`: what a drawing uses when the user changes nothing."""
        return self.model.image_generation_config()

    # ---- understanding ------------------------------------------------------------------------------------------
    def _context_length(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def chat_inputs(self, turns: list[Turn]):
        """Prompt tensors of a conversation ending with a user turn. The oldest exchanges are dropped when the
        conversation (images included) does not leave room for an answer in the model's context."""
        if not turns or turns[-1].role != "user":
            raise InputError("the conversation must end with a question")
        last = turns[-1]
        if not last.text.strip():
            raise InputError("type a question")
        if len(last.text) > self.limits.max_question_chars:
            raise InputError(
                f"the question has {len(last.text)} characters; at most {self.limits.max_question_chars} are accepted"
            )
        if len(last.images) > self.limits.max_images_per_message:
            raise InputError(f"attach at most {self.limits.max_images_per_message} images to one message")
        context = self._context_length()
        budget = None if context is None else context - self.limits.max_new_tokens
        while True:
            inputs = self._encode_conversation(turns)
            length = inputs["input_ids"].shape[1]
            if budget is None or length <= budget:
                return inputs
            later_user_turns = [index for index, turn in enumerate(turns) if turn.role == "user" and index > 0]
            if not later_user_turns:
                raise InputError(
                    f"the question and its images take {length} tokens; the model reads at most {budget} "
                    "(its context, less room for the answer): ask a shorter question or attach fewer images"
                )
            turns = turns[later_user_turns[0] :]

    def _encode_conversation(self, turns: list[Turn]):
        conversation = [
            {
                "role": turn.role,
                "content": [{"type": "image"}] * len(turn.images) + [{"type": "text", "text": turn.text}],
            }
            for turn in turns
        ]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        images = [image for turn in turns for image in turn.images]
        inputs = self.processor(images=images or None, text=prompt, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def stream_answer(self, turns: list[Turn]) -> Iterator[str]:
        """The answer to the last user turn, growing token by token (each item is the whole answer so far).

        Closing the iterator early stops the generation at the next token.
        """
        inputs = self.chat_inputs(turns)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failures: list[BaseException] = []

        def generate() -> None:
            try:
                with self._slots:
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        max_new_tokens=self.limits.max_new_tokens,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                    )
            except BaseException as error:  # handed to the caller's thread, which re-raises it
                failures.append(error)
                streamer.end()

        worker = threading.Thread(target=generate, name="vargpt-answer", daemon=True)
        worker.start()
        answer = ""
        try:
            for piece in streamer:
                if piece:
                    answer += piece
                    yield answer
        finally:
            stop.set()
        worker.join()
        if failures:
            raise failures[0]
        if not answer:
            yield answer

    def answer(self, image: PIL.Image.Image, question: str) -> str:
        """One question about one image, answered in full."""
        answer = ""
        for answer in self.stream_answer([Turn("user", question, [image])]):
            pass
        return answer

    # ---- drawing ------------------------------------------------------------------------------------------------
    def check_drawing(
        self, prompt: str, seed: int, guidance_scale: float, top_k: int, top_p: float, num_images: int
    ) -> None:
        limits = self.limits
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("describe the picture to draw")
        if len(prompt) > limits.max_prompt_chars:
            raise InputError(f"the prompt has {len(prompt)} characters; at most {limits.max_prompt_chars} are accepted")
        checks = [
            ("seed", seed, 0, limits.max_seed, True),
            ("number of images", num_images, 1, limits.max_images_per_drawing, True),
            ("top-k", top_k, 0, self.codebook_size, True),
            ("guidance scale", guidance_scale, 0.0, limits.max_guidance_scale, False),
            ("top-p", top_p, 0.0, 1.0, False),
        ]
        for name, value, low, high, integral in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise InputError(f"the {name} must be a number, got {value!r}")
            if integral and value != int(value):
                raise InputError(f"the {name} must be a whole number, got {value}")
            if not low <= value <= high:
                raise InputError(f"the {name} must lie between {low} and {high}, got {value}")
        if top_p <= 0:
            raise InputError(f"the top-p must be above 0 (1 keeps every code), got {top_p}")

    def stream_drawing(
        self, prompt: str, seed: int, guidance_scale: float, top_k: int, top_p: float, num_images: int
    ) -> Iterator[DrawingProgress]:
        """Draw `num_images` pictures of `prompt`: one update per scale with the partial pictures, the last one also
        carrying the finished images. Same seed and settings, same pictures."""
        self.check_drawing(prompt, seed, guidance_scale, top_k, top_p, num_images)
        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        num_scales = self.num_scales
        finished = object()

        def on_scale(pipe, step: int, timestep: int, callback_kwargs: dict) -> dict:
            if stop.is_set():
                raise _Cancelled()
            updates.put(DrawingProgress(step + 1, num_scales, _side_by_side(callback_kwargs["image"])))
            return {}

        def draw() -> None:
            try:
                with self._slots:
                    output = self.pipe(
                        prompt,
                        num_images_per_prompt=int(num_images),
                        guidance_scale=float(guidance_scale),
                        top_k=int(top_k),
                        top_p=float(top_p),
                        generator=torch.Generator(device=self.device).manual_seed(int(seed)),
                        output_type="pil",
                        callback_on_step_end=on_scale,
                        callback_on_step_end_tensor_inputs=["image"],
                    )
                updates.put(output.images)
            except BaseException as error:  # handed to the caller's thread, which re-raises it
                updates.put(error)
            finally:
                updates.put(finished)

        worker = threading.Thread(target=draw, name="vargpt-draw", daemon=True)
        worker.start()
        last = None
        try:
            while (item := updates.get()) is not finished:
                if isinstance(item, _Cancelled):
                    continue
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, DrawingProgress):
                    last = item
                    yield item
                else:
                    yield DrawingProgress(num_scales, num_scales, last.preview if last else item[0], images=item)
        finally:
            stop.set()


def _side_by_side(images: torch.Tensor) -> PIL.Image.Image:
    """(B, 3, H, W) in [0, 1] -> one RGB picture of the B images in a row."""
    row = torch.cat(list(images.float().clamp(0, 1)), dim=-1)
    array = row.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(array)
