"""The shapes-world VARGPT shipped in the package (`transformers_vargpt.BUNDLED_MODEL`): loads offline with plain
`from_pretrained`, draws what it is asked and answers questions about pictures it did not draw.

Pictures are judged by the independent pixel checker (`shapes_world.check_image`), never by the model. The prompts
and pictures use held-out combinations, which the model never saw in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

import transformers_vargpt
from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration
from transformers_vargpt.bundled.evaluate import answer_is_right, answer_questions, image_sampling_defaults
from transformers_vargpt.shapes_world import QUESTIONS, Scene, check_image, held_out_combinations, render

WEIGHTS = Path(BUNDLED_MODEL) / "model.safetensors"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="the bundled weights are not built (make bundled-model)")

# held-out (colour, shape, background) triples, one of each shape, asked in each of the world's phrasings
HELD_OUT = held_out_combinations()
DRAW_CASES = [(HELD_OUT[i], i % 3) for i in (0, 7, 13, 20)]


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
    model, _ = bundled
    saved = model.generation_config.image_generation
    assert image_sampling_defaults(model) == {**saved}  # every image setting is the bundled model's own
    assert model.generation_config.do_sample is False  # answers are the most likely words


@pytest.mark.parametrize("combination,template", DRAW_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bundled_model_draws_what_it_is_asked(combination, template, seed):
    color, shape, background = combination
    scene = Scene(shape=shape, color=color, background=background)
    pipe = transformers_vargpt.VargptPipeline.from_pretrained(BUNDLED_MODEL)
    image = pipe(scene.prompt(template), generator=torch.Generator().manual_seed(seed)).images[0]  # saved defaults
    checked = check_image(image)
    assert checked.matches(scene), f"{scene.prompt(template)!r} drew {checked}"


@pytest.mark.parametrize("kind", ["shape", "color", "background", "describe"])
def test_bundled_model_answers_questions_about_rendered_pictures(bundled, kind):
    model, processor = bundled
    boxes = [(4, 6, 31, 33), (30, 28, 62, 60), (12, 20, 45, 53), (20, 2, 43, 25)]
    scenes = [Scene(shape=s, color=c, background=b, box=box) for (c, s, b), box in zip(HELD_OUT[1::6], boxes)]
    images = [render(scene, 64) for scene in scenes]
    answers = answer_questions(model, processor, images, QUESTIONS[kind])
    for scene, answer in zip(scenes, answers):
        assert answer_is_right(kind, answer, scene), f"{QUESTIONS[kind]!r} about {scene}: {answer!r}"
