"""Next-scale sampling: argument checks, top-k / top-p code sampling and classifier-free guidance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
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


@dataclass(frozen=True)
class CodeSampler:
    """How codes are drawn at every scale. `do_sample=False` or `top_k=1` is greedy (arg-max)."""

    do_sample: bool = True
    top_k: int = 900
    top_p: float = 0.95
    temperature: float = 1.0

    def __post_init__(self):
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.top_k == 1

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.LongTensor:
        """logits B×l×V → codes B×l."""
        if self.greedy:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        vocab = logits.shape[-1]
        if 0 < self.top_k < vocab:
            kth_best = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth_best, -math.inf)
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a code when the codes ranked above it already cover top_p; the best one always stays
            drop_sorted = probs.cumsum(dim=-1) - probs >= self.top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
        probs = logits.softmax(dim=-1).view(-1, vocab)
        return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


def check_guidance_scale(guidance_scale: float) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (<= 1 disables guidance), got {guidance_scale}")
    return float(guidance_scale)


def guided_logits(logits: torch.Tensor, guidance_scale: float, scale_index: int, num_scales: int) -> torch.Tensor:
    """Classifier-free guidance ramped over scales, as VAR does.

    logits: 2B×l×V, conditional rows first, unconditional rows second → B×l×V. At scale k of K the strength is
    t = (guidance_scale - 1) · k / (K - 1), and the result is (1 + t)·cond − t·uncond, so the last scale gets the full
    `guidance_scale` (VAR's `cfg` is `guidance_scale - 1`).
    """
    cond, uncond = logits.chunk(2, dim=0)
    strength = (guidance_scale - 1.0) * scale_index / (num_scales - 1)
    return cond + strength * (cond - uncond)


__all__ = ["VargptImageGenerationOutput", "VargptInterleavedOutput", "CodeSampler", "guided_logits"]
