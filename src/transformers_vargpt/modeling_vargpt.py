"""VARGPT: LLaVA-1.5 that reads images by next-token prediction and draws them by VAR next-scale prediction.

Data flow for drawing: prompt → LLM prefill → for each scale: that scale's token map (VAR embeddings →
`gen_input_projector`) → LLM with its KV cache → `gen_output_projector` → VAR blocks (own KV cache) → code logits →
codes → f̂ grows → next scale's token map; finally the VQVAE decodes f̂.
"""

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .cpu_matmul import sliced_cpu_matmuls
from .configuration_vargpt import VargptConfig
from .generation_image_vargpt import CACHE_ARG, VargptImageGenerationMixin
from .generation_interleaved_vargpt import VargptInterleavedGenerationMixin
from .generation_vargpt import IMAGE_GENERATION_DEFAULTS
from .hub import VargptHubMixin
from .modeling_vargpt_var import VarBlock, VargptScaleDecoder, VarSelfAttention
from .modeling_vargpt_vqvae import VargptVQVAE
from .released_checkpoint_vargpt import read_weight_shapes, weight_files
from .validation_vargpt import (
    check_attention_mask,
    check_generation_images,
    check_image_tokens,
    check_pixel_values,
    check_placeholders,
    check_token_ids,
)

logger = logging.get_logger(__name__)

# inputs that carry images (read or drawn, `image_gen_tokens` is the deprecated name of `image_tokens`): embedded once
IMAGE_INPUTS = ("pixel_values", "pixel_gen_values", "image_tokens", "image_gen_tokens")

# Released checkpoint names (VARGPT-family/VARGPT_LLaVA-v1) → ours. Applied in order; renamings chain.
RELEASED_KEY_MAPPING = {
    r"^language_model\.model\.": "model.language_model.",
    r"^language_model\.lm_head\.": "lm_head.",
    # transformers 5 CLIPVisionModel has no `vision_model` level
    r"^vision_tower\.(?:vision_model\.)?": "model.vision_tower.",
    r"^multi_modal_projector\.": "model.multi_modal_projector.",
    r"^vae_local\.quantize\.embedding\.": "model.vqvae.quantizer.codebook.",
    r"^vae_local\.quantize\.quant_resi\.qresi_ls\.": "model.vqvae.quantizer.residual_filters.",
    r"^vae_local\.quantize\.quant_resi\.qresi\.": "model.vqvae.quantizer.residual_filters.0.",
    r"^vae_local\.quantize\.quant_resi\.": "model.vqvae.quantizer.residual_filters.",
    r"^vae_local\.": "model.vqvae.",
    r"^vargpt_gen\.word_embed\.": "model.scale_decoder.code_embed.",
    r"^vargpt_gen\.class_emb\.": "model.scale_decoder.class_embed.",
    r"^vargpt_gen\.pos_start$": "model.scale_decoder.start_pos_embed",
    r"^vargpt_gen\.pos_1LC$": "model.scale_decoder.pos_embed",
    r"^vargpt_gen\.lvl_embed\.": "model.scale_decoder.scale_embed.",
    r"^vargpt_gen\.shared_ada_lin\.1\.": "model.scale_decoder.shared_adaln.",
    r"^vargpt_gen\.head_nm\.ada_lin\.1\.": "model.scale_decoder.head_norm.adaln.",
    r"^vargpt_gen\.": "model.scale_decoder.",
    r"^(model\.scale_decoder\.blocks\.\d+)\.ada_lin\.1\.": r"\1.adaln.",
    r"^(model\.scale_decoder\.blocks\.\d+)\.ada_gss$": r"\1.adaln_offset",
    r"^(model\.scale_decoder\.blocks\.\d+)\.attn\.mat_qkv\.": r"\1.attn.qkv.",
    r"^(model\.scale_decoder\.blocks\.\d+)\.attn\.scale_mul_1H11$": r"\1.attn.logit_scale",
    r"^(model\.scale_decoder\.blocks\.\d+)\.attn\.proj\.": r"\1.attn.out_proj.",
    r"^(model\.scale_decoder\.blocks\.\d+)\.ffn\.": r"\1.mlp.",
    r"^image_gen_projector\.ln_q\.": "model.gen_input_projector.norm.",
    r"^image_gen_projector\.mlp\.0\.": "model.gen_input_projector.fc1.",
    r"^image_gen_projector\.mlp\.2\.": "model.gen_input_projector.fc2.",
    r"^image_gen_projector_out\.ln_q\.": "model.gen_output_projector.norm.",
    r"^image_gen_projector_out\.mlp\.0\.": "model.gen_output_projector.fc1.",
    r"^image_gen_projector_out\.mlp\.2\.": "model.gen_output_projector.fc2.",
}

