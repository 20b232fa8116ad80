"""Configuration of VARGPT: a LLaVA-1.5 reader plus a VAR next-scale image writer.

The released `config.json` (model_type ``vargpt_llava``) only records the LLaVA half; the released code hard-codes
the VAR decoder and VQVAE sizes. Here every one of those sizes is a config field, under the names the released
hyper-parameters use (``patch_nums``, ``vq_*``, ``var_*``, ``image_gen_size``), so that
``from_pretrained(released_dir, patch_nums=[1, 2, 3, 4], var_depth=2, ...)`` overrides them and ``save_pretrained``
writes them down.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The released VARGPT-v1 values (VARGPT.md): VAR-d30 decoder, VQVAE f16 with 4096 codes, 256x256 images.
RELEASED_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

SPECIAL_TOKEN_NAMES = ("image_gen_start", "image_gen_end", "image_gen_pad")


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

    def __post_init__(self, **kwargs):
        self.channel_multipliers = [int(m) for m in self.channel_multipliers]
        self.scale_sizes = [int(s) for s in self.scale_sizes]
        super().__post_init__(**kwargs)
        self.validate_sizes()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def num_image_tokens(self) -> int:
        return sum(s * s for s in self.scale_sizes)

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
        if self.base_channels % 32 or any((self.base_channels * m) % 32 for m in self.channel_multipliers):
            raise ValueError(
                f"every VQVAE stage width must be a multiple of 32 (GroupNorm(32)); got base_channels="
                f"{self.base_channels}, channel_multipliers={self.channel_multipliers}"
            )


class VargptConfig(PreTrainedConfig):
    r"""
    Configuration of [`VargptForConditionalGeneration`].

    It loads the released `config.json` as it is (`special_tokens`, `image_token_index`, `vision_config`,
    `text_config`, ...) and adds the generation half's sizes under the released hyper-parameter names:

    Args:
        patch_nums (`list[int]`): side of the code map at each scale (680 tokens for the released 1..16).
        image_gen_size (`int`): side of generated images in pixels.
        vq_vocab_size, vq_z_channels, vq_ch, vq_ch_mult, vq_num_res_blocks, vq_quant_resi, vq_share_quant_resi:
            the VQVAE (see [`VargptVQVAEConfig`]).
        var_depth, var_embed_dim, var_num_heads, var_mlp_ratio, var_attn_l2_norm, var_shared_aln, var_norm_eps:
            the VAR decoder blocks.
        var_num_classes (`int`, *optional*): rows of the condition embedding minus one; defaults to
            `image_gen_start_token_id + 1` (the last row is the unconditional one).
        var_drop_path_rate (`float`): stochastic depth of the VAR blocks in training (released: 0.1 * depth / 24).
        var_cond_drop_rate (`float`): probability of replacing the condition by the unconditional row in training.
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
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 32000
    image_seq_length: int = 576
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"
    vision_feature_layer: int = -2
    ignore_index: int = -100
    pad_token_id: int | None = 32001
    tie_word_embeddings: bool = False
    special_tokens: dict | None = None

    # generation half; names follow the released hyper-parameters
    patch_nums: list[int] | tuple[int, ...] = RELEASED_PATCH_NUMS
    image_gen_size: int = 256
    vq_vocab_size: int = 4096
    vq_z_channels: int = 32
    vq_ch: int = 160
    vq_ch_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    vq_num_res_blocks: int = 2
    vq_quant_resi: float = 0.5
    vq_share_quant_resi: int = 4
    var_depth: int = 30
    var_embed_dim: int = 1920
    var_num_heads: int = 30
    var_mlp_ratio: float = 4.0
    var_attn_l2_norm: bool = True
    var_shared_aln: bool = False
    var_norm_eps: float = 1e-6
    var_num_classes: int | None = None
    var_drop_path_rate: float = 0.125
    var_cond_drop_rate: float = 0.1

    def __post_init__(self, **kwargs: Any):
        self.patch_nums = [int(p) for p in self.patch_nums]
        self.vq_ch_mult = [int(m) for m in self.vq_ch_mult]
        if self.special_tokens is None:
            self.special_tokens = {
                "image_gen_start": "<|image_gen_start|>",
                "image_gen_start_token_id": 32002,
                "image_gen_end": "<|image_gen_end|>",
                "image_gen_end_token_id": 32003,
                "image_gen_pad": "<|image_gen_pad|>",
                "image_gen_pad_token_id": 32004,
            }
        # `hidden_size` / `vocab_size` at the top level are written by the released config; the sub-config rules.
        kwargs.pop("hidden_size", None)
        kwargs.pop("vocab_size", None)
        super().__post_init__(**kwargs)
        if self.var_num_classes is None:
            # without generation tokens the model can still read images; its (unused) condition table keeps 2 rows
            start = self.image_gen_start_token_id
            self.var_num_classes = start + 1 if start is not None else 1
        if self.var_embed_dim % self.var_num_heads:
            raise ValueError(
                f"var_embed_dim={self.var_embed_dim} must be divisible by var_num_heads={self.var_num_heads}"
            )
        if self.var_num_classes is not None and self.image_gen_start_token_id is not None:
            if self.image_gen_start_token_id >= self.var_num_classes:
                raise ValueError(
                    f"var_num_classes={self.var_num_classes} has no row for the condition "
                    f"image_gen_start_token_id={self.image_gen_start_token_id}"
                )
        self.vqvae_config()  # validates the VQVAE sizes against image_gen_size early

    # ---- convenient views -------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

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
        return all(self._special_id(name) is not None for name in SPECIAL_TOKEN_NAMES)

    @property
    def num_image_gen_tokens(self) -> int:
        """Tokens of one generated image: the sum of squared scale sides (680 for the released model)."""
        return sum(p * p for p in self.patch_nums)

    def vqvae_config(self) -> VargptVQVAEConfig:
        return VargptVQVAEConfig(
            vocab_size=self.vq_vocab_size,
            z_channels=self.vq_z_channels,
            base_channels=self.vq_ch,
            channel_multipliers=self.vq_ch_mult,
            num_res_blocks=self.vq_num_res_blocks,
            residual_ratio=self.vq_quant_resi,
            num_residual_filters=self.vq_share_quant_resi,
            scale_sizes=self.patch_nums,
            image_size=self.image_gen_size,
        )


__all__ = ["VargptConfig", "VargptVQVAEConfig"]
