"""Training VAR's multi-scale residual VQVAE (`VargptVQVAE`) from scratch on the shapes world, and its evaluation.

Losses (VAR trained its VQVAE with L1 + LPIPS + a patch GAN; no pretrained perceptual network exists here and a GAN
does not settle in minutes on a CPU, so the perceptual part is replaced by an edge term):

- reconstruction: L1 on pixels + L1 on horizontal / vertical pixel differences (the edge term: it penalises blurred
  or shifted shape borders, which the pixel checker and the later generation stages care about, much more than a
  flat L1 does, at no cost);
- VQ: at every scale of the residual quantization the running f̂ is pulled towards the encoder features (codebook
  loss) and the features towards f̂ (commitment loss, β = 0.25), averaged over scales; the decoder sees f̂ through the
  straight-through estimator ([`MultiScaleQuantizer.quantize_with_losses`]);
- codebook upkeep: every `restart_every` steps the codes no scale chose since the previous check are re-initialised
  to residual vectors the encoder just produced (VAR tracks the same hits in `ema_vocab_hit_SV`), so the whole
  codebook stays in use; restarts stop for the last `final_steps_without_restarts` steps so the codebook settles.
- codebook values: by default running means of the residual vectors each code is chosen for (`CodebookEMA`, decay
  `codebook_ema_decay`), not gradient steps: on the shapes world it reached a given reconstruction error in about
  two thirds of the steps (L1 0.25 after 400 steps of 16 images, against 0.26 after 600 by gradient): AdamW moves a
  code by about the learning rate per step, far slower than the encoder's features change early on.

Training images are rendered on the fly: shapes-world scenes (`shapes_world.random_scene`) in palette colours and,
with probability `random_color_fraction`, the same shapes and boxes in uniformly random RGB colours, so that a later
fine-tune can teach a colour the generator has never drawn. All palette combinations are used, held-out ones included:
the VQVAE must encode every picture; the held-out split concerns the language model, not the image codec.

Command line (writes `save_pretrained` files and `vqvae_eval.json` into `--output`)::

    python -m transformers_vargpt.training.vqvae --output vqvae-shapes --image-size 64 --steps 1500
    python -m transformers_vargpt.training.vqvae --output vqvae-shapes --eval-only   # re-evaluate a saved model
    python -m transformers_vargpt.training.vqvae --output vqvae-more --init-from vqvae-shapes --steps 300  # go on
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from ..configuration_vargpt import VargptVQVAEConfig
from ..modeling_vargpt_vqvae import MultiScaleQuantizer, VargptVQVAE
from ..shapes_world import PALETTE, SHAPES, Scene, all_combinations, check_image, draw, random_box, random_scene

logger = logging.getLogger(__name__)

EVAL_FILE_NAME = "vqvae_eval.json"


@dataclass
class VQVAETrainingArguments:
    """Options of `python -m transformers_vargpt.training.vqvae` (sizes, optimisation, data, evaluation)."""

    output: str = field(metadata={"help": "Directory the trained VQVAE (save_pretrained) and vqvae_eval.json go to."})
    image_size: int = field(default=64, metadata={"help": "Side of the square training images in pixels."})
    scale_sizes: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 6, 8],
        metadata={"help": "Side of the code map at each scale; the last one times the downsampling is image_size."},
    )
    vocab_size: int = field(default=512, metadata={"help": "Codebook entries."})
    z_channels: int = field(default=16, metadata={"help": "Width of a code vector (Cvae)."})
    base_channels: int = field(default=32, metadata={"help": "Width of the first conv stage."})
    norm_groups: int = field(
        default=8, metadata={"help": "GroupNorm groups (every width must be a multiple; 32 = one channel per group)."}
    )
    channel_multipliers: list[int] = field(
        default_factory=lambda: [1, 1, 1, 1],
        metadata={"help": "Per-stage width multipliers; len - 1 stages downsample by 2."},
    )
    num_res_blocks: int = field(
        default=0, metadata={"help": "Resnet blocks per encoder stage (decoder stages use one more)."}
    )
    steps: int = field(default=1500, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Images per step."})
    learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak AdamW learning rate, cosine decay to 5% (2e-3 oscillated here)."}
    )
    warmup_steps: int = field(default=50, metadata={"help": "Linear warmup steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    commitment_weight: float = field(default=0.25, metadata={"help": "β of the commitment loss (VAR: 0.25)."})
    vq_loss_weight: float = field(default=1.0, metadata={"help": "Weight of codebook + commitment losses."})
    edge_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the L1 loss on pixel differences."})
    random_color_fraction: float = field(
        default=0.5, metadata={"help": "Share of training scenes in uniformly random RGB colours (else palette)."}
    )
    fixed_box: list[int] | None = field(
        default=None,
        metadata={"help": "Left, top, right, bottom (pixels, inclusive) of a box a share of the scenes is drawn in "
                          "(--fixed_box_fraction): where a generator trained on such pictures draws, so that the "
                          "VQVAE reconstructs shapes there most sharply."},
    )
    fixed_box_fraction: float = field(
        default=0.0, metadata={"help": "Share of training scenes (palette and random-colour) drawn in --fixed_box."}
    )
    codebook_ema_decay: float = field(
        default=0.99,
        metadata={"help": "Codebook as running means (k-means) of the residual vectors each code is chosen for, with "
                          "this decay; 0 trains it by gradient (the codebook loss) instead."},
    )
    restart_every: int = field(default=20, metadata={"help": "Steps between dead-code re-initialisations."})
    final_steps_without_restarts: int = field(
        default=200, metadata={"help": "No dead-code re-initialisation in the last this many steps."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the weights and the training scenes."})
    eval_seed: int = field(default=12345, metadata={"help": "Seed of the evaluation scenes (differs from training)."})
    eval_scenes: int = field(default=500, metadata={"help": "Palette scenes in the evaluation."})
    eval_random_color_scenes: int = field(default=200, metadata={"help": "Random-colour scenes in the evaluation."})
    init_from: str | None = field(
        default=None,
        metadata={"help": "Start from the VQVAE saved in this directory (its sizes win) instead of a fresh one."},
    )
    decoder_only: bool = field(
        default=False,
        metadata={"help": "Train only the decoder (and post_quant_conv) of the --init_from VQVAE: encoder, quantizer "
                          "and codebook stay frozen, so every picture keeps its codes and anything trained on them "
                          "stays valid; only how codes are drawn back into pixels changes (e.g. sharper corners)."},
    )
    eval_only: bool = field(default=False, metadata={"help": "Only evaluate the VQVAE already saved in --output."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)."})
    device: str = field(default="cpu", metadata={"help": "Where to train and evaluate (cpu, cuda, ...)."})
    log_every: int = field(default=50, metadata={"help": "Steps between logged loss averages."})

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 <= self.random_color_fraction <= 1.0:
            raise ValueError(f"random_color_fraction must be in [0, 1], got {self.random_color_fraction}")
        if not 0.0 <= self.fixed_box_fraction <= 1.0:
            raise ValueError(f"fixed_box_fraction must be in [0, 1], got {self.fixed_box_fraction}")
        if self.fixed_box_fraction > 0 and self.fixed_box is None:
            raise ValueError("fixed_box_fraction > 0 needs --fixed_box LEFT TOP RIGHT BOTTOM")
        if self.fixed_box is not None:
            if len(self.fixed_box) != 4:
                raise ValueError(f"fixed_box must be 4 numbers (left top right bottom), got {self.fixed_box}")
            left, top, right, bottom = self.fixed_box
            if not (0 <= left < right < self.image_size and 0 <= top < bottom < self.image_size):
                raise ValueError(
                    f"fixed_box {self.fixed_box} must lie inside the {self.image_size}x{self.image_size} image with "
                    "left < right and top < bottom"
                )
        if not 0.0 <= self.codebook_ema_decay < 1.0:
            raise ValueError(f"codebook_ema_decay must be in [0, 1), got {self.codebook_ema_decay}")
        if self.restart_every < 1:
            raise ValueError(f"restart_every must be >= 1, got {self.restart_every}")
        if self.decoder_only and not self.init_from and not self.eval_only:
            raise ValueError("--decoder_only trains the decoder of a trained VQVAE: give it with --init_from DIR")

    def vqvae_config(self) -> VargptVQVAEConfig:
        """The config of the VQVAE these arguments train (sizes are checked by `VargptVQVAEConfig`)."""
        return VargptVQVAEConfig(
            vocab_size=self.vocab_size,
            z_channels=self.z_channels,
            base_channels=self.base_channels,
            channel_multipliers=list(self.channel_multipliers),
            num_res_blocks=self.num_res_blocks,
            scale_sizes=list(self.scale_sizes),
            image_size=self.image_size,
            norm_groups=self.norm_groups,
        )


# ---- data ----------------------------------------------------------------------------------------------------------
def random_color_scene_image(
    rng: random.Random, image_size: int, min_distance: float = 40.0, box: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """A world shape in uniformly random RGB shape / background colours at least `min_distance` apart, in `box`
    (default: a random world box)."""
    while True:
        fill = tuple(rng.randrange(256) for _ in range(3))
        background = tuple(rng.randrange(256) for _ in range(3))
        if math.dist(fill, background) >= min_distance:
            break
    return draw(rng.choice(SHAPES), box or random_box(rng, image_size), fill, background, image_size)


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images → B×3×H×W float tensor in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W tensor in [-1, 1] → B×H×W×3 uint8 array."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def training_batch(
    rng: random.Random,
    batch_size: int,
    image_size: int,
    random_color_fraction: float,
    fixed_box: tuple[int, int, int, int] | None = None,
    fixed_box_fraction: float = 0.0,
) -> torch.Tensor:
    """A batch of freshly rendered training images (B×3×H×W in [-1, 1]): palette scenes and random-colour scenes,
    a `fixed_box_fraction` share of them drawn in `fixed_box`."""
    combinations = all_combinations()
    images = []
    for _ in range(batch_size):
        box = fixed_box if fixed_box is not None and rng.random() < fixed_box_fraction else None
        if rng.random() < random_color_fraction:
            images.append(random_color_scene_image(rng, image_size, box=box))
        else:
            scene = random_scene(rng, image_size, combinations)
            images.append(draw(scene.shape, box or scene.box, PALETTE[scene.color], PALETTE[scene.background],
                               image_size))
    return images_to_tensor(images)


# ---- losses and codebook upkeep --------------------------------------------------------------------------------------
def edge_l1_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of two B×3×H×W images."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(reconstruction), dx(target)) + F.l1_loss(dy(reconstruction), dy(target))


def vqvae_training_losses(
    model: VargptVQVAE, pixel_values: torch.Tensor, commitment_weight: float = 0.25
) -> tuple[dict[str, torch.Tensor], list[torch.LongTensor], list[torch.Tensor]]:
    """One differentiable round trip: images (B×3×H×W in [-1, 1]) → losses, codes per scale, quantised vectors.

    The decoder output is not clamped here (a clamp would stop the gradient of saturated pixels).
    """
    features = model.quant_conv(model.encoder(pixel_values))
    quantized = model.quantizer.quantize_with_losses(features, commitment_weight=commitment_weight)
    reconstruction = model.decoder(model.post_quant_conv(quantized.f_hat))
    losses = {
        "l1": F.l1_loss(reconstruction, pixel_values),
        "edge": edge_l1_loss(reconstruction, pixel_values),
        "codebook": quantized.codebook_loss,
        "commitment": quantized.commitment_loss,
    }
    return losses, quantized.indices, quantized.quantized_vectors


class CodebookUsage:
    """Which codes any scale chose since the last check; dead ones are re-initialised from encoder residuals."""

    def __init__(self, vocab_size: int):
        self.hits = torch.zeros(vocab_size, dtype=torch.long)

    def update(self, indices: list[torch.LongTensor]) -> None:
        for idx in indices:
            self.hits += torch.bincount(idx.flatten().cpu(), minlength=self.hits.numel())

    def restart_dead_codes(
        self,
        quantizer: MultiScaleQuantizer,
        vectors: torch.Tensor,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """Set every code without hits to a random row of `vectors` (N×Cvae) plus a little noise; reset counts.

        The AdamW moments of the re-initialised rows are zeroed, so the old code's momentum does not drag the new one.
        Returns how many codes were re-initialised.
        """
        dead = torch.nonzero(self.hits == 0).flatten()
        self.hits.zero_()
        if dead.numel() == 0 or vectors.shape[0] == 0:
            return 0
        weight = quantizer.codebook.weight
        rows = torch.randint(vectors.shape[0], (dead.numel(),), generator=generator)
        noise = torch.randn(dead.numel(), vectors.shape[1], generator=generator) * 0.01 * vectors.std().item()
        with torch.no_grad():
            weight[dead.to(weight.device)] = (vectors.cpu()[rows] + noise).to(weight)
        if optimizer is not None:
            for moment in optimizer.state.get(weight, {}).values():
                if torch.is_tensor(moment) and moment.shape == weight.shape:
                    moment[dead.to(moment.device)] = 0
        return int(dead.numel())


class CodebookEMA:
    """The codebook as running means of the residual vectors each code is chosen for (k-means with decay).

    A gradient-trained codebook moves at most about the learning rate per AdamW step, far slower than the encoder's
    features change early in training, so the decoder sees stale codes for thousands of steps; running means follow
    the features at once (VQ-VAE-2's update). Applied to the residual vectors of every scale.
    """

    def __init__(self, codebook: torch.Tensor, decay: float, epsilon: float = 1e-5):
        self.decay, self.epsilon = decay, epsilon
        self.counts = torch.ones(codebook.shape[0], device=codebook.device)
        self.sums = codebook.detach().clone()

    @torch.no_grad()
    def update(self, codebook: torch.Tensor, indices: list[torch.LongTensor], vectors: list[torch.Tensor]) -> None:
        idx = torch.cat([i.flatten() for i in indices])
        rows = torch.cat(vectors).to(self.sums)
        counts = torch.bincount(idx, minlength=self.counts.numel()).to(self.counts)
        sums = torch.zeros_like(self.sums).index_add_(0, idx, rows)
        self.counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.counts.sum()  # Laplace smoothing keeps rarely chosen codes from dividing by ~0
        smoothed = (self.counts + self.epsilon) / (total + self.counts.numel() * self.epsilon) * total
        # a code not chosen for a long while fades towards 0 (its running sum faster than its smoothed count) until a
        # dead-code restart gives it a new value
        codebook.copy_(self.sums / smoothed.unsqueeze(1))

    @torch.no_grad()
    def restarted(self, codebook: torch.Tensor, rows: torch.Tensor) -> None:
        """Codes re-initialised elsewhere start their running means from their new vectors."""
        self.counts[rows] = 1.0
        self.sums[rows] = codebook[rows].to(self.sums)


def reset_conv_weights(model: VargptVQVAE) -> None:
    """Give every conv PyTorch's default (Kaiming-uniform) init instead of `post_init`'s N(0, 0.02).

    The released weights never needed an init; from scratch, N(0, 0.02) shrinks the signal of a 3×3 conv over 32
    channels about 3× per layer, and the encoder's down path and the decoder's main path have no norm to undo that.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()


def learning_rate_at(step: int, args: VQVAETrainingArguments) -> float:
    """Linear warmup, then cosine decay to 5% of the peak."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_vqvae(args: VQVAETrainingArguments, model: VargptVQVAE | None = None) -> tuple[VargptVQVAE, dict]:
    """Train a VQVAE on freshly rendered shapes-world images; returns the model (eval mode) and training statistics."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    if model is None:
        if args.decoder_only:
            raise ValueError("decoder_only needs a trained VQVAE to start from")
        model = VargptVQVAE(args.vqvae_config())
        reset_conv_weights(model)
    model.to(args.device).train()
    codebook = model.quantizer.codebook.weight
    ema = None
    # the codebook's upkeep (running means, dead-code restarts): off when only the decoder trains
    codebook_upkeep = not args.decoder_only
    if args.codebook_ema_decay > 0:
        codebook.requires_grad_(False)  # the running means set it
    if args.decoder_only:
        for frozen in (model.encoder, model.quant_conv, model.quantizer):
            frozen.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=args.weight_decay)
    usage = CodebookUsage(model.config.vocab_size)
    logger.info(
        "training a %.2fM-parameter VQVAE for %d steps of %d images",
        sum(p.numel() for p in model.parameters()) / 1e6,
        args.steps,
        args.batch_size,
    )
    fixed_box = tuple(args.fixed_box) if args.fixed_box is not None else None
    running: dict[str, float] = {}
    restarted = 0
    start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="vqvae", disable=None)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, args)
        pixels = training_batch(rng, args.batch_size, model.config.image_size, args.random_color_fraction,
                                fixed_box, args.fixed_box_fraction)
        pixels = pixels.to(args.device)
        losses, indices, vectors = vqvae_training_losses(model, pixels, args.commitment_weight)
        loss = (
            losses["l1"]
            + args.edge_loss_weight * losses["edge"]
            + args.vq_loss_weight * (losses["codebook"] + losses["commitment"])
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, args.max_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.update(codebook, indices, vectors)

        usage.update(indices)
        # step 0 re-initialises the codes the first batch left unused: the codebook starts from encoder outputs
        restart_now = step == 0 or (step + 1) % args.restart_every == 0
        if codebook_upkeep and restart_now and step < args.steps - args.final_steps_without_restarts:
            dead = torch.nonzero(usage.hits == 0).flatten()
            restarted += usage.restart_dead_codes(model.quantizer, torch.cat(vectors), generator, optimizer)
            if ema is not None:
                ema.restarted(codebook, dead.to(codebook.device))
        if codebook_upkeep and ema is None and args.codebook_ema_decay > 0:
            ema = CodebookEMA(codebook, args.codebook_ema_decay)  # after the first restart: from encoder outputs
        for name, value in {"loss": loss, **losses}.items():
            running[name] = running.get(name, 0.0) + value.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            count = (step % args.log_every) + 1
            averages = {name: total / count for name, total in running.items()}
            progress.set_postfix(loss=f"{averages['loss']:.4f}", l1=f"{averages['l1']:.4f}")
            logger.info(
                "step %d/%d %s restarted=%d (%.2f steps/s)",
                step + 1,
                args.steps,
                " ".join(f"{k}={v:.4f}" for k, v in averages.items()),
                restarted,
                (step + 1) / (time.perf_counter() - start),
            )
            running = {}
    seconds = time.perf_counter() - start
    model.eval()
    return model, {"train_seconds": seconds, "steps_per_second": args.steps / seconds, "restarted_codes": restarted}


# ---- evaluation ----------------------------------------------------------------------------------------------------
def _region_color_error(reconstruction: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int]) -> float:
    """Euclidean RGB distance between the median reconstructed colour inside `mask` and the true colour."""
    return float(np.linalg.norm(np.median(reconstruction[mask].astype(np.float64), axis=0) - np.asarray(rgb)))