# Buffers of the released checkpoint that we derive from the config instead of loading.
DERIVED_RELEASED_BUFFERS = [r"lvl_1L$", r"attn_bias_for_masking$", r"zero_k_bias$", r"ema_vocab_hit_SV$"]


def _deprecated_output_name(output: ModelOutput, old: str, new: str):
    warnings.warn(f"`{old}` is deprecated; read `{new}` (the same codes)", FutureWarning, stacklevel=3)
    return getattr(output, new)


def _continues(generate_kwargs: dict) -> bool:
    """Whether `generate` continues from a cache that already read the prompt (and its images)."""
    cache = generate_kwargs.get(CACHE_ARG, generate_kwargs.get("past_key_values"))
    return isinstance(cache, Cache) and cache.get_seq_length() > 0


def _renamed_image_tokens(image_tokens: torch.LongTensor | None, kwargs: dict) -> torch.LongTensor | None:
    """`image_tokens`, or the codes passed under their former keyword `image_gen_tokens` (with a warning)."""
    old = kwargs.pop("image_gen_tokens", None)
    if old is None:
        return image_tokens
    warnings.warn("`image_gen_tokens` is deprecated; pass the codes as `image_tokens`", FutureWarning, stacklevel=4)
    if image_tokens is not None:
        raise ValueError("pass the codes once, as image_tokens (image_gen_tokens is its deprecated name)")
    return old


