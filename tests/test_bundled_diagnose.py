"""`bundled.diagnose`: forcing the first scales of a drawing to given codes, and the VQVAE's ceiling, on the bundled
model (held-out combinations, one seed: a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LogitsProcessorList

from transformers_vargpt import BUNDLED_MODEL, VargptForConditionalGeneration
from transformers_vargpt.bundled.dataset import DRAWING_BOX
from transformers_vargpt.bundled.diagnose import (
    ForcedScales,
    forced_scale_accuracy,
    pixel_values,
    right_pictures,
    summary,
    vqvae_ceiling,
)
from transformers_vargpt.shapes_world import held_out_combinations

pytestmark = pytest.mark.skipif(not (Path(BUNDLED_MODEL) / "model.safetensors").is_file(),
                                reason="the bundled weights are not built (make bundled-model)")
COMBINATIONS = held_out_combinations()[:6]


@pytest.fixture(scope="module")
def bundled():
    model = VargptForConditionalGeneration.from_pretrained(BUNDLED_MODEL).eval()
    return model, AutoProcessor.from_pretrained(BUNDLED_MODEL)


def _draw(model, processor, num_forced: int, codes: torch.LongTensor, seed: int = 0):
    scenes = right_pictures(COMBINATIONS, DRAWING_BOX)
    inputs = processor(text=[scene.prompt(0) for scene in scenes], generation_mode="image", return_tensors="pt")
    processors = LogitsProcessorList([ForcedScales(codes, model.config.vq_config.scale_sizes, num_forced)])
    return model.generate_images(inputs["input_ids"], inputs["attention_mask"], logits_processor=processors,
                                 generator=torch.Generator().manual_seed(seed)).image_tokens


def test_forcing_every_scale_draws_the_encoders_codes_and_none_changes_nothing(bundled):
    model, processor = bundled
    vqvae = model.model.vqvae
    codes = vqvae.tokenize(pixel_values(right_pictures(COMBINATIONS, DRAWING_BOX), vqvae.config.image_size))
    num_scales = len(vqvae.config.scale_sizes)
    assert torch.equal(_draw(model, processor, num_scales, codes), codes)

    scenes = right_pictures(COMBINATIONS, DRAWING_BOX)
    inputs = processor(text=[scene.prompt(0) for scene in scenes], generation_mode="image", return_tensors="pt")
    plain = model.generate_images(inputs["input_ids"], inputs["attention_mask"],
                                  generator=torch.Generator().manual_seed(0)).image_tokens
    assert torch.equal(_draw(model, processor, 0, codes), plain)

    # two scales forced: exactly those codes agree, and the drawing goes on from them
    two = _draw(model, processor, 2, codes)
    first_two = sum(side * side for side in vqvae.config.scale_sizes[:2])
    assert torch.equal(two[:, :first_two], codes[:, :first_two])


def test_forced_codes_must_match_the_batch(bundled):
    model, processor = bundled
    codes = torch.zeros(len(COMBINATIONS) - 1, model.config.num_image_gen_tokens, dtype=torch.long)
    with pytest.raises(ValueError, match="forced codes give"):
        _draw(model, processor, 1, codes)


def test_ceiling_and_all_scales_forced_read_the_same_pictures(bundled):
    """Both decode the encoder's codes of the right pictures, so the checker reads them alike."""
    model, processor = bundled
    ceiling = vqvae_ceiling(model, COMBINATIONS, DRAWING_BOX)
    forced = forced_scale_accuracy(model, processor, COMBINATIONS, [0], len(model.config.vq_config.scale_sizes),
                                   DRAWING_BOX)
    assert forced["num_images"] == 3 * len(COMBINATIONS)
    missed_by_ceiling = {" ".join(m["combination"]) for m in ceiling["missed"]}
    assert set(forced["missed"]) == missed_by_ceiling
    assert all(count == 3 for count in forced["missed"].values())  # every phrasing: the same codes
    text = summary({"vqvae_ceiling": ceiling, "forced_scales": [forced]})
    assert "VQVAE round trip" in text and f"{100 * forced['accuracy']:.1f}%" in text
