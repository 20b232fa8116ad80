"""Seeded training and evaluation data of the shapes world in the released format that `vargpt-train` reads.

`write_shapes_world_dataset(directory, ...)` writes `images/*.png` (64×64 by default) and a JSON Lines file of
`{"messages": [...], "images": [...]}` rows (image paths relative to `directory`, which is the `image_root`):

- understanding rows ask about a picture (`<image>` in the first user turn): the shape, the shape's colour, the
  background's colour (one-word answers) or a description (one sentence), in the world's phrasings or a few
  paraphrases, one question or several in turn;
- generation rows ask for a picture in one of the world's prompt phrasings; the answer draws it (`<image_gen>` in
  the assistant turn), sometimes after a sentence saying what it draws, sometimes at once (as the pipeline and the
  `vargpt generate` command prompt it: `ASSISTANT:` directly followed by `<|image_gen_start|>`). The pictures to
  draw put the shape in one fixed box (`DRAWING_BOX`, centred, 56 % of the side): the prompt then fixes every code
  of the picture, and a small generator learns to draw each combination in a few thousand examples, where shapes
  anywhere took many times more. Pictures to read have the shape anywhere, as the world allows.

Generation rows can also draw in colours outside the palette (`EXTRA_DRAWING_COLORS`), so that the generator sees
each shape with hundreds of colour pairs instead of the world's 56 and learns the shape apart from its colours.

Only `training_combinations()` appear; `held_out_combinations()` are reserved for evaluation.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

from .vision_pretraining import random_far_color
from ..shapes_world import (
    GENERATION_PROMPTS,
    PALETTE,
    SHAPES,
    all_combinations,
    draw,
    QUESTIONS,
    random_scene,
    render,
    training_combinations,
)

# Paraphrases beside the world's own wording (QUESTIONS / GENERATION_PROMPTS), so the model reads meaning, not one
# fixed string. The world's wording is drawn half of the time.
QUESTION_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "shape": ("What shape is in the image?", "What shape is this?", "Which shape do you see?",
              "What is the shape in the picture?"),
    "color": ("What color is the shape?", "What is the color of the shape?", "Which color is the shape?",
              "What color is the object?"),
    "background": ("What color is the background?", "What is the background color?",
                   "Which color is the background?", "What is the color of the background?"),
    "describe": ("Describe the image.", "Describe this picture.", "What is in the image?",
                 "Describe the image in one sentence."),
}
PROMPT_PARAPHRASES: tuple[str, ...] = GENERATION_PROMPTS + (
    "Draw a picture of a {color} {shape} on a {background} background.",
    "Generate a {color} {shape} on a {background} background.",
    "Create an image of a {color} {shape} on a {background} background.",
)
GENERATION_ANSWER = "Here is a {color} {shape} on a {background} background."
KINDS = ("understanding", "generation")
# where generation rows draw the shape in a 64×64 picture (left, top, right, bottom, inclusive): centred, side 36 px
DRAWING_BOX = (14, 14, 49, 49)
# Colours that generation rows may draw besides the palette (`extra_drawing_share` of them, never in questions). With
# the palette alone the generator learnt each shape together with the colour pairs it saw it in, and drew the held-out
# combinations' shapes wrong; with many more pairs the shape has to come from the shape word. Each is at least 80 RGB
# units from every palette colour (the pixel checker accepts 60) and from the pink of examples/teach_pink_lora.py, a
# colour the model must not know yet, and at least 40 from each other. In generation-only trials (800 steps of 16, 72
# held-out prompts, seed 0, the shipped sampling): palette alone 48.6% right; the first eight in half of the rows
# 79.2%, in three quarters 70.8%. Trials on a GPU of 2026-11-28 (each trained with 2 or 3 seeds, 288 held-out drawings
# each, guided sampling): the first eight 80.3% (800 steps) and 85.3% (1600); all sixteen 83.0% and 87.5%; 23
# colours 70.3% and 80.5% (more colours to learn need more steps).
EXTRA_DRAWING_COLORS: dict[str, tuple[int, int, int]] = {
    "cyan": (40, 200, 210),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "navy": (20, 30, 110),
    "lime": (160, 230, 60),
    "teal": (20, 120, 120),
    "maroon": (120, 20, 40),
    "olive": (120, 120, 30),
    "indigo": (75, 0, 130),
    "silver": (190, 190, 190),
    "mint": (150, 240, 190),
    "sky": (130, 190, 240),
    "lavender": (180, 160, 230),
    "khaki": (190, 180, 110),
    "peach": (250, 190, 140),
    "aqua": (100, 230, 230),
}


def _question(rng: random.Random, kind: str) -> str:
    return QUESTIONS[kind] if rng.random() < 0.5 else rng.choice(QUESTION_PARAPHRASES[kind])


def _prompt(rng: random.Random) -> str:
    return rng.choice(GENERATION_PROMPTS) if rng.random() < 0.6 else rng.choice(PROMPT_PARAPHRASES)


def _balanced_stream(rng: random.Random, combinations: list[tuple[str, str, str]]):
    """Every combination once per round, each round in a new seeded order: no triple is left out by chance."""
    while True:
        yield from rng.sample(combinations, len(combinations))


def write_shapes_world_dataset(
    directory: str | os.PathLike,
    num_understanding: int,
    num_generation: int,
    image_size: int = 64,
    seed: int = 0,
    combinations: list[tuple[str, str, str]] | None = None,
    filename: str = "train.jsonl",
    answer_before_image: float = 0.5,
    questions_per_image: int = 1,
    random_color_shapes: float = 0.0,
    palette: dict[str, tuple[int, int, int]] = PALETTE,
    drawing_box: tuple[int, int, int, int] | None = DRAWING_BOX,
    extra_drawing_colors: dict[str, tuple[int, int, int]] | None = None,
    extra_drawing_share: float = 0.0,
) -> Path:
    """Write a shuffled mix of understanding and generation rows and their PNGs; return the JSONL path.

    Images are named after the JSONL file, so several files (e.g. per training stage) can share `directory`.

    Args:
        directory: where `images/` and the JSONL file go (the `image_root` of training).
        num_understanding / num_generation: rows of each kind (question kinds cycle evenly).
        image_size: side of the pictures in pixels.
        seed: seeds everything (scenes, phrasings, order): the same arguments write the same files.
        combinations: (colour, shape, background) triples to draw from; default `training_combinations()`.
        filename: name of the JSONL file.
        answer_before_image: fraction of generation rows whose answer says what it draws before `<image_gen>`.
        questions_per_image: most questions asked about one picture; an understanding row asks 1 to this many
            (different kinds, the first cycling evenly over the kinds), which trains more answers per image read.
        random_color_shapes: fraction of understanding rows that instead show the shape in random colours far from
            the palette and ask only its shape, so the shape is learned from geometry rather than from which colour
            pairs the training combinations draw with which shape.
        palette: colour names to RGB for rendering (default: the world's `PALETTE`); must name every colour of
            `combinations` (a fine-tune's new colours, say).
        drawing_box: the box generation rows draw the shape in (default `DRAWING_BOX` for 64×64 pictures, scaled to
            `image_size`); None draws it anywhere, like the pictures to read.
        extra_drawing_colors: colour names to RGB outside `palette` that generation rows may also draw (e.g.
            `EXTRA_DRAWING_COLORS`); a row drawing them pairs at least one of them with any colour, any shape.
        extra_drawing_share: fraction of generation rows drawn in those colours (the others draw `combinations`).
    """
    if num_understanding < 0 or num_generation < 0 or num_understanding + num_generation == 0:
        raise ValueError(f"need a positive number of rows, got {num_understanding} + {num_generation}")
    if not 1 <= questions_per_image <= len(QUESTIONS):
        raise ValueError(f"questions_per_image must be in [1, {len(QUESTIONS)}], got {questions_per_image}")
    if not 0.0 <= answer_before_image <= 1.0:
        raise ValueError(f"answer_before_image must be in [0, 1], got {answer_before_image}")
    if drawing_box is not None:
        drawing_box = scaled_box(drawing_box, image_size)
    if not 0.0 <= extra_drawing_share <= 1.0:
        raise ValueError(f"extra_drawing_share must be in [0, 1], got {extra_drawing_share}")
    if extra_drawing_share and not extra_drawing_colors:
        raise ValueError("extra_drawing_share > 0 needs extra_drawing_colors to draw in")
    clashes = sorted(set(extra_drawing_colors or {}) & set(palette))
    if clashes:
        raise ValueError(f"extra_drawing_colors must be outside the palette; both name {clashes}")
    combinations = list(combinations if combinations is not None else training_combinations())
    if not combinations:
        raise ValueError("no combinations to draw from")
    colors = {**palette, **(extra_drawing_colors or {})}  # what the pictures may be rendered in
    extra_stream = None
    if extra_drawing_share:
        # every pair with at least one extra colour: a palette combination never comes from here, held out or not
        extra_combinations = [(color, shape, background) for color, shape, background in all_combinations(colors)
                              if color in extra_drawing_colors or background in extra_drawing_colors]
        extra_stream = _balanced_stream(random.Random(seed + 7919), extra_combinations)
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    question_kinds = list(QUESTIONS)
    plan = ["understanding"] * num_understanding + ["generation"] * num_generation
    rng.shuffle(plan)
    combination_stream = _balanced_stream(rng, combinations)
    rows = []
    understanding_index = 0
    for index, kind in enumerate(plan):
        if kind == "generation" and extra_stream is not None and rng.random() < extra_drawing_share:
            scene = random_scene(rng, image_size, [next(extra_stream)])
        else:
            scene = random_scene(rng, image_size, [next(combination_stream)])
        relative = f"images/{Path(filename).stem}-{index:06d}.png"
        words = {"color": scene.color, "shape": scene.shape, "background": scene.background}
        if kind == "understanding" and rng.random() < random_color_shapes:
            # a shape in colours outside the palette: only its shape has a name, read from the geometry alone
            fill, background = random_far_color(rng), random_far_color(rng)
            while sum((a - b) ** 2 for a, b in zip(fill, background)) < 100**2:
                background = random_far_color(rng)
            draw(scene.shape, scene.box, fill, background, image_size).save(directory / relative)
            messages = [{"role": "user", "content": "<image>\n" + _question(rng, "shape")},
                        {"role": "assistant", "content": scene.shape}]
            rows.append({"messages": messages, "images": [relative]})
            continue
        if kind == "generation" and drawing_box is not None:
            scene = replace(scene, box=drawing_box)
        render(scene, image_size, colors).save(directory / relative)
        if kind == "understanding":
            # the first question cycles through the kinds; follow-up turns (up to `questions_per_image`) ask others
            first = question_kinds[understanding_index % len(question_kinds)]
            understanding_index += 1
            others = rng.sample([k for k in question_kinds if k != first], rng.randint(0, questions_per_image - 1))
            messages = []
            for turn, question_kind in enumerate([first] + others):
                question = ("<image>\n" if turn == 0 else "") + _question(rng, question_kind)
                messages += [{"role": "user", "content": question},
                             {"role": "assistant", "content": scene.answer(question_kind)}]
        else:
            answer = "<image_gen>"
            if rng.random() < answer_before_image:
                answer = GENERATION_ANSWER.format(**words) + "<image_gen>"
            messages = [
                {"role": "user", "content": _prompt(rng).format(**words)},
                {"role": "assistant", "content": answer},
            ]
        rows.append({"messages": messages, "images": [relative]})
    path = directory / filename
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def scaled_box(box: tuple[int, int, int, int], image_size: int, reference_size: int = 64) -> tuple[int, int, int, int]:
    """`box` (pixels of a `reference_size` picture, inclusive) at the same place and size in an `image_size` one."""
    if image_size == reference_size:
        return tuple(box)
    left, top, right, bottom = (round(v * image_size / reference_size) for v in (box[0], box[1], box[2] + 1, box[3] + 1))
    return (left, top, right - 1, bottom - 1)


def world_texts(extra_colors: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Every sentence the dataset can contain (prompts, questions, answers), for building the vocabulary; with the
    drawing requests in `extra_colors` (names of `EXTRA_DRAWING_COLORS`) too."""
    texts = [q for phrasings in QUESTION_PARAPHRASES.values() for q in phrasings] + list(QUESTIONS.values())
    colors = [*PALETTE, *extra_colors]
    for color in colors:
        for shape in SHAPES:
            for background in colors:
                words = {"color": color, "shape": shape, "background": background}
                texts += [p.format(**words) for p in PROMPT_PARAPHRASES]
                texts.append(GENERATION_ANSWER.format(**words))
                texts.append(f"A {color} {shape} on a {background} background.")
    return texts


__all__ = ["KINDS", "DRAWING_BOX", "EXTRA_DRAWING_COLORS", "scaled_box", "QUESTION_PARAPHRASES", "PROMPT_PARAPHRASES",
           "GENERATION_ANSWER", "write_shapes_world_dataset", "world_texts"]
