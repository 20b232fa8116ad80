"""A tiny synthetic dataset of coloured shapes in the released training format, for examples and tests.

Everything is written under the directory given: `images/*.png` and `train.jsonl` (image paths relative to that
directory, so use it as `image_root`). The words come from the vocabulary of `tiny_models.build_tiny_tokenizer`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("generation", "understanding", "text")


def draw_shape(shape: str, color: str, size: int = 64) -> Image.Image:
    """A `color` `shape` centred on a white square image."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    low, high = size // 5, size - size // 5
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((low, low, high, high), fill=fill)
    elif shape == "square":
        draw.rectangle((low, low, high, high), fill=fill)
    elif shape == "triangle":
        draw.polygon([(size // 2, low), (high, high), (low, high)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def write_shapes_dataset(
    directory: str | os.PathLike,
    num_examples: int = 16,
    kinds: tuple[str, ...] = KINDS,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write `num_examples` conversations (cycling through `kinds`) and their PNGs; return the JSONL path.

    `generation` asks to draw a shape (`<image_gen>` in the answer), `understanding` asks about a shape
    (`<image>` in the question), `text` has no image.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for index in range(num_examples):
        kind = kinds[index % len(kinds)]
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        if kind == "text":
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"what color is a {color} {shape} ?"},
                        {"role": "assistant", "content": f"it is {color} ."},
                    ],
                    "images": [],
                }
            )
            continue
        relative = f"images/{index:04d}.png"
        draw_shape(shape, color, image_size).save(directory / relative)
        if kind == "generation":
            messages = [
                {"role": "user", "content": f"please draw a {color} {shape} ."},
                {"role": "assistant", "content": f"here is a {color} {shape} .<image_gen>"},
            ]
        else:
            messages = [
                {"role": "user", "content": "<image>\nwhat shape is this ?"},
                {"role": "assistant", "content": f"a {color} {shape} ."},
            ]
        rows.append({"messages": messages, "images": [relative]})
    path = directory / "train.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


__all__ = ["draw_shape", "write_shapes_dataset"]
