"""The shapes world: the synthetic pictures the bundled small VARGPT is trained on, and a pixel checker for them.

A picture is a solid background colour with one filled shape (circle, axis-aligned square, or isosceles triangle
with its apex up) whose bounding box is 35–65 % of the image side and lies fully inside the image. Colours come from
an eight-colour palette; the shape's colour differs from the background's.

Everything here is plain PIL / numpy: the renderer writes training data, and `check_image` reads a picture back from
its pixels alone (image statistics, never a model), so a generated image can be judged independently of the model
that drew it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
MIN_BOX_FRACTION, MAX_BOX_FRACTION = 0.35, 0.65

GENERATION_PROMPTS = (
    "Draw a {color} {shape} on a {background} background.",
    "Please generate an image of a {color} {shape} on a {background} background.",
    "Can you create a picture of a {color} {shape} on a {background} background?",
)
# question kind -> question; the answers are `Scene.answer(kind)`
QUESTIONS = {
    "shape": "What shape is in the image?",
    "color": "What color is the shape?",
    "background": "What color is the background?",
    "describe": "Describe the image.",
}
# the questions answered with one word, scored by exact match (`normalize_answer`)
ONE_WORD_KINDS = ("shape", "color", "background")
# the held-out question set that every evaluation of a shapes-world model asks (`question_set`'s defaults)
HELD_OUT_QUESTION_SEED = 12345
HELD_OUT_IMAGES_PER_COMBINATION = 4


@dataclass(frozen=True)
class Scene:
    """One picture of the world: what is drawn and where (`box` = left, top, right, bottom in pixels, inclusive)."""

    shape: str
    color: str
    background: str
    box: tuple[int, int, int, int] | None = None

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.background)

    def answer(self, kind: str) -> str:
        """The right answer to `QUESTIONS[kind]`: one word, or one sentence for "describe"."""
        if kind == "shape":
            return self.shape
        if kind == "color":
            return self.color
        if kind == "background":
            return self.background
        if kind == "describe":
            return f"A {self.color} {self.shape} on a {self.background} background."
        raise ValueError(f"unknown question kind {kind!r}; expected one of {sorted(QUESTIONS)}")

    def prompt(self, template_index: int = 0) -> str:
        """The generation request for this scene in phrasing `template_index` of `GENERATION_PROMPTS`."""
        template = GENERATION_PROMPTS[template_index % len(GENERATION_PROMPTS)]
        return template.format(color=self.color, shape=self.shape, background=self.background)


def all_combinations(palette: dict[str, tuple[int, int, int]] = PALETTE) -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) with colour != background, in a fixed order."""
    names = list(palette)
    return [(c, s, b) for c, s, b in itertools.product(names, SHAPES, names) if c != b]


def held_out_combinations(palette: dict[str, tuple[int, int, int]] = PALETTE) -> list[tuple[str, str, str]]:
    """The fixed one-in-seven of the combinations never shown in training (24 of 168 for the default palette).

    A combination is held out by a fixed arithmetic rule on its indices, so every colour, shape and background
    still appears in training in other combinations, and the split does not depend on any random state.
    """
    names = list(palette)
    held = []
    for color, shape, background in all_combinations(palette):
        index = names.index(color) + 3 * SHAPES.index(shape) + 2 * names.index(background)
        if index % 7 == 0:
            held.append((color, shape, background))
    return held


def training_combinations(palette: dict[str, tuple[int, int, int]] = PALETTE) -> list[tuple[str, str, str]]:
    """All combinations that are not held out."""
    held = set(held_out_combinations(palette))
    return [combination for combination in all_combinations(palette) if combination not in held]


def random_box(rng: random.Random, image_size: int) -> tuple[int, int, int, int]:
    """A square bounding box 35–65 % of the side, placed uniformly where it fits inside the image."""
    low = int(np.ceil(MIN_BOX_FRACTION * image_size))
    high = int(np.floor(MAX_BOX_FRACTION * image_size))
    side = rng.randint(low, high)
    left = rng.randint(0, image_size - side)
    top = rng.randint(0, image_size - side)
    return (left, top, left + side - 1, top + side - 1)


def random_scene(
    rng: random.Random, image_size: int, combinations: list[tuple[str, str, str]] | None = None
) -> Scene:
    """A scene of a combination drawn from `combinations` (default: all), at a random size and place."""
    color, shape, background = rng.choice(combinations or all_combinations())
    return Scene(shape=shape, color=color, background=background, box=random_box(rng, image_size))


