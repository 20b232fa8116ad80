"""The shapes-world VARGPT shipped in the package (`transformers_vargpt.BUNDLED_MODEL`): loads offline with plain
`from_pretrained`, draws what it is asked and answers questions about pictures it did not draw.

Pictures are judged by the independent pixel checker (`shapes_world.check_image`), never by the model. The prompts
and pictures use held-out combinations, which the model never saw in training.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

import transformers_vargpt
from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration
from transformers_vargpt.bundled.build import Recipe
from transformers_vargpt.bundled.evaluate import answer_is_right, answer_questions, image_sampling_defaults
from transformers_vargpt.shapes_world import (
    QUESTIONS,
    Scene,
    check_image,
    held_out_combinations,
    random_box,
    render,
    training_combinations,
)

WEIGHTS = Path(BUNDLED_MODEL) / "model.safetensors"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="the bundled weights are not built (make bundled-model)")

# held-out (colour, shape, background) triples, never seen in training; and as many seen ones (a fixed sample)
HELD_OUT = held_out_combinations()
SEEN = random.Random(0).sample(training_combinations(), len(HELD_OUT))
# what the tests ask of the shipped weights: below what they measure on the machines here (drawings 22/24 seen and
# 21/24 held out with the saved sampling, with and without OMP_NUM_THREADS=1; answers 24/24 for every question), so
# that another CPU's float rounding, which may change a sampled code or a close answer here and there, does not fail
# them; far above chance. Over 576 held-out drawings the model is at the bar (92.0%); these 24 draw 21 right (the model
# before it too, 86.6% over 576; with the sampling before that: 20/24; the one before: 17/24).
MIN_DRAWN_RIGHT_SEEN = 0.8
MIN_DRAWN_RIGHT_HELD_OUT = 0.7
MIN_ANSWERED_RIGHT = 0.85


@pytest.fixture(scope="module")
def bundled():
    model = VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    processor = AutoProcessor.from_pretrained(BUNDLED_MODEL)
    return model, processor


def test_bundled_model_ships_small_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.path.isdir(BUNDLED_MODEL) and BUNDLED_MODEL == transformers_vargpt.BUNDLED_MODEL
    assert WEIGHTS.stat().st_size <= 25 * 1024 * 1024
    card = (Path(BUNDLED_MODEL) / "README.md").read_text()
    report = json.loads((Path(BUNDLED_MODEL) / "evaluation.json").read_text())
    assert f"{100 * report['generation']['accuracy']:.1f}%" in card  # the card shows the evaluation's numbers
    assert (Path(BUNDLED_MODEL) / "samples.png").is_file()
    pipe = transformers_vargpt.VargptPipeline.from_pretrained(BUNDLED_MODEL)
    assert pipe.model.config.vq_config.image_size == 64


def test_sampling_defaults_are_saved(bundled):
    model, processor = bundled
    saved = model.generation_config.image_generation
    assert image_sampling_defaults(model) == {**saved}  # every image setting is the bundled model's own
    assert model.generation_config.do_sample is False  # answers are the most likely words
    # the recipe's sampling; guidance, where asked for, reads the recipe's generic drawing request, written as the
    # processor writes a prompt to draw
    recipe = Recipe()
    assert (saved["guidance_scale"], saved["temperature"]) == (recipe.guidance_scale, recipe.temperature)
    negative = processor(text=recipe.negative_prompt, generation_mode="image")["input_ids"][0]
    assert saved["negative_prompt_ids"] == [int(i) for i in negative]


@pytest.fixture(scope="module")
def pipe():
    return transformers_vargpt.VargptPipeline.from_pretrained(BUNDLED_MODEL)


@pytest.mark.parametrize(("combinations", "floor"), [(SEEN, MIN_DRAWN_RIGHT_SEEN), (HELD_OUT, MIN_DRAWN_RIGHT_HELD_OUT)],
                         ids=["seen-combinations", "held-out-combinations"])
def test_bundled_model_draws_what_it_is_asked(pipe, combinations, floor):
    """Each combination in one of the world's phrasings, with the saved sampling defaults and a fixed seed, through
    the pipeline: the pixel checker reads the asked shape and colours."""
    scenes = [Scene(shape=shape, color=color, background=background) for color, shape, background in combinations]
    prompts = [scene.prompt(index % 3) for index, scene in enumerate(scenes)]
    images = pipe(prompts, generator=torch.Generator().manual_seed(0)).images
    checked = [check_image(image) for image in images]
    right = [c.matches(scene) for c, scene in zip(checked, scenes)]
    wrong = [(prompt, c) for prompt, c, ok in zip(prompts, checked, right) if not ok]
    assert sum(right) / len(right) >= floor, f"{sum(right)}/{len(right)} right; wrong: {wrong}"


@pytest.mark.parametrize("kind", ["shape", "color", "background", "describe"])
def test_bundled_model_answers_questions_about_rendered_pictures(bundled, kind):
    """One picture of every held-out combination, at seeded random places and sizes, rendered here."""
    model, processor = bundled
    rng = random.Random(7)
    scenes = [Scene(shape=s, color=c, background=b, box=random_box(rng, 64)) for c, s, b in HELD_OUT]
    answers = answer_questions(model, processor, [render(scene, 64) for scene in scenes], QUESTIONS[kind])
    right = [answer_is_right(kind, answer, scene) for scene, answer in zip(scenes, answers)]
    wrong = [(scene, answer) for scene, answer, ok in zip(scenes, answers, right) if not ok]
    assert sum(right) / len(right) >= MIN_ANSWERED_RIGHT, f"{sum(right)}/{len(right)} right; wrong: {wrong}"
