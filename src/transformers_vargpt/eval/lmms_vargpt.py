"""VARGPT as an lmms-eval model: `lmms-eval --model vargpt --model_args pretrained=DIR_OR_HUB_ID,dtype=...,device=...`.

lmms-eval finds the class through this package's `lmms_eval.models` entry point (see `transformers_vargpt.eval`).
It is a "simple" lmms-eval model: a task hands it its context string, its generation arguments and a `doc_to_visual`
that gives the document's PIL images, as LLaVA-1.5's own evaluations do. Prompts are the processor's chat template
(one user turn: the images, then the context), batches are left-padded for generation and right-padded for scoring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm
from transformers import AutoProcessor, StoppingCriteria, StoppingCriteriaList

import transformers_vargpt

from ..modeling_vargpt import VargptForConditionalGeneration

# generation arguments of lmms-eval tasks that mean the same in `generate`; others are ignored with a warning
GENERATION_KEYS = (
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams",
    "repetition_penalty", "length_penalty",
)
DEFAULT_MAX_NEW_TOKENS = 256


def _parse_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be 'auto' or a torch dtype name such as 'bfloat16', got {dtype!r}")
    return resolved


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def truncate_at_stop_sequences(text: str, stop_sequences: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of `stop_sequences`, as lmms-eval's `until` asks."""
    cut = min((text.find(stop) for stop in stop_sequences if stop and stop in text), default=len(text))
    return text[:cut]


