"""Pre-training of the bundled model's CLIP vision tower on the shapes world, before stage 0.

The released VARGPT starts from a pretrained CLIP. Ours is trained from nothing, and a ViT learns geometry slowly:
read through the LLM, with a few thousand pictures, it learns the colours at once but tells a circle from a square
no better than chance. Pictures are cheap for the tower alone (tens of thousands a minute on a CPU), so it first
learns to name the shape, the shape's colour and the background's colour of rendered pictures from linear heads on
its mean patch feature (the features the LLM reads later). Half the pictures have uniformly random colours (far
from the palette) and are labelled with their shape only, so that the shape is read from the geometry, not guessed
from which colour pairs go with which shapes in the training combinations. Palette pictures come from the training
combinations only. The heads are thrown away; the tower's weights stay in the model.
"""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..shapes_world import PALETTE, SHAPES, draw, random_box, random_scene, render, training_combinations

logger = logging.getLogger("transformers_vargpt.bundled")
COLORS = list(PALETTE)


def random_far_color(rng: random.Random, min_distance: float = 70.0) -> tuple[int, int, int]:
    """A uniformly random RGB colour at least `min_distance` from every palette colour."""
    palette = np.asarray(list(PALETTE.values()), dtype=np.float64)
    while True:
        rgb = tuple(rng.randrange(256) for _ in range(3))
        if np.linalg.norm(palette - np.asarray(rgb), axis=1).min() >= min_distance:
            return rgb


def labelled_batch(rng: random.Random, batch_size: int, image_size: int, random_color_fraction: float):
    """(uint8 images B×H×W×3, shape labels B, colour labels B, background labels B); -100 = no label."""
    images, shapes, colors, backgrounds = [], [], [], []
    combinations = training_combinations()
    for _ in range(batch_size):
        if rng.random() < random_color_fraction:
            shape = rng.choice(SHAPES)
            fill = random_far_color(rng)
            background = random_far_color(rng)
            while np.linalg.norm(np.subtract(fill, background)) < 100:
                background = random_far_color(rng)
            images.append(np.asarray(draw(shape, random_box(rng, image_size), fill, background, image_size)))
            shapes.append(SHAPES.index(shape))
            colors.append(-100)
            backgrounds.append(-100)
        else:
            scene = random_scene(rng, image_size, combinations)
            images.append(np.asarray(render(scene, image_size)))
            shapes.append(SHAPES.index(scene.shape))
            colors.append(COLORS.index(scene.color))
            backgrounds.append(COLORS.index(scene.background))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return np.stack(images), as_tensor(shapes), as_tensor(colors), as_tensor(backgrounds)


class VisionProbe(nn.Module):
    """The vision tower with three linear heads on its mean patch feature (layer `feature_layer`)."""

    def __init__(self, vision_tower: nn.Module, feature_layer: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.feature_layer = feature_layer
        width = vision_tower.config.hidden_size
        self.shape_head = nn.Linear(width, len(SHAPES))
        self.color_head = nn.Linear(width, len(COLORS))
        self.background_head = nn.Linear(width, len(COLORS))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        pooled = hidden[:, 1:].mean(dim=1)  # patch features, without CLS (what the LLM reads)
        return self.shape_head(pooled), self.color_head(pooled), self.background_head(pooled)


def normalize(images: np.ndarray, image_processor) -> torch.Tensor:
    """uint8 B×H×W×3 → CLIP-normalised B×3×H×W, as the processor does for pictures already at the tower's size."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() * image_processor.rescale_factor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def pretrain_vision_tower(
    model,
    image_processor,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    random_color_fraction: float = 0.5,
    warmup_steps: int = 50,
    log_every: int = 250,
    device: str | torch.device = "cpu",
) -> dict:
    """Train `model.model.vision_tower` in place; returns the final accuracies on fresh palette pictures."""
    config = model.config
    image_size = config.vision_config.image_size
    rng = random.Random(seed)
    torch.manual_seed(seed)
    probe = VisionProbe(model.model.vision_tower, config.vision_feature_layer).to(device)
    probe.train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=0.0)

    def schedule(step: int) -> float:  # linear warmup, cosine decay to 5 %
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    running = []
    for step in range(steps):
        images, shapes, colors, backgrounds = labelled_batch(rng, batch_size, image_size, random_color_fraction)
        shapes, colors, backgrounds = shapes.to(device), colors.to(device), backgrounds.to(device)
        shape_logits, color_logits, background_logits = probe(normalize(images, image_processor).to(device))
        loss = F.cross_entropy(shape_logits, shapes)
        if (colors != -100).any():
            loss = loss + F.cross_entropy(color_logits, colors, ignore_index=-100)
            loss = loss + F.cross_entropy(background_logits, backgrounds, ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            logger.info(f"vision pre-training step {step + 1}/{steps}: loss {np.mean(running):.4f}")
            running = []

    # accuracy on fresh palette pictures (training combinations) and on random-colour shapes
    probe.eval()
    check_rng = random.Random(seed + 1)
    with torch.no_grad():
        images, shapes, colors, backgrounds = labelled_batch(check_rng, 256, image_size, 0.0)
        shape_logits, color_logits, background_logits = (
            logits.cpu() for logits in probe(normalize(images, image_processor).to(device)))
        random_images, random_shapes, _, _ = labelled_batch(check_rng, 256, image_size, 1.0)
        random_shape_logits = probe(normalize(random_images, image_processor).to(device))[0].cpu()
    metrics = {
        "shape_accuracy": (shape_logits.argmax(-1) == shapes).float().mean().item(),
        "color_accuracy": (color_logits.argmax(-1) == colors).float().mean().item(),
        "background_accuracy": (background_logits.argmax(-1) == backgrounds).float().mean().item(),
        "random_color_shape_accuracy": (random_shape_logits.argmax(-1) == random_shapes).float().mean().item(),
    }
    logger.info(f"vision pre-training done: {metrics}")
    return metrics


__all__ = ["pretrain_vision_tower", "labelled_batch", "random_far_color", "VisionProbe"]
