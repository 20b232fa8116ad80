"""Interleaved generation: a text answer that draws images where it emits `<|image_gen_start|>`."""

from __future__ import annotations

import torch

from .generation_vargpt import VargptInterleavedOutput


class VargptInterleavedGenerationMixin:
    """[`generate_interleaved`] for [`VargptForConditionalGeneration`]: text by transformers' `generate` (the next
    class in the model's MRO), drawings by [`generate_images`]."""

    @torch.no_grad()
    def generate_interleaved(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.FloatTensor | None = None,
        max_new_tokens: int = 256,
        max_images: int = 1,
        image_kwargs: dict | None = None,
        **text_kwargs,
    ) -> VargptInterleavedOutput:
        """Answer each prompt with text; whenever the answer emits `<|image_gen_start|>`, draw the image by
        next-scale prediction (`image_kwargs` go to [`generate_images`]), append its L pads and
        `<|image_gen_end|>`, and let the answer continue. Prompts are processed one at a time."""
        self.model.check_generation_tokens()
        start, end, pad = (
            self.config.image_gen_start_token_id,
            self.config.image_gen_end_token_id,
            self.config.image_gen_pad_token_id,
        )
        eos = self.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        image_kwargs = dict(image_kwargs or {})
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        image_slices = self._images_per_prompt(input_ids, pixel_values)
        all_sequences, all_images, all_tokens = [], [], []
        for row in range(input_ids.shape[0]):
            sequence = input_ids[row][attention_mask[row].bool()].unsqueeze(0)
            prompt_pixels = image_slices[row]
            drawn_tokens = []
            budget = max_new_tokens
            while budget > 0:
                extra = {}
                if drawn_tokens:
                    extra["image_tokens"] = torch.cat(drawn_tokens)
                if prompt_pixels is not None:
                    extra["pixel_values"] = prompt_pixels
                before = sequence.shape[1]
                stop_ids = eos + ([start] if len(drawn_tokens) < max_images else [])
                sequence = super().generate(
                    sequence, max_new_tokens=budget, eos_token_id=stop_ids, **extra, **text_kwargs
                )
                budget -= sequence.shape[1] - before
                if sequence[0, -1].item() != start or len(drawn_tokens) >= max_images:
                    break
                drawn = self.generate_images(sequence, pixel_values=prompt_pixels, **image_kwargs)
                drawn_tokens.append(drawn.image_tokens)
                block = torch.tensor([pad] * self.config.num_image_gen_tokens + [end], device=sequence.device)
                sequence = torch.cat([sequence, block.unsqueeze(0)], dim=1)
            all_sequences.append(sequence[0])
            tokens = torch.cat(drawn_tokens) if drawn_tokens else input_ids.new_zeros(0, self.config.num_image_gen_tokens)
            all_tokens.append(tokens)
            all_images.append(self.decode_image_tokens(tokens) if drawn_tokens else torch.zeros(0))
        return VargptInterleavedOutput(sequences=all_sequences, images=all_images, image_tokens=all_tokens)

    def _images_per_prompt(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None) -> list:
        """Split a batch's `pixel_values` by how many images each prompt's `<image>` tokens stand for."""
        if pixel_values is None:
            return [None] * input_ids.shape[0]
        per_image = self.config.image_seq_length
        counts = ((input_ids == self.config.image_token_index).sum(dim=1) // max(per_image, 1)).tolist()
        if sum(counts) != pixel_values.shape[0]:
            raise ValueError(
                f"{pixel_values.shape[0]} images were given but the prompts' <image> tokens stand for {sum(counts)}"
            )
        slices, start = [], 0
        for count in counts:
            slices.append(pixel_values[start : start + count] if count else None)
            start += count
        return slices