def draw(
    shape: str,
    box: tuple[int, int, int, int],
    fill: tuple[int, int, int],
    background: tuple[int, int, int],
    image_size: int,
) -> Image.Image:
    """A `shape` filled with RGB `fill` inside `box` on an RGB `background` (any colours, not only the palette)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    image = Image.new("RGB", (image_size, image_size), tuple(background))
    canvas = ImageDraw.Draw(image)
    left, top, right, bottom = box
    if shape == "circle":
        canvas.ellipse((left, top, right, bottom), fill=tuple(fill))
    elif shape == "square":
        canvas.rectangle((left, top, right, bottom), fill=tuple(fill))
    else:
        canvas.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=tuple(fill))
    return image


def render(scene: Scene, image_size: int, palette: dict[str, tuple[int, int, int]] = PALETTE) -> Image.Image:
    """The picture of `scene` (its `box` must be set)."""
    if scene.box is None:
        raise ValueError("the scene has no box; build it with random_scene or give box=(left, top, right, bottom)")
    for name in (scene.color, scene.background):
        if name not in palette:
            raise ValueError(f"unknown colour {name!r}; expected one of {sorted(palette)}")
    return draw(scene.shape, scene.box, palette[scene.color], palette[scene.background], image_size)


@dataclass(frozen=True)
class QuestionRecord:
    """One question about one rendered picture and its right answer."""

    image: Image.Image
    kind: str
    question: str
    answer: str
    scene: Scene


def question_set(
    seed: int = HELD_OUT_QUESTION_SEED,
    images_per_combination: int = HELD_OUT_IMAGES_PER_COMBINATION,
    image_size: int = 64,
    kinds: tuple[str, ...] = ONE_WORD_KINDS,
) -> list[QuestionRecord]:
    """The held-out questions: pictures of the held-out combinations, each asked every question of `kinds`.

    Pictures are `images_per_combination` per held-out combination (in `held_out_combinations` order), each at a
    size and place drawn from `random.Random(seed)`; records run picture by picture, the kinds in the given order
    (so any prefix asks every kind about the same number of pictures, give or take one). Plain PIL drawing from a
    seeded generator: the same arguments give the same pixels on every machine. Every evaluation of a shapes-world
    model (the bundled model's script, the lmms-eval task `vargpt_shapes_qa`) asks this one set.
    """
    for kind in kinds:
        if kind not in QUESTIONS:
            raise ValueError(f"unknown question kind {kind!r}; expected some of {sorted(QUESTIONS)}")
    if images_per_combination < 1:
        raise ValueError(f"images_per_combination must be at least 1, got {images_per_combination}")
    rng = random.Random(seed)
    records = []
    for color, shape, background in held_out_combinations():
        for _ in range(images_per_combination):
            scene = Scene(shape=shape, color=color, background=background, box=random_box(rng, image_size))
            image = render(scene, image_size)
            records += [QuestionRecord(image, kind, QUESTIONS[kind], scene.answer(kind), scene) for kind in kinds]
    return records


def normalize_answer(text: str) -> str:
    """An answer as exact match compares it: stripped, lower-cased, one trailing period removed."""
    text = text.strip().lower()
    return text[:-1].strip() if text.endswith(".") else text


# ---- the pixel checker ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedImage:
    """What `check_image` read from a picture's pixels; a field is None where the picture is not readable as one."""

    shape: str | None
    color: str | None
    background: str | None
    fill_ratio: float
    box_fraction: float

    def matches(self, scene: Scene) -> bool:
        return (self.shape, self.color, self.background) == (scene.shape, scene.color, scene.background)


def nearest_color(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]], max_distance: float) -> str | None:
    """The palette name nearest to `rgb` (Euclidean in RGB), or None if none is within `max_distance`."""
    names = list(palette)
    distances = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    best = int(distances.argmin())
    return names[best] if distances[best] <= max_distance else None


def check_image(
    image: Image.Image | np.ndarray,
    palette: dict[str, tuple[int, int, int]] = PALETTE,
    color_tolerance: float = 60.0,
) -> CheckedImage:
    """Read shape, shape colour and background colour of a shapes-world picture from its pixel statistics.

    Background: the median colour of the one-pixel border. Shape: the pixels farther than `color_tolerance` from
    the background; its colour is their median, its kind follows from how much of its bounding box it fills
    (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2) and, for triangles, that its top row is narrower than its bottom.
    A shape whose box is not roughly square or is far outside the world's 35–65 % size is not recognised.

    Args:
        image: RGB PIL image or (H, W, 3) uint8 array.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 8:
        raise ValueError(f"expected an RGB image of at least 8x8 pixels, got an array of shape {pixels.shape}")
    height, width, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_color(background_rgb, palette, color_tolerance)

    mask = np.linalg.norm(pixels - background_rgb, axis=2) > color_tolerance
    area = int(mask.sum())
    if area < 0.02 * height * width:
        return CheckedImage(shape=None, color=None, background=background, fill_ratio=0.0, box_fraction=0.0)
    color = nearest_color(np.median(pixels[mask], axis=0), palette, color_tolerance)

    # Bounding box of the rows / columns that hold a real part of the shape (ignores stray pixels).
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    if len(rows) == 0 or len(cols) == 0:
        return CheckedImage(shape=None, color=color, background=background, fill_ratio=0.0, box_fraction=0.0)
    box_height, box_width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    fill_ratio = float(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].mean())
    box_fraction = float(max(box_height / height, box_width / width))
    aspect = box_width / box_height

    shape = None
    if 0.75 <= aspect <= 1.33 and 0.25 <= box_fraction <= 0.75:
        band = max(1, box_height // 5)
        top_width = mask[rows[0] : rows[0] + band].sum(axis=1).mean()
        bottom_width = mask[rows[-1] - band + 1 : rows[-1] + 1].sum(axis=1).mean()
        if fill_ratio >= 0.9:
            shape = "square"
        elif 0.68 <= fill_ratio < 0.9 and top_width < 0.8 * box_width:
            shape = "circle"
        elif 0.35 <= fill_ratio < 0.68 and top_width < 0.5 * bottom_width:
            shape = "triangle"
    return CheckedImage(shape=shape, color=color, background=background, fill_ratio=fill_ratio, box_fraction=box_fraction)


__all__ = [
    "PALETTE",
    "SHAPES",
    "GENERATION_PROMPTS",
    "QUESTIONS",
    "ONE_WORD_KINDS",
    "HELD_OUT_QUESTION_SEED",
    "HELD_OUT_IMAGES_PER_COMBINATION",
    "Scene",
    "QuestionRecord",
    "question_set",
    "normalize_answer",
    "CheckedImage",
    "all_combinations",
    "held_out_combinations",
    "training_combinations",
    "random_box",
    "random_scene",
    "draw",
    "render",
    "nearest_color",
    "check_image",
]
