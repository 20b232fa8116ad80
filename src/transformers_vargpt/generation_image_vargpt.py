"""Next-scale image generation, mixed into [`VargptForConditionalGeneration`].

One loop, three parts: `prepare_next_scale_state` (prompt prefill, then the rows for each image and, with
guidance, the unconditional rows), `generate_scale` (one scale: LLM ⇄ VAR → code logits → codes → f̂ and the
next scale's input, via `MultiScaleQuantizer.add_scale`), and `generate_images`, which runs the scales. The sampling
settings come from `model.generation_config` (see `image_generation_config`), as `generate`'s do.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationConfig
from transformers.generation import LogitsProcessorList
from transformers.models.llama.modeling_llama import LlamaModel

from . import cpu_matmul
from .cpu_matmul import column_major_weights
from .generation_vargpt import IMAGE_GENERATION_DEFAULTS, CodeSampler, VargptImageGenerationOutput
from .modeling_vargpt_var import ScaleKVCache
from .validation_vargpt import (
    check_attention_mask,
    check_finite_output,
    check_generator,
    check_image_tokens,
    check_placeholders,
    check_token_ids,
)

# transformers renamed the cache argument `past_key_values` → `cache` during 5.x; speak whichever is installed.
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@dataclass
class NextScaleState:
    r"""Everything one next-scale generation carries from scale to scale (R rows: B·n images, twice with guidance).

    Args:
        llm_cache (`DynamicCache`): the LLM's KV cache (prompt, then the scales so far), R rows.
        var_cache ([`ScaleKVCache`]): the VAR blocks' KV cache and AdaLN modulations, R rows.
        attention_mask (`torch.LongTensor` of shape `(R, T + l)`): prompt padding and the scales so far.
        next_position (`torch.LongTensor` of shape `(R, 1)`): position id of the next image token.
        condition (`torch.FloatTensor` of shape `(R, var_embed_dim)`): class-embedding rows (unconditional last).
        scale_tokens (`torch.FloatTensor` of shape `(R, s², var_embed_dim)`): the next scale's VAR input.
        f_hat (`torch.FloatTensor` of shape `(B·n, Cvae, S, S)`): the summed code features so far.
        image_tokens (`torch.LongTensor` of shape `(B·n, L)`): the codes, filled scale by scale.
        scale_index (`int`): the next scale to draw.
        llm_dtype (`torch.dtype`): dtype of the LLM's input embeddings.
        num_codes_so_far (`int`): how many columns of `image_tokens` are drawn.
    """

    llm_cache: DynamicCache
    var_cache: ScaleKVCache
    attention_mask: torch.Tensor
    next_position: torch.LongTensor
    condition: torch.Tensor
    scale_tokens: torch.Tensor
    f_hat: torch.Tensor
    image_tokens: torch.LongTensor
    scale_index: int
    llm_dtype: torch.dtype
    num_codes_so_far: int = 0

    @property
    def codes_so_far(self) -> torch.LongTensor:
        """The codes of the scales drawn so far (B·n×l), a view of `image_tokens`."""
        return self.image_tokens[:, : self.num_codes_so_far]


class VargptImageGenerationMixin:
    """Next-scale image generation, for a VARGPT model with a `model` body ([`VargptModel`]) and a
    `generation_config`."""

    @property
    def execution_device(self) -> torch.device:
        """Where generation computes: the weights' device, or under accelerate's offload hooks (whose weights sit on
        the CPU or the meta device between calls) the hooks' execution device, as diffusers pipelines find it."""
        for module in self.modules():
            device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device)
        return self.lm_head.weight.device

    def image_generation_config(
        self, generation_config: GenerationConfig | None = None, **kwargs
    ) -> GenerationConfig:
        """The sampling settings of image generation, as a [`GenerationConfig`] whose `do_sample`, `top_k`, `top_p`,
        `temperature` and `guidance_scale` are the image settings.

        Without `generation_config`: the released defaults (`IMAGE_GENERATION_DEFAULTS`), overridden by
        `self.generation_config.image_generation` (a dict saved in `generation_config.json`). A given
        `generation_config` is used as it is. Keyword arguments that are not `None` override either, as in `generate`.
        """
        if generation_config is None:
            stored = getattr(self.generation_config, "image_generation", None) or {}
            unknown = set(stored) - set(IMAGE_GENERATION_DEFAULTS)
            if unknown:
                raise ValueError(
                    f"generation_config.image_generation has unknown keys {sorted(unknown)}; "
                    f"expected some of {sorted(IMAGE_GENERATION_DEFAULTS)}"
                )
            generation_config = GenerationConfig()
            for name, value in {**IMAGE_GENERATION_DEFAULTS, **stored}.items():
                setattr(generation_config, name, value)
        else:
            generation_config = copy.deepcopy(generation_config)
        overrides = {name: value for name, value in kwargs.items() if value is not None}
        unknown = set(overrides) - set(IMAGE_GENERATION_DEFAULTS)
        if unknown:
            raise TypeError(
                f"unknown image generation arguments {sorted(unknown)}; "
                f"expected some of {sorted(IMAGE_GENERATION_DEFAULTS)}"
            )
        for name, value in overrides.items():
            setattr(generation_config, name, value)
        return generation_config

    def default_negative_prompt(
        self, generation_config: GenerationConfig, num_prompts: int, device: torch.device | None = None
    ) -> tuple[torch.LongTensor, torch.Tensor] | None:
        """The generation config's `negative_prompt_ids` as one negative prompt per prompt: (ids, attention mask),
        each `num_prompts`×T'; None when the config has none (guidance then reads the prompts themselves)."""
        ids = getattr(generation_config, "negative_prompt_ids", None)
        if ids is None:
            return None
        vocab_size = self.config.text_config.vocab_size
        if any(i >= vocab_size for i in ids):
            raise ValueError(
                f"negative_prompt_ids {list(ids)} hold ids outside the text vocabulary (size {vocab_size}): "
                "write them with this model's processor"
            )
        device = self.execution_device if device is None else device
        negative_ids = torch.tensor([list(ids)], dtype=torch.long, device=device).expand(num_prompts, -1)
        return negative_ids, torch.ones_like(negative_ids)

    # ---- prefill and guidance expansion -------------------------------------------------------------------------
    def _prompts_ending_with_start(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """Append `<|image_gen_start|>` to the prompts that lack it, keeping the batch left-padded."""
        start = self.config.image_gen_start_token_id
        has_start = input_ids[:, -1] == start
        if bool(has_start.all()):
            return input_ids, attention_mask
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("prompts for image generation must be left-padded (attention_mask ends with 0s)")
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        grown_ids = torch.cat([input_ids, torch.full_like(input_ids[:, :1], start)], dim=1)
        grown_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        # rows that already ended with the start token: shift right by one instead (one more left pad)
        shifted_ids = torch.cat([torch.full_like(input_ids[:, :1], pad), input_ids], dim=1)
        shifted_mask = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask], dim=1)
        ids = torch.where(has_start[:, None], shifted_ids, grown_ids)
        mask = torch.where(has_start[:, None], shifted_mask, grown_mask)
        return ids, mask

    def _attention_mask_from_pads(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The mask of prompts given without one: padding is read from `pad_token_id` (B×T → B×T). Pads must sit
        at one end of each row, as a tokenizer puts them; anywhere else the mask must be passed."""
        pad = self.config.pad_token_id
        if pad is None or not bool((input_ids == pad).any()):
            return torch.ones_like(input_ids)
        mask = (input_ids != pad).long()
        # a row's pads are one run at the left or at the right when its mask changes value at most once
        changes = (mask[:, 1:] != mask[:, :-1]).sum(dim=1)
        if bool((changes > 1).any()):
            raise ValueError(
                f"input_ids hold pad tokens (pad_token_id={pad}) inside the prompts: pass the attention_mask "
                "(1 for real tokens, 0 for padding)"
            )
        return mask

    def _llm_step(self, inputs_embeds, attention_mask, position_ids, cache) -> torch.Tensor:
        outputs = self.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{CACHE_ARG: cache},
        )
        return outputs.last_hidden_state

    def prompt_embeddings(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM input embeddings (B×T×H) and attention mask (B×T) of left-padded text-to-image prompts ending with
        `<|image_gen_start|>`: from `input_ids` (the token is appended where missing, `pixel_values` fill the
        `<image>` tokens), or precomputed `inputs_embeds`, which must already end with that token's embedding."""
        device = self.execution_device if device is None else device
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass the prompts once: as input_ids or as inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[1] == 0:
                raise ValueError(f"inputs_embeds must be a non-empty B x T x H tensor, got {tuple(inputs_embeds.shape)}")
            inputs_embeds = inputs_embeds.to(device)
            attention_mask = (
                torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device)
                if attention_mask is None
                else attention_mask.to(device)
            )
            start_id = torch.tensor(self.config.image_gen_start_token_id, device=device)
            start = self.get_input_embeddings()(start_id).to(inputs_embeds.dtype)
            if not bool((inputs_embeds[:, -1] == start).all()):
                raise ValueError("prompt embeddings must end with the <|image_gen_start|> embedding (see encode_prompt)")
            if pixel_values is not None:
                inputs_embeds, _ = self.model.merge_image_features(None, inputs_embeds, pixel_values)
            return inputs_embeds, attention_mask
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty B x T tensor, got shape {tuple(input_ids.shape)}")
        check_token_ids(input_ids, self.config.text_config.vocab_size)
        check_attention_mask(attention_mask, input_ids)
        # (earlier drawn blocks of an interleaved answer may hold <|image_gen_pad|> tokens: only <image> is checked)
        check_placeholders(input_ids, self.config.image_token_index, None, pixel_values is not None, False)
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = self._attention_mask_from_pads(input_ids)
        attention_mask = attention_mask.to(device)
        input_ids, attention_mask = self._prompts_ending_with_start(input_ids, attention_mask)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            inputs_embeds, _ = self.model.merge_image_features(input_ids, inputs_embeds, pixel_values)
        return inputs_embeds, attention_mask

    def layers_run_per_scale(self) -> list[torch.nn.Module]:
        """The modules a drawing runs at every scale: the LLM, both generation projectors and VAR."""
        body = self.model
        return [body.language_model, body.gen_input_projector, body.gen_output_projector, body.scale_decoder]

    def prepare_for_drawing(self, device: torch.device | None = None) -> int:
        """Store the weights of `layers_run_per_scale` the way drawings compute fastest on this CPU: column-major on
        AVX-512 CPUs (`cpu_matmul.column_major_drawing_weights`), once; every drawing calls this first.

        Call it before one model serves several threads: the LLM's weights are re-stored too, and text generation
        in another thread must not be computing with them while that happens. Returns how many layers changed (0
        on accelerators, with the switch off, or when done before). `device`: where drawing runs (default: the
        model's execution device)."""
        device = self.execution_device if device is None else device
        if not (cpu_matmul.column_major_drawing_weights and device.type == "cpu"):
            return 0
        return column_major_weights(self.layers_run_per_scale())  # thin products at the first scales (cpu_matmul)

    def prepare_next_scale_state(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        num_images_per_prompt: int = 1,
        guided: bool = False,
        *,
        inputs_embeds: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        negative_inputs_embeds: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> NextScaleState:
        """Read the prompts (B×T, left-padded; or their embeddings B×T×H) once, then copy their cache to one row per
        image and, when `guided`, once more for the unconditional rows, which follow the conditional ones. The
        unconditional rows read the same prompt, or the negative prompts when given (B of them, ids or
        embeddings), with the unconditional class row. `device` is where generation runs (default: the LM head's;
        pipelines with offloaded weights pass their execution device). Returns the state before the first scale."""
        self.model.check_generation_tokens()
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or (
            num_images_per_prompt < 1
        ):
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        device = self.execution_device if device is None else device
        self.prepare_for_drawing(device)
        inputs_embeds, attention_mask = self.prompt_embeddings(
            input_ids, attention_mask, pixel_values, inputs_embeds, device
        )
        num_prompts = inputs_embeds.shape[0]
        negative = negative_input_ids is not None or negative_inputs_embeds is not None
        if negative:
            if not guided:
                raise ValueError("negative prompts steer classifier-free guidance: they need guidance_scale > 1")
            negative_embeds, negative_mask = self.prompt_embeddings(
                negative_input_ids, negative_attention_mask, None, negative_inputs_embeds, device
            )
            if negative_embeds.shape[0] != num_prompts:
                raise ValueError(f"{negative_embeds.shape[0]} negative prompts for {num_prompts} prompts")
            inputs_embeds, attention_mask = _left_padded_concat(
                (inputs_embeds, attention_mask), (negative_embeds.to(inputs_embeds.dtype), negative_mask)
            )
        max_positions = getattr(self.config.text_config, "max_position_embeddings", None)
        needed = inputs_embeds.shape[1] + self.config.num_image_gen_tokens + 1
        if max_positions is not None and needed > max_positions:
            raise ValueError(
                f"prompt of {inputs_embeds.shape[1]} tokens plus {self.config.num_image_gen_tokens} image tokens "
                f"exceeds the model's max_position_embeddings={max_positions}"
            )

        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        llm_cache = DynamicCache(config=self.config.text_config)
        self._llm_step(inputs_embeds, attention_mask, position_ids, llm_cache)

        prompt_of_row = torch.arange(num_prompts, device=device).repeat_interleave(num_images_per_prompt)
        if guided:  # unconditional rows: the negative prompts (rows B..2B-1 of the prefill) or the prompts again
            prompt_of_row = torch.cat([prompt_of_row, prompt_of_row + (num_prompts if negative else 0)])
        if not torch.equal(prompt_of_row, torch.arange(inputs_embeds.shape[0], device=device)):
            llm_cache.reorder_cache(prompt_of_row)
            attention_mask, position_ids = attention_mask[prompt_of_row], position_ids[prompt_of_row]
        batch = num_prompts * num_images_per_prompt
        decoder, quantizer = self.model.scale_decoder, self.model.vqvae.quantizer
        rows = self.model.condition_rows(batch, device)
        if guided:
            rows = torch.cat([rows, torch.full_like(rows, decoder.unconditional_class)])
        condition = decoder.class_embed(rows)
        side = quantizer.final_size
        return NextScaleState(
            llm_cache=llm_cache,
            var_cache=ScaleKVCache(len(decoder.blocks)),
            attention_mask=attention_mask,
            next_position=position_ids[:, -1:] + 1,
            condition=condition,
            scale_tokens=decoder.first_scale_input(condition),
            f_hat=condition.new_zeros(batch, quantizer.codebook.embedding_dim, side, side),
            image_tokens=torch.zeros(batch, self.config.num_image_gen_tokens, dtype=torch.long, device=device),
            scale_index=0,
            llm_dtype=inputs_embeds.dtype,
        )

    # ---- one scale ----------------------------------------------------------------------------------------------
    def generate_scale(
        self,
        state: NextScaleState,
        code_sampler: CodeSampler,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> NextScaleState:
        """Draw the codes of scale `state.scale_index`: its token map through the LLM (with its cache) and the VAR
        blocks → code logits → codes; they join f̂, which gives the next scale's input. Updates `state` in
        place."""
        decoder, quantizer = self.model.scale_decoder, self.model.vqvae.quantizer
        si = state.scale_index
        length = decoder.scale_sizes[si] ** 2
        state.attention_mask = torch.cat(
            [state.attention_mask, state.attention_mask.new_ones(state.attention_mask.shape[0], length)], 1
        )
        positions = state.next_position + torch.arange(length, device=state.next_position.device)
        state.next_position = state.next_position + length
        llm_embeds = self.model.gen_input_projector(state.scale_tokens).to(state.llm_dtype)
        hidden = self._llm_step(llm_embeds, state.attention_mask, positions, state.llm_cache)
        var_states = self.model.gen_output_projector(hidden.to(state.condition.dtype))
        logits = decoder(var_states, state.condition, cache=state.var_cache)
        check_finite_output(logits, f"the code logits of scale {si} (side {decoder.scale_sizes[si]})", self.dtype)
        codes = code_sampler(logits, state.codes_so_far, generator=generator)
        start = state.num_codes_so_far
        state.image_tokens[:, start : start + length] = codes
        state.num_codes_so_far = start + length
        state.f_hat, token_map = quantizer.add_scale(state.f_hat, si, codes)
        if token_map is not None:
            scale_tokens = decoder.scale_input(si + 1, token_map.to(state.condition.dtype))
            state.scale_tokens = scale_tokens.repeat(2, 1, 1) if code_sampler.guided else scale_tokens
        state.scale_index = si + 1
        return state

    # ---- the loop -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_images(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_values: torch.FloatTensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        scale_callback: Callable[[int, dict], None] | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> VargptImageGenerationOutput:
        """Draw images by next-scale prediction after each prompt.

        Args:
            input_ids (B×T): left-padded prompts, ending with or without `<|image_gen_start|>`.
            attention_mask (B×T, optional): 1 for real tokens; without it, padding is read from `config.pad_token_id`.
            pixel_values (optional): images for `<image>` tokens in the prompts.
            generation_config (`GenerationConfig`, optional): the image sampling settings (see
                `image_generation_config`); default: `self.generation_config.image_generation` over the released
                defaults (`do_sample=True, top_k=900, top_p=0.95, temperature=1.0, guidance_scale=1.0`).
            logits_processor (`LogitsProcessorList`, optional): extra processors, applied to every scale's float32
                scores ((B·n·s²)×V, `input_ids` = the codes so far) after guidance and before the warpers.
            num_images_per_prompt: images drawn per prompt (consecutive in the output).
            generator: a `torch.Generator` for reproducible sampling, or one per image (B·n).
            scale_callback: called after every scale as `scale_callback(scale_index, {"f_hat": B×Cvae×S×S,
                "image_tokens": B×l codes so far})` (e.g. to preview the image sharpening).
            negative_input_ids (B×T', optional), negative_attention_mask: left-padded negative prompts; with
                guidance, the unconditional rows read them instead of the prompts (default: the generation config's
                `negative_prompt_ids` where it has them, else the prompts themselves).
            kwargs: `do_sample`, `top_k`, `top_p`, `temperature`, `guidance_scale`, `negative_prompt_ids`, overriding
                the generation config.
                `do_sample=False` or `top_k=1` is greedy; `guidance_scale` is classifier-free guidance against the
                unconditional class row, ramped over the scales (<= 1: off).

        Returns:
            [`VargptImageGenerationOutput`] with `images` (B·n×3×H×W in [0, 1]) and `image_tokens` (B·n×L).

        Raises `FloatingPointError` when a scale's code logits or the decoded images are not finite (typically a
        float16 model overflowing: load it in bfloat16).
        """
        check_generator(generator)
        image_config = self.image_generation_config(generation_config, **kwargs)
        sampler = CodeSampler(image_config, self.model.scale_decoder.scale_sizes, logits_processor)
        if sampler.guided and negative_input_ids is None:
            default = self.default_negative_prompt(image_config, input_ids.shape[0])
            if default is not None:
                negative_input_ids, negative_attention_mask = default
        state = self.prepare_next_scale_state(
            input_ids,
            attention_mask,
            pixel_values,
            num_images_per_prompt,
            guided=sampler.guided,
            negative_input_ids=negative_input_ids,
            negative_attention_mask=negative_attention_mask,
        )
        for scale_index in range(len(self.model.scale_decoder.scale_sizes)):
            self.generate_scale(state, sampler, generator)
            if scale_callback is not None:
                scale_callback(scale_index, {"f_hat": state.f_hat, "image_tokens": state.codes_so_far})
        return VargptImageGenerationOutput(images=self.decode_fhat(state.f_hat), image_tokens=state.image_tokens)

    # ---- decoding -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_fhat(self, f_hat: torch.Tensor) -> torch.FloatTensor:
        """Summed code features f̂ (B×Cvae×S×S, complete or partial) → float images in [0, 1] (B×3×H×W)."""
        images = self.model.vqvae.decode_fhat(f_hat)
        check_finite_output(images, "the decoded images", self.dtype)
        return images.add(1).mul(0.5).float()

    @torch.no_grad()
    def decode_image_tokens(self, image_tokens: torch.LongTensor) -> torch.FloatTensor:
        """Code indices (B×L, all scales concatenated) → images in [0, 1] (B×3×H×W)."""
        check_image_tokens(image_tokens, self.config.vq_config.vocab_size, self.config.num_image_gen_tokens)
        return self.decode_fhat(self.model.vqvae.tokens_to_fhat(image_tokens.to(self.execution_device)))


def _left_padded_concat(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of (embeddings B×T×H, mask B×T), left-padded to the longer T and stacked: (2B×T×H, 2B×T)."""
    length = max(first[0].shape[1], second[0].shape[1])

    def pad(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        missing = length - embeds.shape[1]
        return F.pad(embeds, (0, 0, missing, 0)), F.pad(mask, (missing, 0))

    (a_embeds, a_mask), (b_embeds, b_mask) = pad(*first), pad(*second)
    return torch.cat([a_embeds, b_embeds]), torch.cat([a_mask, b_mask])


__all__ = ["VargptImageGenerationMixin", "NextScaleState", "CACHE_ARG"]
