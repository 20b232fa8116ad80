"""Output of [`VargptPipeline`]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput


@dataclass
class VargptPipelineOutput(ImagePipelineOutput):
    """
    Output of [`VargptPipeline`]: diffusers' [`ImagePipelineOutput`] plus the code indices the images decode from.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            `batch_size * num_images_per_prompt` images, those of one prompt consecutive: PIL images, a float array
            of shape `(B, H, W, 3)` in [0, 1] (`output_type="np"`) or a float tensor of shape `(B, 3, H, W)` in
            [0, 1] (`output_type="pt"`).
        image_tokens (`torch.LongTensor` of shape `(B, L)`):
            Code indices of all scales, small to large (L = Σ s² over `patch_nums`);
            `pipe.model.decode_image_tokens(image_tokens)` redraws the images.
    """

    image_tokens: torch.LongTensor | None = None


__all__ = ["VargptPipelineOutput"]
