"""Configuration of VARGPT: a LLaVA-1.5 reader plus a VAR next-scale image writer.

`VargptConfig` composes four sub-configs, as Janus composes its `vq_config`: `vision_config` (CLIP), `text_config`
(Llama), `vq_config` ([`VargptVQVAEConfig`]: the multi-scale VQVAE and the scale sizes) and `var_config`
([`VargptVarConfig`]: the VAR decoder blocks). The released `config.json` (model_type ``vargpt_llava``) records only
the LLaVA half; the released code hard-codes the rest under flat hyper-parameter names (``patch_nums``, ``vq_*``,
``var_*``, ``image_gen_size``). Those names are still accepted wherever a config is built or loaded
(``from_pretrained(released_dir, patch_nums=[1, 2, 3, 4], var_depth=2, ...)``, flat keys in a ``config.json``) and
land in the sub-configs; ``save_pretrained`` writes the nested form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .released_checkpoint_vargpt import RELEASED_FLAT_NAMES, RELEASED_PATCH_NUMS, released_sizes_for
from .tokens_vargpt import (
    GENERATION_TOKENS,
    IMAGE_TOKEN,
    PAD_TOKEN,
    RELEASED_TOKEN_IDS,
    num_image_gen_tokens,
    special_tokens_entry,
)

class VargptVQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of the multi-scale residual VQVAE ([`VargptVQVAE`]).

    Args:
        vocab_size (`int`): number of codebook entries (V).
        z_channels (`int`): width of a code vector (Cvae).
        base_channels (`int`): width of the first conv stage of encoder and decoder.
        channel_multipliers (`list[int]`): per-stage width multipliers; `len - 1` stages downsample by 2.
        num_res_blocks (`int`): resnet blocks per encoder stage (decoder stages use one more).
        residual_ratio (`float`): mix of the Φ conv in `h*(1-r) + conv(h)*r`; 0 disables Φ.
        num_residual_filters (`int`): how many Φ convs are shared over the scales (0: one per scale).
        scale_sizes (`list[int]`): side of the code map at each scale, small to large.
        image_size (`int`): side of the images, `scale_sizes[-1] * 2 ** (len(channel_multipliers) - 1)`.
        norm_groups (`int`): groups of every GroupNorm (released: 32). A small VQVAE needs fewer groups than its
            widths: with one channel per group, GroupNorm is an instance norm that erases each image's mean colour.
    """

    model_type = "vargpt_vqvae"

    vocab_size: int = 4096
    z_channels: int = 32
    base_channels: int = 160
    channel_multipliers: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    residual_ratio: float = 0.5
    num_residual_filters: int = 4
    scale_sizes: list[int] | tuple[int, ...] = RELEASED_PATCH_NUMS
    image_size: int = 256
    norm_groups: int = 32

    def __post_init__(self, **kwargs):
        self.channel_multipliers = [int(m) for m in self.channel_multipliers]
        self.scale_sizes = [int(s) for s in self.scale_sizes]
        super().__post_init__(**kwargs)
        self.validate_sizes()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def num_image_gen_tokens(self) -> int:
        """Codes of one image: Σ s² over `scale_sizes`."""
        return num_image_gen_tokens(self.scale_sizes)

    def validate_sizes(self) -> None:
        if len(self.scale_sizes) < 2:
            raise ValueError(f"scale_sizes needs at least two scales, got {self.scale_sizes}")
        if list(self.scale_sizes) != sorted(set(self.scale_sizes)):
            raise ValueError(f"scale_sizes must be strictly increasing, got {self.scale_sizes}")
        if self.scale_sizes[-1] * self.downsample_factor != self.image_size:
            raise ValueError(
                f"image_size={self.image_size} does not match the last scale {self.scale_sizes[-1]} times the "
                f"VQVAE downsampling {self.downsample_factor} (= {self.scale_sizes[-1] * self.downsample_factor})"
            )
        groups = self.norm_groups
        widths = [self.base_channels] + [self.base_channels * m for m in self.channel_multipliers]
        if groups < 1 or any(width % groups for width in widths):
            raise ValueError(
                f"every VQVAE stage width must be a multiple of norm_groups={groups} (GroupNorm); got base_channels="
                f"{self.base_channels}, channel_multipliers={self.channel_multipliers}"
            )


