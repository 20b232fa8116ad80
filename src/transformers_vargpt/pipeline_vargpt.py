"""Text-to-image with VARGPT as a diffusers pipeline.

A thin conductor: the processor turns each prompt into a text-to-image prompt (a user turn, `ASSISTANT:`,
`<|image_gen_start|>`), the model draws by next-scale prediction (`generate_images`: LLM ⇄ VAR scale by scale, then
the VQVAE), and the pipeline reports progress once per scale, calls `callback_on_step_end` after every scale and
converts the images to `output_type`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import replace_example_docstring
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
from transformers.utils import logging

from .generation_image_vargpt import NextScaleState
from .generation_vargpt import CodeSampler
from .image_processing_vargpt import OUTPUT_TYPES, postprocess
from .modeling_vargpt import VargptForConditionalGeneration
from .pipeline_output import VargptPipelineOutput
from .processing_vargpt import VargptProcessor

logger = logging.get_logger(__name__)

# Keyword arguments of `from_pretrained` that locate files rather than configure the model.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "subfolder")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> import transformers_vargpt
        >>> from transformers_vargpt.pipeline_vargpt import VargptPipeline

        >>> pipe = VargptPipeline.from_pretrained("VARGPT-family/VARGPT_LLaVA-v1", torch_dtype=torch.bfloat16)
        >>> pipe = pipe.to("cuda")
        >>> generator = torch.Generator().manual_seed(0)
        >>> image = pipe("a butterfly on a flower", guidance_scale=2.5, generator=generator).images[0]
        >>> image.save("butterfly.png")
        ```
"""


