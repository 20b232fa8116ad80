"""VAR's next-scale decoder: AdaLN transformer blocks that turn per-position features into code logits.

In VARGPT the LLM sits between VAR's input embeddings and its blocks: scale token maps are embedded here
(`first_scale_input`, `scale_input`), projected into the LLM, and the LLM's hidden states come back (projected to
the VAR width) through `forward`, which runs the blocks under the AdaLN condition and the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_vargpt import VargptConfig, VargptVarConfig
from .offloading import own_weights_loaded


class ScaleKVCache:
    """State of the VAR blocks across the scales of one generation: keys and values of the scales seen so far
    (one entry per block, B×heads×l×head_dim), and the AdaLN modulations, which depend only on the condition and
    so are computed once per generation rather than once per scale."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.modulations: dict[object, tuple[torch.Tensor, ...]] = {}

    def modulation(self, key: object, compute) -> tuple[torch.Tensor, ...]:
        if key not in self.modulations:
            self.modulations[key] = compute()
        return self.modulations[key]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            key = torch.cat((self.keys[layer], key), dim=2)
            value = torch.cat((self.values[layer], value), dim=2)
        self.keys[layer], self.values[layer] = key, value
        return key, value


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class VarSelfAttention(nn.Module):
    """Multi-head attention with VAR's q/v-only bias and optional cosine (L2-normalised) attention."""

    def __init__(self, config: VargptVarConfig, layer_idx: int):
        super().__init__()
        width, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.layer_idx = layer_idx
        self.l2_norm = config.attention_l2_norm
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        if self.l2_norm:
            # learnt per-head temperature, capped at 100
            self.logit_scale = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))
        self.out_proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: ScaleKVCache | None = None
    ) -> torch.Tensor:
        batch, length, width = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        # call the module (not F.linear on its weight) so that adapters wrapping `qkv` (LoRA) take part
        qkv = (self.qkv(x) + bias).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B×heads×l×head_dim
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.logit_scale.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(self.head_dim)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class VarMLP(nn.Module):
    def __init__(self, config: VargptVarConfig):
        super().__init__()
        hidden = round(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VarBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block whose LayerNorm scale/shift and residual gains come from the condition (AdaLN)."""

    def __init__(self, config: VargptVarConfig, layer_idx: int, drop_path_rate: float):
        super().__init__()
        width = config.hidden_size
        self.width, self.eps, self.drop_path_rate = width, config.layer_norm_eps, drop_path_rate
        self.attn = VarSelfAttention(config, layer_idx)
        self.mlp = VarMLP(config)
        self.shared_adaln = config.shared_adaln
        if self.shared_adaln:
            self.adaln_offset = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)
        else:
            self.adaln = nn.Linear(width, 6 * width)

    def modulation(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """condition: B×C, or B×1×6×C when the AdaLN projection is shared → six B×1×C tensors."""
        if self.shared_adaln:
            return (self.adaln_offset + condition).unbind(2)
        return self.adaln(F.silu(condition)).view(-1, 1, 6, self.width).unbind(2)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: ScaleKVCache | None = None,
    ) -> torch.Tensor:
        if cache is None:
            modulation = self.modulation(condition)
        else:
            modulation = cache.modulation(self.attn.layer_idx, lambda: self.modulation(condition))
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation
        normed = F.layer_norm(x, (self.width,), eps=self.eps)
        attn = self.attn(normed * (scale1 + 1) + shift1, attn_mask=attn_mask, cache=cache)
        x = x + drop_path(attn * gamma1, self.drop_path_rate, self.training)
        normed = F.layer_norm(x, (self.width,), eps=self.eps)
        x = x + drop_path(self.mlp(normed * (scale2 + 1) + shift2) * gamma2, self.drop_path_rate, self.training)
        return x


class VarHeadNorm(nn.Module):
    """AdaLN before the code head: LayerNorm with condition-dependent scale and shift."""

    def __init__(self, config: VargptVarConfig):
        super().__init__()
        self.width, self.eps = config.hidden_size, config.layer_norm_eps
        self.adaln = nn.Linear(config.hidden_size, 2 * config.hidden_size)

    def modulation(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """condition B×C → scale, shift (each B×1×C)."""
        return self.adaln(F.silu(condition)).view(-1, 1, 2, self.width).unbind(2)

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, cache: ScaleKVCache | None = None
    ) -> torch.Tensor:
        if cache is None:
            scale, shift = self.modulation(condition)
        else:
            scale, shift = cache.modulation("head", lambda: self.modulation(condition))
        return F.layer_norm(x, (self.width,), eps=self.eps) * (scale + 1) + shift


class VargptScaleDecoder(nn.Module):
    """VAR (`vargpt_gen` in the released checkpoint): scale embeddings, AdaLN blocks and the code head.

    Sizes: C = `var_config.hidden_size`, Cvae = `vq_config.z_channels`, V = `vq_config.vocab_size`,
    L = Σ s² over `vq_config.scale_sizes`.
    """

    def __init__(self, config: VargptConfig):
        super().__init__()
        var_config, vq_config = config.var_config, config.vq_config
        width = var_config.hidden_size
        self.scale_sizes = list(vq_config.scale_sizes)
        self.num_tokens = vq_config.num_image_gen_tokens
        self.unconditional_class = var_config.num_classes
        self.code_embed = nn.Linear(vq_config.z_channels, width)
        self.class_embed = nn.Embedding(var_config.num_classes + 1, width)
        self.start_pos_embed = nn.Parameter(torch.zeros(1, self.scale_sizes[0] ** 2, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, width))
        self.scale_embed = nn.Embedding(len(self.scale_sizes), width)
        if var_config.shared_adaln:
            self.shared_adaln = nn.Linear(width, 6 * width)
        # stochastic depth grows linearly over the blocks (plain Python: this runs under the meta device too)
        depth = var_config.num_hidden_layers
        rates = [var_config.drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(VarBlock(var_config, i, rates[i]) for i in range(depth))
        self.head_norm = VarHeadNorm(var_config)
        self.head = nn.Linear(width, vq_config.vocab_size)

        scale_ids, block_causal_mask = self.derived_buffers()
        self.register_buffer("scale_ids", scale_ids, persistent=False)
        self.register_buffer("block_causal_mask", block_causal_mask, persistent=False)
        self.scale_bounds = []
        start = 0
        for s in self.scale_sizes:
            self.scale_bounds.append((start, start + s * s))
            start += s * s

    def derived_buffers(self) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Scale index of every position (L,) and the block-causal mask (L×L, True = may attend):
        a token sees every token of its own and earlier scales."""
        scale_ids = torch.cat([torch.full((s * s,), i) for i, s in enumerate(self.scale_sizes)])
        return scale_ids, scale_ids[:, None] >= scale_ids[None, :]

    def scale_loss_weights(self) -> torch.Tensor:
        """Weight of each code in a scale-weighted image loss (L,), summing to L: L / (S·s²) for the codes of a scale
        of side s, so each of the S scales weighs L / S in total (`var_config.loss_weighting="scale"`)."""
        sides = torch.tensor(self.scale_sizes, dtype=torch.float32, device=self.scale_ids.device)
        return self.num_tokens / (len(self.scale_sizes) * sides[self.scale_ids] ** 2)

    def scale_position_embed(self, scale_index: int) -> torch.Tensor:
        """Additive embedding of one scale's positions (1×s²×C): its level embedding + the absolute positions."""
        begin, end = self.scale_bounds[scale_index]
        # the embedding through its forward (not `.weight`): offload hooks load a module's weights only there
        with own_weights_loaded(self):
            return self.scale_embed(self.scale_ids[begin:end]) + self.pos_embed[:, begin:end]

    def block_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """What the blocks receive: the class embedding, or its shared AdaLN projection (B×1×6×C)."""
        if hasattr(self, "shared_adaln"):
            return self.shared_adaln(F.silu(condition)).view(-1, 1, 6, condition.shape[-1])
        return condition

    def first_scale_input(self, condition: torch.Tensor) -> torch.Tensor:
        """condition (B×C) → the first scale's input tokens (B×s₁²×C)."""
        positions = self.scale_position_embed(0)
        with own_weights_loaded(self):
            return condition[:, None] + self.start_pos_embed + positions

    def scale_input(self, scale_index: int, token_map: torch.Tensor) -> torch.Tensor:
        """Downsampled f̂ for scale `scale_index` (B×s²×Cvae) → that scale's input tokens (B×s²×C)."""
        return self.code_embed(token_map) + self.scale_position_embed(scale_index)

    def teacher_forcing_input(self, condition: torch.Tensor, next_scale_inputs: torch.Tensor) -> torch.Tensor:
        """All scales' inputs at once for training: condition (B×C), B×(L-s₁²)×Cvae → B×L×C."""
        start = condition[:, None] + self.start_pos_embed
        x = torch.cat((start, self.code_embed(next_scale_inputs)), dim=1)
        return x + self.scale_embed(self.scale_ids)[None] + self.pos_embed

    def forward(
        self,
        hidden_states: torch.Tensor,
        condition: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: ScaleKVCache | None = None,
    ) -> torch.Tensor:
        """hidden_states B×l×C (LLM states mapped to VAR width), condition B×C → code logits B×l×V."""
        if cache is None:
            block_condition = self.block_condition(condition)
        else:
            block_condition = cache.modulation("shared", lambda: self.block_condition(condition))
        for block in self.blocks:
            hidden_states = block(hidden_states, block_condition, attn_mask=attn_mask, cache=cache)
        return self.head(self.head_norm(hidden_states, condition, cache=cache))


__all__ = ["VargptScaleDecoder", "ScaleKVCache"]