LOSS_WEIGHTINGS = ("token", "scale")


class VargptVarConfig(PreTrainedConfig):
    r"""
    Configuration of VAR's next-scale decoder ([`VargptScaleDecoder`]): AdaLN transformer blocks between the LLM's
    projected hidden states and the code logits.

    Args:
        num_hidden_layers (`int`): number of blocks (VAR's depth; 30 released).
        hidden_size (`int`): block width C.
        num_attention_heads (`int`): heads per block; must divide `hidden_size`.
        mlp_ratio (`float`): MLP width / `hidden_size`.
        attention_l2_norm (`bool`): cosine attention with a learnt per-head temperature.
        shared_adaln (`bool`): one AdaLN projection shared by all blocks (plus a per-block offset).
        layer_norm_eps (`float`): epsilon of the blocks' LayerNorms.
        num_classes (`int`, *optional*): rows of the condition embedding minus one (the last row is the unconditional
            one); [`VargptConfig`] defaults it to `image_gen_start_token_id + 1`.
        drop_path_rate (`float`): stochastic depth of the deepest block in training (released: 0.1 * depth / 24).
        condition_dropout (`float`): probability of replacing the condition by the unconditional row in training.
        loss_weighting (`str`): how the image loss weighs the codes: `"token"` (every code the same, as released) or
            `"scale"` (every scale the same in total, a code of a scale of side s weighs L / (S·s²) for L codes
            over S scales). Per token, the one code of the first scale, which fixes the picture's colours, is 1/L of
            the loss; a small model trained from scratch learns it far sooner when scales weigh the same.
        input_code_noise (`float`): in training, the probability that a teacher-forced input code (what a scale is
            built from, not the target) is replaced by a uniformly random one; 0 as released. Teacher forcing shows
            the model its earlier scales always right, so it may learn to read the picture's colours from them rather
            than from the prompt, which is what carries a combination never seen; noise makes it rely on the prompt.
    """

    model_type = "vargpt_var"

    num_hidden_layers: int = 30
    hidden_size: int = 1920
    num_attention_heads: int = 30
    mlp_ratio: float = 4.0
    attention_l2_norm: bool = True
    shared_adaln: bool = False
    layer_norm_eps: float = 1e-6
    num_classes: int | None = None
    drop_path_rate: float = 0.125
    condition_dropout: float = 0.1
    loss_weighting: str = "token"
    input_code_noise: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not 0.0 <= self.input_code_noise < 1.0:
            raise ValueError(f"var_config.input_code_noise must be in [0, 1), got {self.input_code_noise}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"var_config.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"var_config.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )


class VargptConfig(PreTrainedConfig):
    r"""
    Configuration of [`VargptForConditionalGeneration`].

    It loads the released `config.json` as it is (`special_tokens`, `image_token_index`, `vision_config`,
    `text_config`, ...), and the released flat hyper-parameter names (`RELEASED_FLAT_NAMES`: `patch_nums`,
    `image_gen_size`, `vq_*`, `var_*`) as keyword arguments or `config.json` keys; they fill the sub-configs.

    Args:
        vision_config, text_config: CLIP vision tower and Llama LLM.
        vq_config ([`VargptVQVAEConfig`] or `dict`): the VQVAE, the scale sizes and the generated image size.
        var_config ([`VargptVarConfig`] or `dict`): the VAR decoder blocks.
        special_tokens (`dict`): ids and strings of `<|image_gen_start|>`, `<|image_gen_end|>`, `<|image_gen_pad|>`.
    """

    model_type = "vargpt_llava"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "intermediate_size": 4096,
                "hidden_size": 1024,
                "patch_size": 14,
                "image_size": 336,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32064}
        ),
        "vq_config": VargptVQVAEConfig,
        "var_config": VargptVarConfig,
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vq_config: dict | PreTrainedConfig | None = None
    var_config: dict | PreTrainedConfig | None = None
    image_token_index: int = RELEASED_TOKEN_IDS[IMAGE_TOKEN]
    image_seq_length: int = 576
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"
    vision_feature_layer: int | list[int] = -2
    ignore_index: int = -100
    pad_token_id: int | None = RELEASED_TOKEN_IDS[PAD_TOKEN]
    tie_word_embeddings: bool = False
    special_tokens: dict | None = None

    def __post_init__(self, **kwargs: Any):
        if self.special_tokens is None:
            self.special_tokens = special_tokens_entry(RELEASED_TOKEN_IDS)
        # `hidden_size` / `vocab_size` at the top level are written by the released config; the sub-config rules.
        kwargs.pop("hidden_size", None)
        kwargs.pop("vocab_size", None)
        flat = {name: kwargs.pop(name) for name in list(kwargs) if name in RELEASED_FLAT_NAMES}
        for sub_config in ("vq_config", "var_config"):
            fields = {
                field: flat[name]
                for name, (owner, field) in RELEASED_FLAT_NAMES.items()
                if owner == sub_config and name in flat
            }
            setattr(self, sub_config, _with_fields(getattr(self, sub_config), fields))
        super().__post_init__(**kwargs)
        start = self.image_gen_start_token_id
        if self.var_config.num_classes is None:
            # without generation tokens the model can still read images; its (unused) condition table keeps 2 rows
            self.var_config.num_classes = start + 1 if start is not None else 1
        if start is not None and start >= self.var_config.num_classes:
            raise ValueError(
                f"var_config.num_classes={self.var_config.num_classes} (var_num_classes) has no row for the condition "
                f"image_gen_start_token_id={start}"
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "VargptConfig":
        """Released flat names among the keyword arguments (`from_pretrained(dir, var_depth=2)`) override the
        loaded sizes: they join the dict so that the sub-configs are built (and checked) once, with all of them."""
        flat = {name: kwargs.pop(name) for name in list(kwargs) if name in RELEASED_FLAT_NAMES}
        source = kwargs.get("name_or_path")
        if source and Path(source).is_dir():
            # a released-layout directory lacks the VAR / VQVAE sizes: read them from its weights' shapes
            flat.update(released_sizes_for(Path(source), config_dict, flat))
        return super().from_dict({**config_dict, **flat}, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VargptConfig":
        """As `PreTrainedConfig.from_pretrained`; the directory is passed on to `from_dict` (see there)."""
        kwargs.setdefault("name_or_path", str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ---- convenient views -------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        # resizing the token embeddings records the new size here; the LLM's config is where it lives
        self.text_config.vocab_size = value

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list: the CLIP layers whose features are concatenated (one by default)."""
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)

    def _special_id(self, name: str) -> int | None:
        return (self.special_tokens or {}).get(f"{name}_token_id")

    @property
    def image_gen_start_token_id(self) -> int | None:
        return self._special_id("image_gen_start")

    @property
    def image_gen_end_token_id(self) -> int | None:
        return self._special_id("image_gen_end")

    @property
    def image_gen_pad_token_id(self) -> int | None:
        return self._special_id("image_gen_pad")

    @property
    def supports_image_generation(self) -> bool:
        return all(self._special_id(name) is not None for name in GENERATION_TOKENS)

    @property
    def num_image_gen_tokens(self) -> int:
        """Tokens of one generated image: the sum of squared scale sides (680 for the released model)."""
        return self.vq_config.num_image_gen_tokens


def _released_name_view(sub_config: str, field: str) -> property:
    def read(config: VargptConfig):
        return getattr(getattr(config, sub_config), field)

    return property(read, doc=f"`{sub_config}.{field}` under its released name (read-only).")


# `config.patch_nums`, `config.var_depth`, ... keep reading as before; the sub-configs are the one place to write.
for _name, (_sub_config, _field) in RELEASED_FLAT_NAMES.items():
    setattr(VargptConfig, _name, _released_name_view(_sub_config, _field))


def _with_fields(sub_config: dict | PreTrainedConfig | None, fields: dict[str, Any]) -> dict | PreTrainedConfig | None:
    """A sub-config (as given: None, a dict or a config) with `fields` set, as a dict to build it from."""
    if not fields:
        return sub_config
    if sub_config is None:
        return dict(fields)
    if isinstance(sub_config, PreTrainedConfig):
        sub_config = sub_config.to_dict()
    return {**sub_config, **fields}


__all__ = ["VargptConfig", "VargptVQVAEConfig", "VargptVarConfig", "RELEASED_FLAT_NAMES"]