@dataclass
class VargptModelOutputWithPast(ModelOutput):
    r"""
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            LLM hidden states after its final norm.
        cache (`Cache`): the LLM's KV cache.
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`):
            projected CLIP features of the input images.
        image_outputs ([`BaseModelOutputWithPooling`]): the vision tower's outputs for the input images, with the
            projected features as `pooler_output` (what `get_image_features` returns).
        image_tokens (`torch.LongTensor` of shape `(num_gen_images, L)`): code indices of the images to draw.
        image_gen_condition (`torch.FloatTensor` of shape `(num_gen_images, var_config.hidden_size)`): AdaLN condition.
        idle_image_tokens (`torch.LongTensor` of shape `(1, L)`), idle_image_gen_condition (`torch.FloatTensor` of
            shape `(1, var_config.hidden_size)`): in training, when the batch draws nothing, the dummy image's codes
            and condition (see `VargptModel.runs_idle`), for the head to finish the dummy pass.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    image_tokens: torch.LongTensor | None = None
    image_gen_condition: torch.FloatTensor | None = None
    idle_image_tokens: torch.LongTensor | None = None
    idle_image_gen_condition: torch.FloatTensor | None = None

    @property
    def image_gen_targets(self) -> torch.LongTensor | None:
        return _deprecated_output_name(self, "image_gen_targets", "image_tokens")


def _is_sharded(module: nn.Module) -> bool:
    """Whether running `module` gathers parameters collectively: DeepSpeed ZeRO-3 (its parameters carry `ds_id`) or
    FSDP2 (it contains an FSDP unit; parameters of the root unit are gathered once per step, whatever runs). Every
    process must then run the module the same number of times, in the same order."""
    parameter = next(module.parameters(), None)
    if parameter is None:
        return False
    if hasattr(parameter, "ds_id"):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(submodule, FSDPModule) for submodule in module.modules())


@dataclass
class VargptCausalLMOutputWithPast(ModelOutput):
    r"""
    Args:
        loss (`torch.FloatTensor`): `text_loss + image_loss` (whichever are present).
        text_loss (`torch.FloatTensor`): shifted cross-entropy of the text against `labels`, image tokens ignored.
        image_loss (`torch.FloatTensor`): cross-entropy of the code logits against the image's code indices.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): text logits.
        image_logits (`torch.FloatTensor` of shape `(num_gen_images, L, vq_config.vocab_size)`): code logits; position i
            predicts code i.
        image_tokens (`torch.LongTensor` of shape `(num_gen_images, L)`): the codes `image_logits` predict.
        cache (`Cache`): the LLM's KV cache.
        image_hidden_states, image_outputs: as in [`VargptModelOutputWithPast`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    text_loss: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None
    image_logits: torch.FloatTensor | None = None
    image_tokens: torch.LongTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None

    @property
    def image_gen_targets(self) -> torch.LongTensor | None:
        return _deprecated_output_name(self, "image_gen_targets", "image_tokens")


class VargptMultiModalProjector(nn.Module):
    """CLIP width (times the number of feature layers, concatenated) → LLM width (LLaVA-1.5's two-layer MLP)."""

    def __init__(self, config: VargptConfig):
        super().__init__()
        in_features = config.vision_config.hidden_size * len(config.vision_feature_layers)
        self.linear_1 = nn.Linear(in_features, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class VargptGenProjector(nn.Module):
    """MLP between the VAR width and the LLM width (either direction)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        # The released checkpoint carries a LayerNorm here that its forward never applies; kept so it round-trips.
        self.norm = nn.LayerNorm(in_features, eps=1e-6)
        self.fc1 = nn.Linear(in_features, in_features)
        self.fc2 = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VargptPreTrainedModel(VargptHubMixin, PreTrainedModel):
    config_class = VargptConfig
    config: VargptConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # text decoding steps (no images, no codes) are shape-static: static caches and `torch.compile(fullgraph=True)`
    _can_compile_fullgraph = True

    # Blocks that FSDP wraps (and `device_map` never splits): the LLM's decoder layer, the CLIP encoder layer, the VAR
    # block and the VQVAE's stages (each runs its convolutions, norms and attention on one activation). `post_init`
    # adds the sub-models' own lists and keeps only classes the model contains (accelerate's FSDP auto-wrap fails
    # on a name it cannot find, e.g. CLIP's `CLIPTextEmbeddings` in a vision-only tower), except the VQVAE's
    # quantizer: it runs through its methods, never its `forward`, so an FSDP unit of its own would never be gathered.
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "VarBlock", "VQStage", "VQMiddle"]
    _not_wrappable_modules = ("MultiScaleQuantizer",)
    _keys_to_ignore_on_load_unexpected = DERIVED_RELEASED_BUFFERS

    def post_init(self) -> None:
        super().post_init()
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = {
            name for name in self._no_split_modules if name in present and name not in self._not_wrappable_modules
        }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VargptScaleDecoder):
            # VAR's default; the width read from an attribute: under ZeRO-3 the parameter may be partitioned (empty)
            std = (1 / module.class_embed.embedding_dim / 3) ** 0.5
            init.trunc_normal_(module.start_pos_embed, std=std)
            init.trunc_normal_(module.pos_embed, std=std)
            scale_ids, block_causal_mask = module.derived_buffers()
            init.copy_(module.scale_ids, scale_ids)
            init.copy_(module.block_causal_mask, block_causal_mask)
        elif isinstance(module, VarSelfAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            if module.l2_norm:
                init.constant_(module.logit_scale, math.log(4.0))
        elif isinstance(module, VarBlock) and module.shared_adaln:
            init.normal_(module.adaln_offset, std=module.width**-0.5)

    @torch.no_grad()
    @init.guard_torch_init_functions()
    def initialize_weights(self) -> None:
        """Each sub-model (CLIP, Llama, VQVAE) initialised by its own `_init_weights`, the rest by ours.

        transformers treats models defined outside it as code that may write weights in place, and then skips every
        module without parameters of its own, such as CLIP's attention and MLP, whose `_init_weights` sets their
        Linear weights: from the meta device (`from_pretrained` with missing weights) they would keep the generic init.
        Every `_init_weights` here writes through `transformers.initialization`, which leaves loaded weights alone.
        """

        def apply(module: nn.Module, initialize) -> None:
            for child in module.children():
                apply(child, child._initialize_weights if isinstance(child, PreTrainedModel) else initialize)
            initialize(module, False)

        apply(self, self._initialize_weights)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Loads our layout and the released layout alike: released key names are renamed on the fly. A truncated or
        corrupt weights file of a local directory is named (before any model is built)."""
        kwargs.setdefault("key_mapping", RELEASED_KEY_MAPPING)
        directory = Path(pretrained_model_name_or_path or "")
        if pretrained_model_name_or_path is not None and directory.is_dir():
            read_weight_shapes(weight_files(directory / kwargs.get("subfolder", "")))
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


class VargptModel(VargptPreTrainedModel):
    """The VARGPT body: vision tower, LLM, VQVAE, VAR decoder and the projectors between them. Returns hidden states."""

    def __init__(self, config: VargptConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = VargptMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.vqvae = VargptVQVAE(config.vq_config)
        self.scale_decoder = VargptScaleDecoder(config)
        var_width = config.var_config.hidden_size
        self.gen_input_projector = VargptGenProjector(var_width, config.text_config.hidden_size)
        self.gen_output_projector = VargptGenProjector(config.text_config.hidden_size, var_width)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ---- understanding ------------------------------------------------------------------------------------------
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Images (N×3×h×w, CLIP-normalised) → the vision tower's outputs, with the projected features
        (N×patches×hidden_size) as `pooler_output`. A list of feature layers concatenates their features (the
        projector is sized for it); both arguments default to the config's. Other keyword arguments
        (`output_attentions`, `output_hidden_states`) go to the vision tower."""
        check_pixel_values(pixel_values)
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
        # the feature layers are read from the hidden states, which the outputs keep only when asked for
        keep_hidden_states = kwargs.pop("output_hidden_states", None)
        if keep_hidden_states is None:
            keep_hidden_states = self.vision_tower.config.output_hidden_states
        vision_outputs = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype), output_hidden_states=True, return_dict=True, **kwargs
        )
        layers = [layer] if isinstance(layer, int) else list(layer)
        features = torch.cat([vision_outputs.hidden_states[index] for index in layers], dim=-1)
        if strategy == "default":
            features = features[:, 1:]  # drop CLS
        vision_outputs.pooler_output = self.multi_modal_projector(features)
        if not keep_hidden_states:
            vision_outputs.hidden_states = None
        return vision_outputs

    def image_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """Where the `<image>` tokens are (B×T): from `input_ids`, or without them from `inputs_embeds` (B×T×H),
        as the positions holding the `<image>` token's embedding."""
        if input_ids is not None:
            return input_ids == self.config.image_token_index
        image_id = torch.tensor(self.config.image_token_index, device=inputs_embeds.device)
        return (inputs_embeds == self.get_input_embeddings()(image_id).to(inputs_embeds.dtype)).all(-1)

    def merge_image_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        pixel_values: torch.Tensor,
        **vision_kwargs,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Put the projected CLIP features of `pixel_values` at the `<image>` tokens of `input_ids` (B×T, or found
        in `inputs_embeds` when `input_ids` is None) in `inputs_embeds` (B×T×H). Returns the new embeddings and
        `get_image_features`' outputs (features N×patches×H as `pooler_output`)."""
        image_mask = self.image_placeholder_mask(input_ids, inputs_embeds)
        n_tokens = int(image_mask.sum())
        if n_tokens == 0:
            raise ValueError(
                f"pixel_values were given but the prompt holds no <image> token (id {self.config.image_token_index}); "
                "put '<image>' in the prompt (the processor expands it)"
            )
        image_outputs = self.get_image_features(pixel_values, return_dict=True, **vision_kwargs)
        features = image_outputs.pooler_output
        if n_tokens != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"Image features and image tokens do not match: the prompt holds {n_tokens} <image> tokens but "
                f"{features.shape[0]} image(s) give {features.shape[0]} x {features.shape[1]} = "
                f"{features.shape[0] * features.shape[1]} features"
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), features)
        return inputs_embeds, image_outputs

    # ---- every module on every step ------------------------------------------------------------------------------
    def runs_idle(self, *modules: nn.Module) -> bool:
        """Whether parts that this batch does not use run anyway, on a dummy input whose contribution is exactly 0.

        Why: in training every process must take part in the same collectives whatever its micro-batch holds. DDP
        (without `find_unused_parameters`) and DeepSpeed ZeRO reduce a gradient for every trainable parameter, so a
        trainable part a batch does not reach (the VAR decoder on a process whose batch draws nothing) must still
        produce its gradient, here exactly zero; ZeRO-3 and FSDP also gather the *frozen* parameters of every module
        that runs, so a sharded part (the vision tower on a process with no image to read) must run on every process,
        in the same order as where the batch has real inputs. A dummy input (rather than `0 × parameter` anchors)
        does both: the dummy goes through the same modules in the same order as real data, so every process issues
        the same all-gathers in forward and the same gradient reductions in backward, and its output enters the
        loss multiplied by 0, so losses and gradients equal those of one process with the whole global batch.

        The dummy runs only in training with gradients on, and only for parts with trainable or sharded
        parameters: a frozen, replicated part (the vision tower under DDP) is skipped at no cost.
        """
        if not (self.training and torch.is_grad_enabled()):
            return False
        return any(p.requires_grad for module in modules for p in module.parameters()) or any(
            _is_sharded(module) for module in modules
        )

    def _idle_understanding(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """The vision tower and projector on one blank image (1×3×S×S); returns `inputs_embeds` + 0 × their output."""
        size = self.config.vision_config.image_size
        blank = torch.zeros(1, 3, size, size, device=inputs_embeds.device)
        features = self.get_image_features(blank).pooler_output
        return inputs_embeds + features.sum().to(inputs_embeds.dtype) * 0

    def _blank_image_tokens(self, device: torch.device) -> torch.LongTensor:
        """Codes (1×L) of a blank image through the VQVAE encoder (so a sharded VQVAE is gathered on every
        process), or zeros where the VQVAE is replicated (frozen in every stage: no need to run it)."""
        if _is_sharded(self.vqvae):
            size = self.config.vq_config.image_size
            return self.vqvae.tokenize(torch.zeros(1, 3, size, size, device=device))
        return torch.zeros(1, self.config.num_image_gen_tokens, dtype=torch.long, device=device)

    def _idle_generation(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """The input half of drawing on one dummy image (VQVAE codes, class embedding, teacher forcing, input
        projector). Returns `inputs_embeds` plus 0 × its output, the dummy codes (1×L) and condition (1×C); the
        head runs the output half (`VargptForConditionalGeneration._idle_image_loss`)."""
        tokens = self._blank_image_tokens(inputs_embeds.device)
        # no condition dropout: the dummy draws no random numbers, so the real samples' stream is unchanged
        condition = self.scale_decoder.class_embed(self.condition_rows(1, inputs_embeds.device))
        gen_embeds = self.image_gen_embeddings(tokens, condition)
        return inputs_embeds + gen_embeds.sum().to(inputs_embeds.dtype) * 0, tokens, condition

    def _generation_modules(self) -> tuple[nn.Module, ...]:
        return self.vqvae, self.scale_decoder, self.gen_input_projector, self.gen_output_projector

    # ---- drawing ------------------------------------------------------------------------------------------------
    def check_generation_tokens(self) -> None:
        """Raise a clear error when the config has no image generation tokens (the model can only read)."""
        if not self.config.supports_image_generation:
            raise ValueError(
                "this config has no image generation tokens: config.special_tokens must define "
                "image_gen_start_token_id, image_gen_end_token_id and image_gen_pad_token_id"
            )

    def condition_rows(self, batch_size: int, device: torch.device, drop_rate: float = 0.0) -> torch.LongTensor:
        """Class-embedding rows: `image_gen_start_token_id`, or with probability `drop_rate` the unconditional row."""
        rows = torch.full((batch_size,), self.config.image_gen_start_token_id, device=device)
        if drop_rate > 0:
            dropped = torch.rand(batch_size, device=device) < drop_rate
            rows = torch.where(dropped, torch.full_like(rows, self.scale_decoder.unconditional_class), rows)
        return rows

    def image_gen_embeddings(
        self, image_tokens: torch.LongTensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: code indices (N×L) and condition (N×C) → LLM input embeddings of the pads (N×L×H).

        In training, `var_config.input_code_noise` of the codes the inputs are built from are replaced by random ones
        (the targets stay `image_tokens`)."""
        quantizer = self.vqvae.quantizer
        noise = self.config.var_config.input_code_noise
        if self.training and noise > 0:
            replaced = torch.rand(image_tokens.shape, device=image_tokens.device) < noise
            random_codes = torch.randint_like(image_tokens, self.config.vq_config.vocab_size)
            image_tokens = torch.where(replaced, random_codes, image_tokens)
        next_inputs = quantizer.next_scale_inputs(quantizer.split_scales(image_tokens))
        var_inputs = self.scale_decoder.teacher_forcing_input(condition, next_inputs.to(condition.dtype))
        return self.gen_input_projector(var_inputs)

    def image_logits(self, pad_hidden_states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """LLM states at the pads (N×L×H) → code logits (N×L×V), block-causal over scales."""
        var_states = self.gen_output_projector(pad_hidden_states)
        return self.scale_decoder(var_states, condition, attn_mask=self.scale_decoder.block_causal_mask)

    def _merge_image_gen_embeddings(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.Tensor,
        pixel_gen_values: torch.Tensor | None,
        image_tokens: torch.LongTensor | None,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        self.check_generation_tokens()
        if pixel_gen_values is not None and image_tokens is not None:
            raise ValueError("pass either pixel_gen_values or image_tokens, not both")
        if pixel_gen_values is not None:
            check_generation_images(pixel_gen_values)
            image_tokens = self.vqvae.tokenize(pixel_gen_values)
        else:
            check_image_tokens(image_tokens, self.config.vq_config.vocab_size, self.config.num_image_gen_tokens)
            image_tokens = image_tokens.to(input_ids.device)
            if self.training and torch.is_grad_enabled() and _is_sharded(self.vqvae):
                # a process whose batch draws nothing runs the encoder on a blank image (`runs_idle`): so does
                # this one, which has codes already, to issue the same collectives
                self._blank_image_tokens(input_ids.device)
        num_images, length = image_tokens.shape
        pad_mask = input_ids == self.config.image_gen_pad_token_id
        if int(pad_mask.sum()) != num_images * self.config.num_image_gen_tokens:
            raise ValueError(
                f"input_ids hold {int(pad_mask.sum())} <|image_gen_pad|> tokens but {num_images} generation image(s) "
                f"need {num_images} x {self.config.num_image_gen_tokens} (one block of Σ patch_nums² per image)"
            )
        drop_rate = self.config.var_config.condition_dropout if self.training else 0.0
        rows = self.condition_rows(num_images, input_ids.device, drop_rate)
        condition = self.scale_decoder.class_embed(rows)
        gen_embeds = self.image_gen_embeddings(image_tokens, condition)
        inputs_embeds = inputs_embeds.masked_scatter(
            pad_mask.unsqueeze(-1), gen_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
        )
        return inputs_embeds, image_tokens, condition

    def _check_prompt(self, input_ids, attention_mask, pixel_values, pixel_gen_values, image_tokens) -> None:
        """Checks of a prompt's first pass (later cached steps only add the model's own tokens)."""
        check_token_ids(input_ids, self.config.text_config.vocab_size)
        check_attention_mask(attention_mask, input_ids)
        # Placeholders without their images are read as text, as LLaVA's forward reads its `<image>` tokens
        # (transformers' common model tests feed random ids that hold them), with a warning here; `generate` and
        # `generate_images` refuse such prompts, and the training collator always pairs placeholders with images
        missing = {
            "<image>": (self.config.image_token_index, pixel_values is None, "pixel_values"),
            "<|image_gen_pad|>": (
                self.config.image_gen_pad_token_id,
                pixel_gen_values is None and image_tokens is None,
                "pixel_gen_values or image_tokens",
            ),
        }
        for token, (token_id, images_missing, what) in missing.items():
            if images_missing and token_id is not None and bool((input_ids == token_id).any()):
                logger.warning_once(
                    f"input_ids hold {token} tokens but no {what} were given: they are read as text tokens; pass "
                    f"the images (the processor returns them) or remove the {token} tokens"
                )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_gen_values: torch.FloatTensor | None = None,
        image_tokens: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VargptModelOutputWithPast:
        """
        input_ids (B×T) with `<image>` tokens for `pixel_values` (N×3×h×w) and `<|image_gen_pad|>` blocks for the
        images to draw, given as `pixel_gen_values` (M×3×H×W in [-1, 1]) or their codes `image_tokens` (M×L; the
        former name `image_gen_tokens` still works, with a warning). With `inputs_embeds` instead of `input_ids`,
        the `<image>` positions are the ones holding the `<image>` token's embedding. `cache` (formerly
        `past_key_values`) is the LLM's KV cache; `return_dict=False` returns a tuple.
        """
        image_tokens = _renamed_image_tokens(image_tokens, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        # a prompt's first pass is checked; a compiled graph is not (the checks branch on tensor values)
        if input_ids is not None and not torch.compiler.is_compiling() and (cache is None or cache.get_seq_length() == 0):
            self._check_prompt(input_ids, attention_mask, pixel_values, pixel_gen_values, image_tokens)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image_outputs = targets = condition = idle_tokens = idle_condition = None
        if pixel_values is not None:
            vision_kwargs = {
                "vision_feature_layer": vision_feature_layer,
                "vision_feature_select_strategy": vision_feature_select_strategy,
                **{name: kwargs[name] for name in ("output_attentions", "output_hidden_states") if name in kwargs},
            }
            inputs_embeds, image_outputs = self.merge_image_features(
                input_ids, inputs_embeds, pixel_values, **vision_kwargs
            )
        elif self.runs_idle(self.vision_tower, self.multi_modal_projector):
            inputs_embeds = self._idle_understanding(inputs_embeds)
        if pixel_gen_values is not None or image_tokens is not None:
            if input_ids is None:
                raise ValueError("generation images need input_ids to locate the <|image_gen_pad|> tokens")
            inputs_embeds, targets, condition = self._merge_image_gen_embeddings(
                input_ids, inputs_embeds, pixel_gen_values, image_tokens
            )
        elif self.config.supports_image_generation and self.runs_idle(*self._generation_modules()):
            inputs_embeds, idle_tokens, idle_condition = self._idle_generation(inputs_embeds)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_ARG: cache},
            **kwargs,
        )
        return VargptModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=getattr(outputs, CACHE_ARG, None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=None if image_outputs is None else image_outputs.pooler_output,
            image_outputs=image_outputs,
            image_tokens=targets,
            image_gen_condition=condition,
            idle_image_tokens=idle_tokens,
            idle_image_gen_condition=idle_condition,
        )


def _loss_divisors(num_items_in_batch) -> tuple:
    """(text divisor, image divisor) from `forward`'s `num_items_in_batch`; None means "this batch's own count"."""
    if num_items_in_batch is None:
        return None, None
    if isinstance(num_items_in_batch, Mapping):
        unknown = set(num_items_in_batch) - {"text", "image"}
        if unknown:
            raise ValueError(f"num_items_in_batch takes the keys 'text' and 'image', got {sorted(unknown)}")
        return num_items_in_batch.get("text"), num_items_in_batch.get("image")
    return num_items_in_batch, None


class VargptForConditionalGeneration(
    VargptImageGenerationMixin, VargptInterleavedGenerationMixin, VargptPreTrainedModel, GenerationMixin
):
    """VARGPT with its text head: `forward`/`generate` for text, `generate_images` (or
    `generate(..., generation_mode="image")`, from [`VargptImageGenerationMixin`]) for next-scale image generation."""

    _tied_weights_keys = {}

    def __init__(self, config: VargptConfig):
        super().__init__(config)
        self.model = VargptModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None and getattr(self.generation_config, "image_generation", None) is None:
            # The image sampling defaults go to generation_config.json on save, where users change them. A config
            # marked as derived from the model config drops such keys at load, so this one is rebuilt unmarked.
            settings = self.generation_config.to_dict()
            settings.pop("_from_model_config", None)
            settings["image_generation"] = dict(IMAGE_GENERATION_DEFAULTS)
            self.generation_config = GenerationConfig.from_dict(settings)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    @property
    def vqvae(self) -> VargptVQVAE:
        return self.model.vqvae

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """See [`VargptModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values, **kwargs)

    # ---- forward ------------------------------------------------------------------------------------------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_gen_values: torch.FloatTensor | None = None,
        image_tokens: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VargptCausalLMOutputWithPast:
        """
        Understanding, training and validation in one call. With `<|image_gen_start|> <|image_gen_pad|>×L
        <|image_gen_end|>` blocks and `pixel_gen_values` (or their codes `image_tokens`) it also returns
        `image_logits` and
        the image loss. In train mode condition dropout and drop-path follow the config; in eval mode the same call is
        deterministic. `labels` are B×T (-100 = ignored); image pads are never text targets.

        `num_items_in_batch` (what transformers' `Trainer` passes to normalise over a whole accumulated and/or
        distributed batch) replaces this batch's own counts as the divisor of the summed losses: a number (int or
        0-d tensor) counts the text targets, and the image loss stays this batch's mean; a mapping
        `{"text": ..., "image": ...}` gives both counts (text targets, image codes to predict).

        `shift_labels` (B×T, optional) are labels already shifted (position t holds the target of the logits at t),
        as transformers' causal-LM loss takes them (e.g. from context-parallel training); they replace the shift of
        `labels`. `return_dict=False` returns a tuple.
        """
        text_count, image_count = _loss_divisors(kwargs.pop("num_items_in_batch", None))
        shift_labels = kwargs.pop("shift_labels", None)
        image_tokens = _renamed_image_tokens(image_tokens, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_gen_values=pixel_gen_values,
            image_tokens=image_tokens,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep])

        image_logits = image_loss = text_loss = None
        if outputs.image_tokens is not None:
            pad_mask = input_ids == self.config.image_gen_pad_token_id
            pad_states = hidden_states[pad_mask].view(*outputs.image_tokens.shape, -1)
            image_logits = self.model.image_logits(pad_states, outputs.image_gen_condition)
            image_targets = outputs.image_tokens.flatten().to(image_logits.device)
            code_losses = F.cross_entropy(image_logits.float().flatten(0, 1), image_targets, reduction="none")
            if self.config.var_config.loss_weighting == "scale":
                weights = self.model.scale_decoder.scale_loss_weights().to(code_losses.device)
                code_losses = code_losses.view(outputs.image_tokens.shape) * weights
            image_total = code_losses.sum()
            image_count = image_targets.numel() if image_count is None else image_count
            image_loss = image_total / torch.as_tensor(image_count, device=image_total.device).clamp(min=1)
        if labels is not None or shift_labels is not None:
            text_loss = self._text_loss(logits, labels, shift_labels, input_ids, keep, text_count)
        losses = [l for l in (text_loss, image_loss) if l is not None]
        if outputs.idle_image_tokens is not None:
            idle_loss = self._idle_image_loss(
                hidden_states, outputs.idle_image_tokens, outputs.idle_image_gen_condition
            )
            losses = [*losses, idle_loss] if losses else losses  # no loss without labels, dummy or not
        return VargptCausalLMOutputWithPast(
            loss=sum(losses) if losses else None,
            text_loss=text_loss,
            image_loss=image_loss,
            logits=logits,
            image_logits=image_logits,
            image_tokens=outputs.image_tokens,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
        )

    def _idle_image_loss(
        self, hidden_states: torch.Tensor, tokens: torch.LongTensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """The output half of the dummy drawing (see `VargptModel.runs_idle`): the output projector and the VAR
        blocks on L copies of the first LLM state, as real pads would be; returns their code loss × 0 (a 0-d tensor
        whose gradient reaches every module the real image loss reaches, with value 0)."""
        pad_states = hidden_states[:1, :1].expand(1, tokens.shape[1], -1)
        logits = self.model.image_logits(pad_states, condition)
        total = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten().to(logits.device), reduction="sum")
        return total * 0

    def _text_loss(self, logits, labels, shift_labels, input_ids, keep, num_items_in_batch) -> torch.Tensor:
        """Cross-entropy of the logits at position t against `labels[t + 1]`, or `shift_labels[t]` when given
        (image pads never count).

        `keep` says which positions the logits cover: all of them (the usual shift), or a 1-D tensor of positions,
        which lets training skip the LM head where no text target follows (e.g. the L pads of an image to draw).
        """
        pad_id = self.config.image_gen_pad_token_id
        if shift_labels is not None:
            # shift_labels[t] is the label of token t + 1: a pad there is no text target
            shift_labels = shift_labels.to(logits.device)
            if input_ids is not None and pad_id is not None:
                pad_next = F.pad((input_ids == pad_id)[:, 1:], (0, 1), value=False).to(shift_labels.device)
                shift_labels = shift_labels.masked_fill(pad_next, self.config.ignore_index)
            if torch.is_tensor(keep):
                targets = shift_labels[:, keep.to(shift_labels.device)]
            elif logits.shape[1] == shift_labels.shape[1]:
                targets = shift_labels
            else:
                raise ValueError(
                    f"shift_labels cover {shift_labels.shape[1]} positions but logits {logits.shape[1]}: with "
                    "shift_labels, logits_to_keep must be 0 (all positions) or a tensor of positions"
                )
            return self._summed_text_loss(logits, targets.flatten(), num_items_in_batch)
        labels = labels.to(logits.device)
        if input_ids is not None and pad_id is not None:
            labels = labels.masked_fill(input_ids == pad_id, self.config.ignore_index)
        if torch.is_tensor(keep):
            positions = keep.to(labels.device)
            if positions.ndim != 1 or bool((positions >= labels.shape[1] - 1).any()):
                raise ValueError(
                    "with labels, logits_to_keep must be a 1-D tensor of positions before the last one "
                    f"(each predicts the label after it); got {tuple(positions.shape)} for {labels.shape[1]} positions"
                )
            logits, targets = logits, labels[:, positions + 1]
        elif logits.shape[1] == labels.shape[1]:
            logits, targets = logits[:, :-1], labels[:, 1:]
        else:
            raise ValueError(
                f"labels cover {labels.shape[1]} positions but logits {logits.shape[1]}: with labels, logits_to_keep "
                "must be 0 (all positions) or a tensor of positions"
            )
        return self._summed_text_loss(logits, targets.flatten(), num_items_in_batch)

    def _summed_text_loss(self, logits, targets, num_items_in_batch) -> torch.Tensor:
        """Summed cross-entropy of logits (B×t×V) against flat targets (B·t), over the target count."""
        if num_items_in_batch is None:
            num_items_in_batch = (targets != self.config.ignore_index).sum()
        total = F.cross_entropy(
            logits.float().flatten(0, 1), targets, ignore_index=self.config.ignore_index, reduction="sum"
        )
        # a batch with no supervised token contributes 0, not NaN
        return total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """Images, to read or to draw, are embedded once, when the prompt is read; later steps only see new tokens.
        The prompt is read at the first iteration, and also whenever the cache is still empty: an assistant model's
        first pass in assisted decoding reads the whole prompt although `is_first_iteration` is False for it."""
        reads_prompt = bool(is_first_iteration) or (
            cache is not None
            and any(kwargs.get(name) is not None for name in IMAGE_INPUTS)
            and cache.get_seq_length() == 0
        )
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=reads_prompt,
            **kwargs,
        )
        if not reads_prompt and kwargs.get("use_cache", True):
            for name in IMAGE_INPUTS:
                model_inputs.pop(name, None)
        return model_inputs

    # ---- generation entry point ---------------------------------------------------------------------------------
    def generate(self, inputs: torch.Tensor | None = None, generation_mode: str = "text", **kwargs):
        """`generation_mode="text"`: the standard transformers `generate`. `"image"`: next-scale image generation,
        see [`generate_images`]. `"interleaved"`: text whose answer may draw images (`<|image_gen_start|>` triggers
        a drawing, then the answer continues after `<|image_gen_end|>`), see [`generate_interleaved`]."""
        if generation_mode == "text":
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            reads_ids = isinstance(prompt, torch.Tensor) and kwargs.get("inputs_embeds") is None
            if reads_ids and not _continues(kwargs):
                check_placeholders(
                    prompt,
                    self.config.image_token_index,
                    self.config.image_gen_pad_token_id,
                    has_pixel_values=kwargs.get("pixel_values") is not None,
                    has_gen_images=any(kwargs.get(name) is not None for name in IMAGE_INPUTS[1:]),
                )
            with sliced_cpu_matmuls(self):  # one row per new token: thin products (see cpu_matmul)
                return super().generate(inputs, **kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError(f"generation_mode={generation_mode!r} needs input_ids")
        if generation_mode == "image":
            return self.generate_images(input_ids, **kwargs)
        if generation_mode == "interleaved":
            return self.generate_interleaved(input_ids, **kwargs)
        raise ValueError(f"generation_mode must be 'text', 'image' or 'interleaved', got {generation_mode!r}")


__all__ = [
    "VargptPreTrainedModel",
    "VargptModel",
    "VargptForConditionalGeneration",
    "VargptModelOutputWithPast",
    "VargptCausalLMOutputWithPast",
    "RELEASED_KEY_MAPPING",
]