class VargptPipeline(DiffusionPipeline):
    r"""
    Text-to-image generation with VARGPT: the LLM reads the prompt, then VAR draws the image scale by scale
    (`len(patch_nums)` steps, 10 for the released model) and the multi-scale VQVAE decodes it.

    Components:
        model ([`VargptForConditionalGeneration`]): the VARGPT model (LLM, VAR decoder, VQVAE).
        processor ([`VargptProcessor`]): tokenizer and chat template that build the text-to-image prompts.

    `from_pretrained` loads a saved pipeline (`model_index.json`, `model/`, `processor/`) or a single VARGPT model
    directory or Hub repository holding model and processor files side by side (this package's layout or the
    released one); for the latter, keyword arguments that are [`VargptConfig`] fields override the config (the
    released `config.json` does not record the VAR/VQVAE sizes).
    """

    model_cpu_offload_seq = "model"
    # `latents` is diffusers' name for the features the decoder turns into the image: VAR's f̂, under both names
    _callback_tensor_inputs = ["f_hat", "latents", "image_tokens", "image"]

    def __init__(self, model: VargptForConditionalGeneration, processor: VargptProcessor):
        super().__init__()
        self.register_modules(model=model, processor=processor)

    @property
    def num_scales(self) -> int:
        """Steps of one generation: the number of VAR scales."""
        return len(self.model.config.patch_nums)

    # ---- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "VargptPipeline":
        """Load a saved pipeline, or build one from a single model directory / Hub repository (see the class doc).

        For a single model, `torch_dtype`/`dtype`, `device_map` and [`VargptConfig`] fields (e.g. `patch_nums`,
        `var_depth`) go to the model; `processor_kwargs` (a dict) go to the processor.
        """
        if _is_pipeline_repository(str(pretrained_model_name_or_path), kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_single_model(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_single_model(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "VargptPipeline":
        """Build the pipeline from one directory / repository that holds the model and the processor files."""
        processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
        if "torch_dtype" in kwargs:  # diffusers' name for it
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        model = VargptForConditionalGeneration.from_pretrained(pretrained_model_name_or_path, **kwargs)
        # the processor's generation sizes follow the model's config (which the overrides may have set)
        processor_kwargs.setdefault("patch_nums", model.config.patch_nums)
        processor_kwargs.setdefault("image_gen_size", model.config.image_gen_size)
        processor = VargptProcessor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs, **processor_kwargs)
        return cls(model=model.eval(), processor=processor)

    # ---- generation ---------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        prompt: Any,
        output_type: str,
        generator: Any,
        callback_on_step_end_tensor_inputs: list[str] | None,
        negative_prompt: Any = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> None:
        """Argument errors before any work. Prompt emptiness, `num_images_per_prompt` and the prompt length are
        checked where they are used (processor and model), with messages that name them."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass either prompt or prompt_embeds (exactly one)")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text is not None and not isinstance(text, str) and not (
                isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text)
            ):
                raise TypeError(f"{name} must be a string or a list of strings, got {type(text).__name__}")
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (not torch.is_tensor(embeds) or embeds.ndim != 3):
                raise ValueError(f"{name} must be a B x T x hidden_size tensor (see encode_prompt)")
        if output_type not in (*OUTPUT_TYPES, "latent"):
            raise ValueError(f"output_type must be one of {(*OUTPUT_TYPES, 'latent')}, got {output_type!r}")
        generators = generator if isinstance(generator, (list, tuple)) else [generator]
        if generator is not None and not all(isinstance(item, torch.Generator) for item in generators):
            raise TypeError(
                f"generator must be a torch.Generator or a list of them (one per image), got {type(generator).__name__}"
            )
        requested = callback_on_step_end_tensor_inputs or []
        unknown = [name for name in requested if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {unknown}"
            )

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        device: torch.device | None = None,
        do_classifier_free_guidance: bool = False,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Text-to-image prompts → the LLM's input embeddings (B×T×H, left-padded, ending with
        `<|image_gen_start|>`) and attention masks (B×T), and the same for the negative prompts.

        Precomputed embeddings are passed through (their masks default to all ones). Without a negative prompt,
        guidance reads the model's default one (its generation config's `negative_prompt_ids`, e.g. a generic
        drawing request); where the model has none, the negative embeddings are `None` and guidance reads the prompt
        itself with the unconditional class row. A single negative prompt serves every prompt; negative prompts are
        only used with guidance.
        """
        device = self._execution_device if device is None else device
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self._embed_texts(prompt, device)
        else:
            prompt_embeds, prompt_attention_mask = self.model.prompt_embeddings(
                attention_mask=prompt_attention_mask, inputs_embeds=prompt_embeds, device=device
            )
        if not do_classifier_free_guidance:
            return prompt_embeds, prompt_attention_mask, None, None
        if negative_prompt_embeds is None and negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) == 1:
                negatives = negatives * prompt_embeds.shape[0]
            if len(negatives) != prompt_embeds.shape[0]:
                raise ValueError(f"{len(negatives)} negative prompts for {prompt_embeds.shape[0]} prompts")
            negative_prompt_embeds, negative_prompt_attention_mask = self._embed_texts(negatives, device)
        elif negative_prompt_embeds is not None:
            negative_prompt_embeds, negative_prompt_attention_mask = self.model.prompt_embeddings(
                attention_mask=negative_prompt_attention_mask, inputs_embeds=negative_prompt_embeds, device=device
            )
        else:
            default = self.model.default_negative_prompt(
                self.model.image_generation_config(), prompt_embeds.shape[0], device
            )
            if default is not None:
                negative_prompt_embeds, negative_prompt_attention_mask = self.model.prompt_embeddings(
                    *default, device=device
                )
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    def _embed_texts(self, texts: str | list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.processor(text=texts, generation_mode="image", return_tensors="pt").to(device)
        return self.model.prompt_embeddings(inputs["input_ids"], inputs["attention_mask"], device=device)

    def _load_model_on_execution_device(self) -> None:
        """With `enable_model_cpu_offload`, accelerate moves the model to the accelerator when its `forward` is
        called; drawing runs its parts directly, so the pipeline triggers that move (as diffusers'
        `apply_forward_hook` does for a VAE's `decode`)."""
        # (sequential offload hooks every sub-module, which its own forward moves: nothing to do then)
        hook = getattr(self.model, "_hf_hook", None)
        if hook is None:
            return
        from accelerate.hooks import CpuOffload  # installed wherever a hook was attached

        if isinstance(hook, CpuOffload):
            hook.pre_forward(self.model)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        do_sample: bool | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["VargptPipeline", int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["f_hat"],
    ) -> VargptPipelineOutput | tuple:
        r"""
        Draw images of the prompts.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                What to draw: a plain description per image ("a butterfly on a flower"); the processor wraps it in a
                user turn of the chat template and appends `<|image_gen_start|>`. Or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*):
                With guidance (`guidance_scale > 1`), what the unconditional branch reads instead of the prompt
                (with the unconditional class row as always); one for all prompts or one per prompt. Default: the
                model's `generation_config.image_generation["negative_prompt_ids"]` where it has them, else the
                prompt itself.
            num_images_per_prompt (`int`, defaults to 1): images per prompt (consecutive in the output).
            guidance_scale (`float`, *optional*):
                Classifier-free guidance against the unconditional class row that training's condition dropout
                teaches, ramped over the scales as VAR does; `<= 1` disables it. The default (the model's
                `generation_config.image_generation`, else 1: no guidance) is how the released model draws (its
                inference code computes a guidance ratio but never applies it) and costs one forward pass instead of
                two; values around 1.5-3 trade diversity for prompt fidelity, as VAR's `cfg`
                (`cfg = guidance_scale - 1`). A callback may change `pipe._guidance_scale` between scales (lowering
                it to <= 1 turns guidance off); guidance off at the start cannot be turned on later.
            top_k (`int`, *optional*), top_p (`float`, *optional*), temperature (`float`, *optional*):
                Code sampling at every scale; `top_k=0` / `top_p=1` disable the filters. Defaults: the model's
                `generation_config.image_generation`, else the released 900 / 0.95 / 1.0.
            do_sample (`bool`, *optional*): `False` takes the arg-max code everywhere (deterministic); default as above
                (`True` unless the generation config says otherwise).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): makes sampling reproducible (same
                seed, same images); a list gives one generator per image (`len(prompts) * num_images_per_prompt`).
            prompt_embeds (`torch.Tensor`, *optional*), negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed LLM input embeddings `(B, T, hidden_size)` of left-padded prompts ending with
                `<|image_gen_start|>`, as [`encode_prompt`] returns them, with their `prompt_attention_mask` /
                `negative_prompt_attention_mask` `(B, T)` (default: all ones).
            output_type (`str`, defaults to `"pil"`):
                `"pil"`: a list of `PIL.Image.Image`; `"np"`: a float array `(B, H, W, 3)` in [0, 1];
                `"pt"`: a float tensor `(B, 3, H, W)` in [0, 1]; `"latent"`: the summed code features f̂
                `(B, Cvae, S, S)`, not decoded.
            return_dict (`bool`, defaults to `True`): return a [`VargptPipelineOutput`] rather than `(images,)`.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after every scale as `callback_on_step_end(pipe, scale_index, scale_index, callback_kwargs)`
                (the scale index is both step and timestep; `pipe.num_timesteps` is the number of scales).
                `callback_kwargs` holds the requested tensors: `"f_hat"` (`(B, Cvae, S, S)`, the summed code
                features so far), `"image_tokens"` (`(B, l)`, the codes so far) and `"image"` (`(B, 3, H, W)` in
                [0, 1], the partial image decoded from `f_hat`); `"latents"` is `f_hat` under diffusers' name. A
                returned `"f_hat"` (or `"latents"`) replaces the running features, as diffusers callbacks replace
                latents. Setting `pipe._interrupt = True` stops after that scale (the
                image is decoded from the scales drawn so far).
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["f_hat"]`):
                Which of `f_hat`, `latents`, `image_tokens`, `image` the callback receives.

        Examples:

        Returns:
            [`VargptPipelineOutput`] (a diffusers [`ImagePipelineOutput`]) with `images` and `image_tokens`, or
            `(images,)` when `return_dict=False`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(
            prompt,
            output_type,
            generator,
            callback_on_step_end_tensor_inputs,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
        )
        if isinstance(generator, (list, tuple)) and len(generator) == 1:
            generator = generator[0]
        # explicit arguments over the model's generation config, resolved once; the guidance scale is then loop
        # state that callbacks may change (read before every scale)
        generation_config = self.model.image_generation_config(
            do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=guidance_scale
        )
        sampler = CodeSampler(generation_config, self.model.model.scale_decoder.scale_sizes)
        self._guidance_scale = generation_config.guidance_scale
        self._num_timesteps = self.num_scales
        self._interrupt = False
        device = self._execution_device
        self._load_model_on_execution_device()

        # 1. prompts -> LLM input embeddings (left-padded, ending with <|image_gen_start|>), negative ones for guidance
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                negative_prompt,
                device,
                sampler.guided,
                prompt_embeds,
                negative_prompt_embeds,
                prompt_attention_mask,
                negative_prompt_attention_mask,
            )
        )
        if isinstance(generator, (list, tuple)) and len(generator) != prompt_embeds.shape[0] * num_images_per_prompt:
            raise ValueError(
                f"{len(generator)} generators for {prompt_embeds.shape[0]} prompt(s) x {num_images_per_prompt} "
                "image(s): pass one generator, or one per image"
            )

        # 2. prefill, then one model step, progress step and callback per scale
        state = self.model.prepare_next_scale_state(
            num_images_per_prompt=num_images_per_prompt,
            guided=sampler.guided,
            inputs_embeds=prompt_embeds,
            attention_mask=prompt_attention_mask,
            negative_inputs_embeds=negative_prompt_embeds,
            negative_attention_mask=negative_prompt_attention_mask,
            device=device,
        )
        with self.progress_bar(total=self.num_scales) as progress_bar:
            for scale_index in range(self.num_scales):
                if self.interrupt:
                    break
                if sampler.guided:
                    sampler.guidance.guidance_scale = float(self._guidance_scale)
                self.model.generate_scale(state, sampler, generator)
                if callback_on_step_end is not None:
                    callback_kwargs = {
                        name: self._callback_tensor(name, state) for name in callback_on_step_end_tensor_inputs
                    }
                    callback_outputs = callback_on_step_end(self, scale_index, scale_index, callback_kwargs)
                    new_f_hat = _returned_f_hat(callback_outputs, state.f_hat)
                    if new_f_hat is not None and new_f_hat is not state.f_hat:
                        state.f_hat = new_f_hat
                progress_bar.update()

        # 3. decode and post-process ("latent": the features, undecoded)
        if output_type == "latent":
            images = state.f_hat
        else:
            images = postprocess(self.model.decode_fhat(state.f_hat), output_type=output_type)  # [0, 1] in
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return VargptPipelineOutput(images=images, image_tokens=state.image_tokens)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Steps of the last call: one per scale (what callbacks read as the step count)."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _callback_tensor(self, name: str, state: NextScaleState) -> torch.Tensor:
        if name == "image":
            return self.model.decode_fhat(state.f_hat)
        if name == "image_tokens":
            return state.codes_so_far
        return state.f_hat  # "f_hat" or "latents"


def _returned_f_hat(callback_outputs: Any, f_hat: torch.Tensor) -> torch.Tensor | None:
    """The `f_hat` a `callback_on_step_end` returned (None: unchanged), checked against the running one."""
    if callback_outputs is None:
        return None
    if not isinstance(callback_outputs, Mapping):
        raise TypeError(
            f"callback_on_step_end must return a dict (e.g. the callback_kwargs it was given), "
            f"got {type(callback_outputs).__name__}"
        )
    # a replaced `f_hat` (or `latents`, diffusers' name for it) replaces the running features
    replaced = [callback_outputs.get(name) for name in ("f_hat", "latents")]
    new_f_hat = next((tensor for tensor in replaced if tensor is not None and tensor is not f_hat), None)
    if new_f_hat is None:
        return None
    if not isinstance(new_f_hat, torch.Tensor) or new_f_hat.shape != f_hat.shape:
        found = tuple(new_f_hat.shape) if isinstance(new_f_hat, torch.Tensor) else type(new_f_hat).__name__
        raise ValueError(
            f"callback_on_step_end returned f_hat of shape {found}; it must keep the shape {tuple(f_hat.shape)}"
        )
    return new_f_hat


def _is_pipeline_repository(path: str, kwargs: dict[str, Any]) -> bool:
    """Whether `path` holds a saved pipeline (`model_index.json`) rather than a single model."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "model_index.json"))
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
    try:
        hf_hub_download(path, "model_index.json", **hub_kwargs)
    except RemoteEntryNotFoundError:
        return False
    except LocalEntryNotFoundError:  # offline: a cached single model has its config.json in the cache
        cached = try_to_load_from_cache(
            path, "config.json", cache_dir=hub_kwargs.get("cache_dir"), revision=hub_kwargs.get("revision")
        )
        return not isinstance(cached, str)
    except Exception:  # gated, missing, ...: let diffusers report it in its own words
        return True
    return True


__all__ = ["VargptPipeline"]