class StopSequenceCriteria(StoppingCriteria):
    """Stops each row once its decoded answer contains one of the stop strings.

    transformers' `stop_strings` needs a tokenizer whose vocabulary it can map back to text piece by piece (it fails
    on word-level vocabularies); decoding the answer so far works with any tokenizer.
    """

    def __init__(self, stop_sequences: Sequence[str], tokenizer, prompt_length: int) -> None:
        self.stop_sequences = list(stop_sequences)
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        answers = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in answer for stop in self.stop_sequences) for answer in answers]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class VargptLmms(lmms):
    """lmms-eval model for VARGPT checkpoints (the released `VARGPT-family/VARGPT_LLaVA-v1`, fine-tunes, the bundled one).

    Args (given as `--model_args key=value,...`):
        pretrained: a model directory or Hub id; defaults to the package's bundled small model where one ships.
        dtype: "auto" (the checkpoint's), "bfloat16", "float16" or "float32".
        device: torch device, e.g. "cuda", "cuda:1", "cpu" (default: "cuda" where available). Ignored with
            `device_map`, and under `accelerate launch` with several processes (each takes its own GPU).
        device_map: passed to `from_pretrained` (e.g. "auto" to spread a large model over the visible GPUs).
        batch_size: requests per forward pass (`--batch_size`); generation batches share generation arguments.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2".
        trust_remote_code, revision: as for `from_pretrained`.
        max_batch_size: accepted because lmms-eval passes `--max_batch_size`; batch sizes here are fixed.
        model, processor (Python only): an already loaded model and its processor, used where they are.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | None = None,
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        trust_remote_code: bool | str = False,
        revision: str = "main",
        max_batch_size: int | None = None,
        model: VargptForConditionalGeneration | None = None,
        processor: Any = None,
    ) -> None:
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size='auto' is not supported by the vargpt model; pass a number (e.g. 8)")
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if (model is None) != (processor is None):
            raise ValueError("pass both `model` and `processor` (already loaded), or neither and `pretrained`")

        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1 and device_map is None:
            # data parallel: lmms-eval shards the documents by rank; each process holds the whole model
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.accelerator = accelerator

        keep_placement = model is not None and device is None and accelerator.num_processes == 1
        if model is None:
            pretrained = pretrained or getattr(transformers_vargpt, "BUNDLED_MODEL", None)
            if pretrained is None:
                raise ValueError(
                    "no model given and this version of transformers-vargpt ships no bundled model: pass "
                    "--model_args pretrained=DIR_OR_HUB_ID (e.g. VARGPT-family/VARGPT_LLaVA-v1)"
                )
            trust_remote_code = _as_bool(trust_remote_code, "trust_remote_code")
            load_kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
            model = VargptForConditionalGeneration.from_pretrained(
                pretrained,
                dtype=_parse_dtype(dtype),
                device_map=device_map,
                attn_implementation=attn_implementation,
                **load_kwargs,
            )
            processor = AutoProcessor.from_pretrained(pretrained, **load_kwargs)
        if device_map is None and not keep_placement:
            model = model.to(self._device)
        else:
            self._device = model.device  # inputs go where the model (or its first shard) is
        self.pretrained = pretrained
        self._model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self._warned_keys: set[str] = set()

    # ---- what lmms-eval reads ---------------------------------------------------------------------------------------
    @property
    def model(self) -> VargptForConditionalGeneration:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def chat_template(self) -> str | None:
        return self.processor.chat_template

    # ---- prompts ------------------------------------------------------------------------------------------------------
    def build_prompt(self, context: str, num_images: int) -> str:
        """The chat-template prompt of one user turn: `num_images` images, then `context`, then the answer cue.

        A context that already places its images (`<image>` in the text) keeps them where it put them.
        """
        placed = context.count(self.image_token)
        if placed:
            if placed != num_images:
                raise ValueError(
                    f"the context places {placed} {self.image_token} but the document has {num_images} image(s)"
                )
            content = [{"type": "text", "text": context}]
        else:
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": context}]
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def document_images(self, doc_to_visual: Callable | None, doc_id: int, task: str, split: str) -> list:
        """The RGB PIL images of one document (lmms-eval's `doc_to_visual`); VARGPT reads images only."""
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [] if visuals is None else list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        for visual in visuals:
            if not isinstance(visual, PIL.Image.Image):
                raise TypeError(
                    f"VARGPT reads images only; task {task!r} gave a {type(visual).__name__} "
                    "(videos and audio are not supported)"
                )
        return [visual.convert("RGB") for visual in visuals]

    def _inputs(self, prompts: list[str], images: list[PIL.Image.Image], padding_side: str) -> dict:
        inputs = self.processor(
            images=images or None, text=prompts, padding_side=padding_side, return_tensors="pt"
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    # ---- generation ---------------------------------------------------------------------------------------------------
    def generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """lmms-eval generation arguments → (`generate` keyword arguments, stop sequences).

        temperature 0 (or do_sample false) is greedy decoding; `until` stops the answer at the first of its strings.
        """
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
            raise ValueError(f"generation argument `until` must be a string or a list of strings, got {until!r}")
        settings = {key: gen_kwargs[key] for key in GENERATION_KEYS if gen_kwargs.get(key) is not None}
        ignored = sorted(
            key for key, value in gen_kwargs.items()
            if key not in GENERATION_KEYS and value is not None and key not in self._warned_keys
        )
        if ignored:
            warnings.warn(f"vargpt ignores the generation arguments {ignored} (not `generate` arguments)", stacklevel=2)
            self._warned_keys.update(ignored)
        settings["max_new_tokens"] = int(settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        temperature = settings.pop("temperature", None)
        do_sample = settings.pop("do_sample", None)
        if do_sample is None:
            do_sample = temperature is not None and float(temperature) > 0
        else:  # lmms-eval tasks write temperature 0 for greedy decoding, whatever do_sample says
            do_sample = _as_bool(do_sample, "do_sample") and (temperature is None or float(temperature) > 0)
        settings["do_sample"] = do_sample
        if do_sample and temperature is not None:
            settings["temperature"] = float(temperature)
        if not do_sample:
            settings.pop("top_p", None)
            settings.pop("top_k", None)
        elif settings.get("top_p") in (0, 0.0):  # lmms-eval's "no nucleus filtering"
            settings.pop("top_p")
        stops = [stop for stop in until if stop]
        return settings, stops

    @torch.inference_mode()
    def generate_batch(self, contexts: list[str], images: list[list], gen_kwargs: dict) -> list[str]:
        """Answers to several contexts (each with its images), decoded, cut at the stop sequences."""
        settings, stops = self.generation_settings(gen_kwargs)
        prompts = [self.build_prompt(context, len(doc_images)) for context, doc_images in zip(contexts, images)]
        inputs = self._inputs(prompts, [image for doc_images in images for image in doc_images], "left")
        if stops:
            prompt_length = inputs["input_ids"].shape[1]
            settings["stopping_criteria"] = StoppingCriteriaList(
                [StopSequenceCriteria(stops, self.tokenizer, prompt_length)]
            )
        pad_token_id = self.model.generation_config.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.pad_token_id
        output = self.model.generate(**inputs, pad_token_id=pad_token_id, **settings)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [truncate_at_stop_sequences(text, stops) for text in texts]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Generation requests: `args = (context, generation_kwargs, doc_to_visual, doc_id, task, split)`."""
        answers = []

        def longest_first(args):
            return -len(self.tokenizer(args[0])["input_ids"]), args[0]

        # requests with equal generation arguments share batches, longest first; answers return in request order
        collator = lmms_utils.Collator([request.args for request in requests], longest_first, grouping=True)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="vargpt generate_until")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            images = [self.document_images(*args) for args in zip(doc_to_visuals, doc_ids, tasks, splits)]
            texts = self.generate_batch(list(contexts), images, all_gen_kwargs[0])
            for context, gen_kwargs, text in zip(contexts, all_gen_kwargs, texts):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            answers += texts
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(answers)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """Multi-round requests: `args = (context, generation_kwargs, doc_to_visual, doc_to_text, doc_id, task,
        split)`. Round 0 answers the context; then the task's `doc_to_text(doc, previous_output=, round_idx=,
        previous_round_info=)` returns (images, context, done, round results, round info) for the next round,
        until it says done. The answer of a request is its round results."""
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="vargpt generate_until_multi_round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            images = self.document_images(doc_to_visual, doc_id, task, split)
            rounds, round_info, round_index = [], None, 0
            while True:
                if round_index > 0:
                    images, context, done, rounds, round_info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_index, previous_round_info=round_info
                    )
                    rounds = list(rounds)
                    if done:
                        break
                    images = [image.convert("RGB") for image in (images or [])]
                rounds.append(self.generate_batch([context], [images], gen_kwargs)[0])
                round_index += 1
            answers.append(tuple(rounds))
        return answers

    # ---- scoring ------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its context (and whether greedy decoding would give it).

        `args = (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)`, or `(context,
        continuation)` without images. The continuation is scored after the chat template's answer cue.
        """
        scored = []
        for request in requests:
            args = request.args
            context, target = args[0], args[1]
            images = self.document_images(*args[2:6]) if len(args) >= 6 else []
            continuation = target if isinstance(target, str) else target(self.task_dict[args[4]][args[5]][args[3]])
            if not isinstance(continuation, str) or not continuation:
                raise ValueError(f"a log-likelihood continuation must be a non-empty string, got {continuation!r}")
            scored.append((self.build_prompt(context, len(images)), continuation, images))

        def longest_first(item):
            return -len(self.tokenizer(item[0] + item[1])["input_ids"]), item[0]

        results = []
        collator = lmms_utils.Collator(scored, longest_first)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="vargpt loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            results += self.score_batch(chunk)
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(results)

    def score_batch(self, items: Sequence[tuple[str, str, list]]) -> list[tuple[float, bool]]:
        """(prompt, continuation, images) → (sum of the continuation tokens' log-probabilities, all greedy)."""
        images = [image for _, _, doc_images in items for image in doc_images]
        # right padding: every real token keeps the positions it has alone, so a batch scores as one-by-one
        full = self._inputs([prompt + continuation for prompt, continuation, _ in items], images, "right")
        prompt_lengths = self.processor(
            images=images or None, text=[prompt for prompt, _, _ in items], padding_side="right"
        )["attention_mask"]
        logits = self.model(**full).logits
        results = []
        for row, prompt_mask in enumerate(prompt_lengths):
            start, end = sum(prompt_mask), int(full["attention_mask"][row].sum())
            if end <= start:
                raise ValueError(f"the continuation {items[row][1]!r} adds no token after its prompt")
            targets = full["input_ids"][row, start:end]
            # the logits at position t predict token t + 1
            log_probs = torch.log_softmax(logits[row, start - 1 : end - 1].float(), dim=-1)
            token_log_probs = log_probs.gather(-1, targets[:, None]).squeeze(-1)
            greedy = bool((log_probs.argmax(dim=-1) == targets).all())
            results.append((float(token_log_probs.sum()), greedy))
        return results


__all__ = ["VargptLmms", "truncate_at_stop_sequences"]
