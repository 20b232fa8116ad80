"""Next-scale sampling: outputs, the image sampling defaults, and the logits processors that draw codes.

The processors follow transformers' `LogitsProcessor` interface (`__call__(input_ids, scores) -> scores`); the
loop that calls them scale by scale is [`VargptImageGenerationMixin`] (`generation_image_vargpt.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import ModelOutput


@dataclass
class VargptImageGenerationOutput(ModelOutput):
    r"""
    Output of [`VargptForConditionalGeneration.generate_images`].

    Args:
        images (`torch.FloatTensor` of shape `(batch_size * num_images_per_prompt, 3, H, W)`):
            Generated images in [0, 1]; images of one prompt are consecutive.
        image_tokens (`torch.LongTensor` of shape `(batch_size * num_images_per_prompt, L)`):
            Code indices of all scales, small to large (L = Σ s² over `patch_nums`).
    """

    images: torch.FloatTensor | None = None
    image_tokens: torch.LongTensor | None = None


@dataclass
class VargptInterleavedOutput(ModelOutput):
    r"""
    Output of `generate(..., generation_mode="interleaved")`: text whose answer may draw images.

    Args:
        sequences (`list[torch.LongTensor]`): per prompt, the prompt plus the answer; each drawn image appears as
            `<|image_gen_start|>`, L × `<|image_gen_pad|>`, `<|image_gen_end|>`.
        images (`list[torch.FloatTensor]`): per prompt, the drawn images (N×3×H×W in [0, 1], N may be 0).
        image_tokens (`list[torch.LongTensor]`): per prompt, their code indices (N×L).
    """

    sequences: list[torch.LongTensor] | None = None
    images: list[torch.FloatTensor] | None = None
    image_tokens: list[torch.LongTensor] | None = None


# The released sampling of image codes (VAR's top-k / top-p); a model's `generation_config.image_generation`
# (saved in generation_config.json) overrides them, explicit `generate_images` arguments override both.
# `negative_prompt_ids`: the token ids of a prompt to draw, as the processor writes it (`generation_mode="image"`),
# that guidance's unconditional rows read when no negative prompt is given (None: they read the prompt itself, as the
# released model does); a model trained to draw from a generic request sets it to that request.
IMAGE_GENERATION_DEFAULTS = {"do_sample": True, "top_k": 900, "top_p": 0.95, "temperature": 1.0, "guidance_scale": 1.0,
                             "negative_prompt_ids": None}


def check_image_generation_config(generation_config: GenerationConfig) -> None:
    """Clear errors for image sampling settings that cannot work (before any forward pass)."""
    top_k, top_p = generation_config.top_k, generation_config.top_p
    temperature, guidance_scale = generation_config.temperature, generation_config.guidance_scale
    if not isinstance(generation_config.do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {generation_config.do_sample!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (<= 1 disables guidance), got {guidance_scale}")
    negative_prompt_ids = getattr(generation_config, "negative_prompt_ids", None)
    if negative_prompt_ids is not None and (
        not isinstance(negative_prompt_ids, (list, tuple))
        or not negative_prompt_ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in negative_prompt_ids)
    ):
        raise ValueError(
            "negative_prompt_ids must be None or a non-empty list of token ids (integers >= 0), "
            f"got {negative_prompt_ids!r}"
        )


class ScaleRampedGuidanceLogitsProcessor(LogitsProcessor):
    r"""Classifier-free guidance ramped over scales, as VAR does (a [`LogitsProcessor`] like transformers'
    `ClassifierFreeGuidanceLogitsProcessor`, which Janus uses, but with VAR's ramp).

    `scores` hold the conditional rows first and the unconditional rows second (2N×V, N = batch × positions of the
    scale) and become N×V. The scale is read from `input_ids` (B×l, the codes drawn so far, as transformers passes
    the tokens so far): at scale k of K the strength is t = (guidance_scale - 1) · k / (K - 1) and the result is
    (1 + t)·cond − t·uncond, so the last scale gets the full `guidance_scale` (VAR's `cfg` is `guidance_scale - 1`).
    `guidance_scale` is read at every call, so it may be changed between scales.
    """

    def __init__(self, guidance_scale: float, scale_sizes: list[int]):
        self.guidance_scale = float(guidance_scale)
        self.num_scales = len(scale_sizes)
        offsets = [0]
        for side in scale_sizes[:-1]:
            offsets.append(offsets[-1] + side * side)
        self.scale_of_offset = {offset: index for index, offset in enumerate(offsets)}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scale_index = self.scale_of_offset.get(input_ids.shape[-1])
        if scale_index is None:
            raise ValueError(
                f"{input_ids.shape[-1]} codes so far is not the start of a scale "
                f"(starts: {sorted(self.scale_of_offset)})"
            )
        cond, uncond = scores.chunk(2, dim=0)
        # a scale lowered to <= 1 between scales (a guidance cut-off callback) turns guidance off
        strength = max(self.guidance_scale - 1.0, 0.0) * scale_index / (self.num_scales - 1)
        return cond + strength * (cond - uncond)


class CodeSampler:
    """Draws the codes of one scale from its logits, with logits processors built once per generation.

    Guidance runs in the model's dtype (as VAR's loop does), then the scores go to float32 for any user
    `logits_processor` and the warpers. The warpers are transformers' own, because they compute exactly what VAR's
    `sample_with_top_k_top_p_` computes: `TemperatureLogitsWarper` divides, `TopKLogitsWarper` keeps the scores
    not below the k-th best (ties kept) and `TopPLogitsWarper` sorts ascending and drops the codes whose cumulative
    probability stays `<= 1 - top_p`, always keeping the best one (VAR's own test). `do_sample=False` or `top_k=1`
    is the arg-max.
    """

    def __init__(
        self,
        generation_config: GenerationConfig,
        scale_sizes: list[int],
        logits_processor: LogitsProcessorList | None = None,
    ):
        check_image_generation_config(generation_config)
        top_k, top_p, temperature = generation_config.top_k, generation_config.top_p, generation_config.temperature
        self.guidance = (
            ScaleRampedGuidanceLogitsProcessor(generation_config.guidance_scale, scale_sizes)
            if generation_config.guidance_scale > 1.0
            else None
        )
        self.greedy = not generation_config.do_sample or top_k == 1
        self.processors = LogitsProcessorList(logits_processor or [])
        if not self.greedy:
            if temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(temperature))
            if top_k > 0:
                self.processors.append(TopKLogitsWarper(top_k))
            if top_p < 1.0:
                self.processors.append(TopPLogitsWarper(top_p))

    @property
    def guided(self) -> bool:
        return self.guidance is not None

    def __call__(
        self,
        logits: torch.Tensor,
        codes_so_far: torch.LongTensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.LongTensor:
        """logits B×l×V (2B×l×V with guidance, conditional rows first) and the codes so far (B×l₀) →
        codes B×l. `generator` is one generator for all images or a list of B, one per image."""
        batch, length, vocab = logits.shape
        scores = logits.reshape(batch * length, vocab)  # every position of the scale is one row
        if self.guidance is not None:
            scores = self.guidance(codes_so_far, scores)
            batch //= 2
        if self.processors:
            scores = scores.float()
            for processor in self.processors:  # called directly: LogitsProcessorList inspects signatures per call
                scores = processor(codes_so_far, scores)
        if self.greedy:
            return scores.argmax(dim=-1).view(batch, length)
        probs = scores.float().softmax(dim=-1)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(f"{len(generator)} generators for {batch} images: pass one per image")
            per_image = probs.view(batch, length, vocab)
            codes = [torch.multinomial(rows, 1, generator=gen) for rows, gen in zip(per_image, generator)]
            return torch.cat(codes).view(batch, length)
        return torch.multinomial(probs, 1, generator=generator).view(batch, length)


__all__ = [
    "VargptImageGenerationOutput",
    "VargptInterleavedOutput",
    "IMAGE_GENERATION_DEFAULTS",
    "CodeSampler",
    "ScaleRampedGuidanceLogitsProcessor",
    "check_image_generation_config",
]