@torch.no_grad()
def reconstruct(model: VargptVQVAE, images: torch.Tensor, batch_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference round trip (`tokenize`, then `decode`): images B×3×H×W → (codes B×L, reconstructions)."""
    tokens, recons = [], []
    for chunk in images.to(model.device).split(batch_size):
        chunk_tokens = model.tokenize(chunk)
        tokens.append(chunk_tokens)
        recons.append(model.decode_fhat(model.tokens_to_fhat(chunk_tokens), images_per_call=chunk.shape[0]))
    return torch.cat(tokens).cpu(), torch.cat(recons).cpu()


def evaluate_vqvae(
    model: VargptVQVAE,
    num_scenes: int = 500,
    num_random_color_scenes: int = 200,
    seed: int = 12345,
    fixed_box: tuple[int, int, int, int] | None = None,
) -> dict:
    """Reconstruction quality on freshly rendered scenes (seeded), through the inference path.

    Palette scenes: share whose reconstruction `check_image` reads as the scene (shape, colour and background), mean
    absolute pixel error (0–255), codebook usage (share of codes chosen at any scale). Random-colour scenes (colours
    ≥ 100 apart): median reconstructed shape / background colour's RGB distance to the true one (mean and maximum)
    and the share `check_image` reads right against a two-colour palette of the true colours. With `fixed_box`:
    the share read right of every palette combination drawn in that box.
    """
    model.eval()
    size = model.config.image_size
    rng = random.Random(seed)
    scenes = [random_scene(rng, size) for _ in range(num_scenes)]
    truth = np.stack([np.asarray(draw(s.shape, s.box, PALETTE[s.color], PALETTE[s.background], size)) for s in scenes])
    tokens, recons = reconstruct(model, images_to_tensor([Image.fromarray(t) for t in truth]))
    recons = tensor_to_uint8(recons)
    matches = [check_image(recon).matches(scene) for recon, scene in zip(recons, scenes)]
    used = torch.unique(tokens).numel()

    color_errors, background_errors, color_matches = [], [], []
    for _ in range(num_random_color_scenes):
        while True:
            fill = tuple(rng.randrange(256) for _ in range(3))
            background = tuple(rng.randrange(256) for _ in range(3))
            if math.dist(fill, background) >= 100:
                break
        shape, box = rng.choice(SHAPES), random_box(rng, size)
        image = draw(shape, box, fill, background, size)
        mask = np.asarray(draw(shape, box, (255, 255, 255), (0, 0, 0), size))[..., 0] > 0
        recon = tensor_to_uint8(reconstruct(model, images_to_tensor([image]))[1])[0]
        color_errors.append(_region_color_error(recon, mask, fill))
        background_errors.append(_region_color_error(recon, ~mask, background))
        checked = check_image(recon, palette={"shape": fill, "background": background})
        color_matches.append((checked.shape, checked.color, checked.background) == (shape, "shape", "background"))

    results = {
        "palette_scenes": num_scenes,
        "palette_match_rate": float(np.mean(matches)),
        "mean_abs_pixel_error": float(np.abs(recons.astype(np.float64) - truth).mean()),
        "codebook_usage": used / model.config.vocab_size,
        "codes_used": used,
        "random_color_scenes": num_random_color_scenes,
    }
    if fixed_box is not None:
        in_box = [Scene(shape, color, background, tuple(fixed_box)) for color, shape, background in all_combinations()]
        pictures = images_to_tensor([draw(s.shape, s.box, PALETTE[s.color], PALETTE[s.background], size)
                                     for s in in_box])
        recons = tensor_to_uint8(reconstruct(model, pictures)[1])
        results["fixed_box"] = list(fixed_box)
        results["fixed_box_match_rate"] = float(np.mean([check_image(r).matches(s) for r, s in zip(recons, in_box)]))
    if num_random_color_scenes:
        results.update(
            {
                "random_color_shape_error_mean": float(np.mean(color_errors)),
                "random_color_shape_error_max": float(np.max(color_errors)),
                "random_color_background_error_mean": float(np.mean(background_errors)),
                "random_color_match_rate": float(np.mean(color_matches)),
            }
        )
    return results


# ---- command line --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """Train (or with `--eval-only` load) a VQVAE, evaluate it and write it plus `vqvae_eval.json` to `--output`."""
    parser = HfArgumentParser(VQVAETrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    if args.eval_only:
        if not (output / "config.json").is_file():
            raise SystemExit(f"--eval-only: no saved VQVAE in {output} (config.json missing)")
        model = VargptVQVAE.from_pretrained(output).to(args.device)
        stats: dict = {}
    else:
        initial = VargptVQVAE.from_pretrained(args.init_from) if args.init_from else None
        model, stats = train_vqvae(args, initial)
        output.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output)
    logger.info("evaluating on %d palette and %d random-colour scenes", args.eval_scenes, args.eval_random_color_scenes)
    results = {
        **evaluate_vqvae(model, args.eval_scenes, args.eval_random_color_scenes, seed=args.eval_seed,
                         fixed_box=args.fixed_box),
        "eval_seed": args.eval_seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        **stats,
    }
    if not args.eval_only:
        results["arguments"] = {k: v for k, v in asdict(args).items() if k not in ("output", "eval_only")}
    (output / EVAL_FILE_NAME).write_text(json.dumps(results, indent=2) + "\n")
    logger.info("evaluation: %s", json.dumps({k: v for k, v in results.items() if k != "arguments"}))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
