"""The shapes world: renderer, held-out split and the independent pixel checker."""

import random

import numpy as np
import pytest
from PIL import ImageFilter

from transformers_vargpt.shapes_world import (
    PALETTE,
    QUESTIONS,
    SHAPES,
    Scene,
    all_combinations,
    check_image,
    draw,
    held_out_combinations,
    random_scene,
    render,
    training_combinations,
)


def test_split_is_fixed_and_covers_every_word_in_training():
    combos, held, train = all_combinations(), held_out_combinations(), training_combinations()
    assert len(combos) == 8 * 3 * 7 and len(held) == 24 and len(train) == len(combos) - len(held)
    assert not set(held) & set(train)
    assert all(color != background for color, _, background in combos)
    for position, words in ((0, PALETTE), (1, SHAPES), (2, PALETTE)):
        assert {combo[position] for combo in train} == set(words)
    assert held == held_out_combinations()  # no random state involved


@pytest.mark.parametrize("image_size", [64, 96])
def test_rendered_scenes_follow_the_rules_and_are_read_back(image_size):
    rng = random.Random(1)
    for _ in range(150):
        scene = random_scene(rng, image_size)
        left, top, right, bottom = scene.box
        side = right - left + 1
        assert 0.35 * image_size <= side <= 0.65 * image_size and bottom - top == right - left
        assert left >= 0 and top >= 0 and right < image_size and bottom < image_size
        image = render(scene, image_size)
        pixels = np.asarray(image)
        assert tuple(pixels[pixels.shape[0] // 2, 0 if left > 0 else -1]) == PALETTE[scene.background]
        assert check_image(image).matches(scene)
        # a softened copy (as a decoder might draw it) is still read right
        assert check_image(image.filter(ImageFilter.GaussianBlur(0.8))).matches(scene)


def test_checker_rejects_what_is_not_a_scene():
    blank = draw("square", (0, 0, 0, 0), PALETTE["red"], PALETTE["blue"], 64)
    assert check_image(blank).shape is None
    wide = draw("square", (2, 20, 60, 40), PALETTE["red"], PALETTE["blue"], 64)  # a bar, not a square
    assert check_image(wide).shape is None
    off_palette = draw("circle", (10, 10, 40, 40), (128, 128, 128), PALETTE["blue"], 64)
    assert check_image(off_palette).color is None
    with pytest.raises(ValueError, match="RGB image"):
        check_image(np.zeros((4, 4, 3), dtype=np.uint8))


def test_answers_and_prompts():
    scene = Scene(shape="triangle", color="red", background="white", box=(0, 0, 30, 30))
    assert [scene.answer(kind) for kind in ("shape", "color", "background")] == ["triangle", "red", "white"]
    assert scene.answer("describe") == "A red triangle on a white background."
    assert scene.prompt(0) == "Draw a red triangle on a white background."
    assert set(QUESTIONS) == {"shape", "color", "background", "describe"}
    with pytest.raises(ValueError, match="unknown question kind"):
        scene.answer("size")
    with pytest.raises(ValueError, match="no box"):
        render(Scene("circle", "red", "blue"), 64)


def test_question_set_is_the_held_out_pictures_asked_every_one_word_question():
    from transformers_vargpt.shapes_world import ONE_WORD_KINDS, question_set

    records = question_set(seed=3, images_per_combination=2, image_size=48)
    assert len(records) == len(held_out_combinations()) * 2 * len(ONE_WORD_KINDS)
    assert [r.kind for r in records[:6]] == list(ONE_WORD_KINDS) * 2  # picture by picture: any prefix asks all kinds
    held = set(held_out_combinations())
    for record in records:
        assert record.scene.combination in held
        assert record.question == QUESTIONS[record.kind]
        assert record.answer == getattr(record.scene, record.kind)
        assert record.image.size == (48, 48) and check_image(record.image).matches(record.scene)
    # deterministic: the same arguments give the same pixels; another seed moves the shapes
    again = question_set(seed=3, images_per_combination=2, image_size=48)
    assert all(a.image.tobytes() == b.image.tobytes() and a.scene == b.scene for a, b in zip(records, again))
    other = question_set(seed=4, images_per_combination=2, image_size=48)
    assert [r.scene.box for r in other] != [r.scene.box for r in records]
    with pytest.raises(ValueError, match="unknown question kind"):
        question_set(kinds=("size",))


def test_normalize_answer_ignores_case_spaces_and_one_trailing_period():
    from transformers_vargpt.shapes_world import normalize_answer

    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer("CIRCLE") == "circle"
    assert normalize_answer("red..") == "red."
    assert normalize_answer("a red circle") == "a red circle"
