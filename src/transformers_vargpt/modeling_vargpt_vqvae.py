"""VAR's multi-scale residual VQVAE: an image becomes K code maps of growing size, and back.

Encoding quantises the feature map f (B×Cvae×h×w) scale by scale: the residual is area-downsampled to the scale's
side, snapped to its nearest codebook vector, bicubic-upsampled back, filtered by a Φ conv, and subtracted. The sum
of the filtered code maps is f̂, which the conv decoder turns into an image in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_vargpt import VargptVQVAEConfig
from .offloading import own_weights_loaded
from .tokens_vargpt import num_image_gen_tokens


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class VQResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without autograd the activations are updated in place: at 256² one fresh 16 MiB tensor less per op, and
        # on CPU fresh memory costs page faults that slow these memory-bound ops down (BENCHMARKS.md, Findings).
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(F.silu(self.norm2(h), inplace=inplace))
        shortcut = self.nin_shortcut(x)
        return h.add_(shortcut) if inplace else shortcut + h


class VQAttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = _group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(h.transpose(-1, -2).reshape(batch, channels, height, width))


class VQDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as the taming-transformers VQGAN


class VQUpsample(nn.Module):
    """×2 nearest upsampling followed by a 3×3 conv, computed without the 4× larger upsampled input.

    Output pixel (2i + a, 2j + b) of conv3x3(nearest×2(x)) only ever sees low-resolution pixels i-1..i (a = 0) or
    i..i+1 (a = 1), so each of the four phases (a, b) is a 2×2 conv of x whose taps are sums of the 3×3 taps. One
    2×2 conv with 4·C outputs over x padded by 1 computes all phases: 16 instead of 36 multiply-adds per output
    (the released decoder's upsampling convs are 12 of its 63 GFLOP per 256² image).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    @staticmethod
    def _fold_taps(kernel: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """3 taps along `dim` → the 2-tap kernels of phase 0 (taps 0 | 1+2) and phase 1 (taps 0+1 | 2)."""
        t0, t1, t2 = kernel.unbind(dim)
        return torch.stack((t0, t1 + t2), dim), torch.stack((t0 + t1, t2), dim)

    def phase_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(4·C)×C×2×2 kernel, phases ordered (a, b) = (0,0), (0,1), (1,0), (1,1), and the 4·C bias."""
        kernels = [
            phase_kernel
            for row_kernel in self._fold_taps(self.conv.weight, 2)
            for phase_kernel in self._fold_taps(row_kernel, 3)
        ]
        return torch.cat(kernels, 0), self.conv.bias.repeat(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x B×C×H×W → B×C×2H×2W (channels-last)."""
        batch, _, height, width = x.shape
        channels = self.conv.out_channels
        with own_weights_loaded(self.conv):  # the conv's weights are folded here, not read by its forward
            weight, bias = self.phase_weights()
        # B×4C×(H+1)×(W+1): phase (a, b) of output pixel (i, j) sits at position (i + a, j + b)
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias).permute(0, 2, 3, 1)
        phases = phases.reshape(batch, height + 1, width + 1, 2, 2, channels)
        out = x.new_empty(batch, height, 2, width, 2, channels)  # = B×2H×2W×C, channels last
        for a in range(2):
            for b in range(2):
                out[:, :, a, :, b] = phases[:, a : a + height, b : b + width, a, b]
        return out.view(batch, 2 * height, 2 * width, channels).permute(0, 3, 1, 2)


class VQStage(nn.Module):
    """One resolution of the encoder or decoder: resnet blocks, optional attention after each, resampling."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, with_attention: bool, resample, norm_groups: int = 32
    ):
        super().__init__()
        self.block = nn.ModuleList(
            VQResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm_groups) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(
            VQAttnBlock(out_channels, norm_groups) for _ in range(num_blocks if with_attention else 0)
        )
        # the released checkpoint names the resampler after its direction
        self.resample_name = None
        if resample is not None:
            self.resample_name = "downsample" if resample is VQDownsample else "upsample"
            self.add_module(self.resample_name, resample(out_channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return getattr(self, self.resample_name)(h) if self.resample_name else h


class VQMiddle(nn.Module):
    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.block_1 = VQResnetBlock(channels, channels, norm_groups)
        self.attn_1 = VQAttnBlock(channels, norm_groups)
        self.block_2 = VQResnetBlock(channels, channels, norm_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class VQEncoder(nn.Module):
    """Image (B×3×H×W) → features (B×Cvae×H/f×W/f), f = 2 ** (len(channel_multipliers) - 1)."""

    def __init__(self, config: VargptVQVAEConfig):
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, padding=1)
        widths = [ch] + [ch * m for m in mults]
        last = len(mults) - 1
        self.down = nn.ModuleList(
            VQStage(
                widths[i],
                widths[i + 1],
                config.num_res_blocks,
                i == last,
                VQDownsample if i != last else None,
                config.norm_groups,
            )
            for i in range(len(mults))
        )
        self.mid = VQMiddle(widths[-1], config.norm_groups)
        self.norm_out = _group_norm(widths[-1], config.norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class VQDecoder(nn.Module):
    """Features (B×Cvae×h×w) → image (B×3×h·f×w·f). `up[i]` is the stage at resolution i (run from last to first)."""

    def __init__(self, config: VargptVQVAEConfig):
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        last = len(mults) - 1
        top = ch * mults[last]
        self.conv_in = nn.Conv2d(config.z_channels, top, kernel_size=3, padding=1)
        self.mid = VQMiddle(top, config.norm_groups)
        stages = []
        in_channels = top
        for i in reversed(range(len(mults))):
            stages.insert(
                0,
                VQStage(
                    in_channels,
                    ch * mults[i],
                    config.num_res_blocks + 1,
                    i == last,
                    VQUpsample if i else None,
                    config.norm_groups,
                ),
            )
            in_channels = ch * mults[i]
        self.up = nn.ModuleList(stages)
        self.norm_out = _group_norm(ch * mults[0], config.norm_groups)
        self.conv_out = nn.Conv2d(ch * mults[0], 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class ResidualFilter(nn.Conv2d):
    """Φ: `h * (1 - r) + conv3x3(h) * r`, applied to each upsampled code map before it joins f̂."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


@dataclass
class MultiScaleQuantizerOutput(ModelOutput):
    """What the training path of [`MultiScaleQuantizer`] returns.

    Args:
        f_hat (`torch.FloatTensor` of shape `(B, Cvae, S, S)`):
            f̂ with the straight-through estimator: its value is the quantised f̂, its gradient flows to the features.
        indices (`list[torch.LongTensor]`): code indices per scale, each `(B, s²)` (equal to `quantize`'s).
        codebook_loss (`torch.FloatTensor`): MSE of the running f̂ to the detached features, averaged over scales
            (trains the codebook and the Φ filters).
        commitment_loss (`torch.FloatTensor`): MSE of the features to the detached running f̂, averaged over scales
            (keeps the encoder close to its codes).
        quantized_vectors (`list[torch.FloatTensor]`): per scale, the detached residual vectors that were snapped to
            codes, each `(B·s², Cvae)`; the trainer re-initialises dead codes from them.
    """

    f_hat: torch.FloatTensor | None = None
    indices: list[torch.LongTensor] | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    quantized_vectors: list[torch.FloatTensor] | None = None


class MultiScaleQuantizer(nn.Module):
    """Residual quantisation over `scale_sizes`; owns the codebook (V×Cvae) and the Φ filters."""

    def __init__(self, config: VargptVQVAEConfig):
        super().__init__()
        self.scale_sizes = list(config.scale_sizes)
        self.codebook = nn.Embedding(config.vocab_size, config.z_channels)
        num_filters = config.num_residual_filters or len(self.scale_sizes)
        use_filter = abs(config.residual_ratio) > 1e-6
        self.residual_filters = nn.ModuleList(
            ResidualFilter(config.z_channels, config.residual_ratio) if use_filter else nn.Identity()
            for _ in range(num_filters)
        )
        # Scale si uses the filter whose tick is nearest to si / (S - 1); VAR spaces 4 ticks at 1/12 .. 11/12.
        # Some scales sit exactly between two ticks (e.g. 2/9, 1/2): numpy's float64 rounding decides, as in VAR.
        margin = 1 / 3 / num_filters if num_filters == 4 else 1 / 2 / num_filters
        ticks = np.linspace(margin, 1 - margin, num_filters)
        last = len(self.scale_sizes) - 1
        self.filter_of_scale = [int(np.argmin(np.abs(ticks - si / last))) for si in range(last + 1)]

    @property
    def final_size(self) -> int:
        return self.scale_sizes[-1]

    def scale_contribution(self, scale_index: int, code_map: torch.Tensor) -> torch.Tensor:
        """Code vectors of one scale (B×Cvae×s×s) → their filtered contribution to f̂ (B×Cvae×S×S)."""
        if scale_index != len(self.scale_sizes) - 1:
            code_map = F.interpolate(code_map, size=(self.final_size, self.final_size), mode="bicubic")
        return self.residual_filters[self.filter_of_scale[scale_index]](code_map)

    def lookup(self, indices: torch.LongTensor, side: int) -> torch.Tensor:
        """Code indices (B×side²) → code vectors (B×Cvae×side×side)."""
        return self.codebook(indices).transpose(1, 2).reshape(indices.shape[0], -1, side, side).contiguous()

    @torch.no_grad()
    def quantize(self, features: torch.Tensor) -> list[torch.LongTensor]:
        """Features f (B×Cvae×S×S) → code indices per scale, each B×s²."""
        batch, _, height, width = features.shape
        if (height, width) != (self.final_size, self.final_size):
            raise ValueError(f"feature map is {height}x{width}, expected {self.final_size}x{self.final_size}")
        residual = features.clone()
        indices = []
        for si, side in enumerate(self.scale_sizes):
            idx = self.nearest_codes(self.scale_residual(residual, side)).view(batch, side * side)
            residual = residual - self.scale_contribution(si, self.lookup(idx, side))
            indices.append(idx)
        return indices

    def scale_residual(self, residual: torch.Tensor, side: int) -> torch.Tensor:
        """Residual B×Cvae×S×S → the vectors quantised at a scale of `side`, (B·side²)×Cvae, row-major."""
        rest = residual if side == self.final_size else F.interpolate(residual, size=(side, side), mode="area")
        return rest.permute(0, 2, 3, 1).reshape(-1, residual.shape[1])

    @torch.no_grad()
    def nearest_codes(self, vectors: torch.Tensor) -> torch.LongTensor:
        """Vectors N×Cvae → index of the nearest codebook entry (Euclidean), N."""
        # every row through the embedding's forward rather than `.weight`: under DeepSpeed ZeRO-3 a module's
        # parameters are gathered only for its forward (the same values)
        codebook = self.codebook(torch.arange(self.codebook.num_embeddings, device=vectors.device))
        distance = vectors.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1) - 2 * vectors @ codebook.T
        return distance.argmin(dim=1)

    def quantize_with_losses(self, features: torch.Tensor, commitment_weight: float = 0.25) -> MultiScaleQuantizerOutput:
        """The training path of `quantize` (VAR's `VectorQuantizer2.forward`): same codes, plus f̂ and the VQ losses.

        The codes are chosen exactly as `quantize` chooses them; the code vectors and Φ filters stay differentiable,
        so at every scale the running f̂ is pulled towards the features (codebook loss) and the features towards the
        running f̂ (commitment loss, weighted by `commitment_weight`, VAR's β = 0.25, into `commitment_loss`).

        Args:
            features: f (B×Cvae×S×S), the output of `quant_conv`.
        """
        batch, _, height, width = features.shape
        if (height, width) != (self.final_size, self.final_size):
            raise ValueError(f"feature map is {height}x{width}, expected {self.final_size}x{self.final_size}")
        target = features.detach()
        residual = target.clone()
        f_hat = torch.zeros_like(target)
        indices, quantized_vectors = [], []
        codebook_loss = commitment_loss = 0.0
        for si, side in enumerate(self.scale_sizes):
            vectors = self.scale_residual(residual, side)
            idx = self.nearest_codes(vectors).view(batch, side * side)
            contribution = self.scale_contribution(si, self.lookup(idx, side))
            residual = residual - contribution.detach()
            f_hat = f_hat + contribution
            codebook_loss = codebook_loss + F.mse_loss(f_hat, target)
            commitment_loss = commitment_loss + F.mse_loss(features, f_hat.detach())
            indices.append(idx)
            quantized_vectors.append(vectors)
        num_scales = len(self.scale_sizes)
        return MultiScaleQuantizerOutput(
            f_hat=features + (f_hat - features).detach(),
            indices=indices,
            codebook_loss=codebook_loss / num_scales,
            commitment_loss=commitment_weight * commitment_loss / num_scales,
            quantized_vectors=quantized_vectors,
        )

    def split_scales(self, tokens: torch.LongTensor) -> list[torch.LongTensor]:
        """Concatenated indices (B×L) → per-scale indices."""
        expected = num_image_gen_tokens(self.scale_sizes)
        if tokens.ndim != 2 or tokens.shape[1] != expected:
            raise ValueError(f"image tokens must be B x {expected} code indices, got shape {tuple(tokens.shape)}")
        return list(tokens.split([s * s for s in self.scale_sizes], dim=1))

    def indices_to_fhat(self, indices: list[torch.LongTensor]) -> torch.Tensor:
        """Per-scale indices → f̂ (B×Cvae×S×S)."""
        f_hat = 0
        for si, (idx, side) in enumerate(zip(indices, self.scale_sizes)):
            f_hat = f_hat + self.scale_contribution(si, self.lookup(idx, side))
        return f_hat

    def add_scale(
        self, f_hat: torch.Tensor, scale_index: int, codes: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step of next-scale prediction, shared by generation and teacher forcing.

        The codes of scale `scale_index` (B×s²) join f̂ (B×Cvae×S×S, upsampled and Φ-filtered), and f̂
        area-downsampled to the next scale's side is that scale's input (B×s'²×Cvae, row-major).

        Returns the new f̂ and the next scale's input (`None` after the last scale).
        """
        code_map = self.lookup(codes, self.scale_sizes[scale_index]).to(f_hat.dtype)
        f_hat = f_hat + self.scale_contribution(scale_index, code_map)
        if scale_index + 1 == len(self.scale_sizes):
            return f_hat, None
        side = self.scale_sizes[scale_index + 1]
        return f_hat, F.interpolate(f_hat, size=(side, side), mode="area").flatten(2).transpose(1, 2)

    def next_scale_inputs(self, indices: list[torch.LongTensor]) -> torch.Tensor:
        """Teacher forcing: for scales 2..K, the area-downsampled running f̂ after all earlier scales.

        Returns B×(L - s₁²)×Cvae, scale after scale, row-major within a scale.
        """
        batch = indices[0].shape[0]
        f_hat = self.codebook.weight.new_zeros(batch, self.codebook.embedding_dim, self.final_size, self.final_size)
        inputs = []
        for si in range(len(self.scale_sizes) - 1):
            f_hat, next_input = self.add_scale(f_hat, si, indices[si])
            inputs.append(next_input)
        return torch.cat(inputs, dim=1)


class VargptVQVAE(PreTrainedModel):
    """The multi-scale residual VQVAE of VAR (`vae_local` in the released checkpoint). Frozen in every stage."""

    config_class = VargptVQVAEConfig
    config: VargptVQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "pixel_values"
    _no_split_modules = ["VQStage", "VQMiddle", "MultiScaleQuantizer"]
    # Its one attention block always runs torch's SDPA, whatever implementation the composite model is loaded with
    # (as a sub-config, `vq_config` receives that choice too).
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: VargptVQVAEConfig):
        super().__init__(config)
        self.encoder = VQEncoder(config)
        self.decoder = VQDecoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, kernel_size=3, padding=1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, kernel_size=3, padding=1)
        self.quantizer = MultiScaleQuantizer(config)
        self.post_init()

    def _check_images(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"generation images must be B x 3 x {size} x {size} (image_gen_size), scaled to [-1, 1]; "
                f"got shape {tuple(pixel_values.shape)}"
            )

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> list[torch.LongTensor]:
        """Images in [-1, 1] (B×3×H×W) → code indices per scale (each B×s²)."""
        self._check_images(pixel_values)
        features = self.quant_conv(self.encoder(pixel_values.to(self.dtype)))
        return self.quantizer.quantize(features)

    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Images in [-1, 1] (B×3×H×W) → all scales' code indices concatenated (B×L)."""
        return torch.cat(self.encode(pixel_values), dim=1)

    def decode_fhat(self, f_hat: torch.Tensor, images_per_call: int | None = None) -> torch.Tensor:
        """f̂ (B×Cvae×S×S) → image in [-1, 1] (B×3×H×W).

        images_per_call: how many images go through the decoder at once. Default: one at a time on CPU, where the
        activations of a single 256² image (16 MiB each) already saturate the convolutions and bigger batches only
        add memory traffic (measured in BENCHMARKS.md, Findings); the whole batch on accelerators, which need the
        parallelism.
        """
        if f_hat.ndim != 4:
            raise ValueError(f"f_hat must be B x Cvae x S x S, got shape {tuple(f_hat.shape)}")
        if images_per_call is None:
            images_per_call = 1 if f_hat.device.type == "cpu" else f_hat.shape[0]
        if isinstance(images_per_call, bool) or not isinstance(images_per_call, int) or images_per_call < 1:
            raise ValueError(f"images_per_call must be an integer >= 1, got {images_per_call!r}")
        # channels-last activations let oneDNN run the decoder's convolutions faster on CPU (BENCHMARKS.md)
        f_hat = f_hat.to(self.dtype).contiguous(memory_format=torch.channels_last)
        images = [
            self.decoder(self.post_quant_conv(chunk)).clamp(-1, 1).contiguous()
            for chunk in f_hat.split(images_per_call)
        ]
        return images[0] if len(images) == 1 else torch.cat(images)

    def tokens_to_fhat(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Code indices (B×L, all scales concatenated) → f̂ (B×Cvae×S×S)."""
        return self.quantizer.indices_to_fhat(self.quantizer.split_scales(tokens))

    def decode(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Code indices (B×L, all scales concatenated) → image in [-1, 1] (B×3×H×W)."""
        return self.decode_fhat(self.tokens_to_fhat(tokens))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.LongTensor, torch.Tensor]:
        """Round trip: returns (code indices B×L, reconstruction in [-1, 1])."""
        tokens = self.tokenize(pixel_values)
        return tokens, self.decode(tokens)


__all__ = ["VargptVQVAE", "MultiScaleQuantizer", "MultiScaleQuantizerOutput"]
