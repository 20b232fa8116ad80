"""Wrong inputs fail early with a ValueError that says what is wrong."""

from __future__ import annotations

import pytest
import torch

from conftest import IMAGE_GEN_END_ID, IMAGE_GEN_PAD_ID, IMAGE_GEN_START_ID, IMAGE_TOKEN_ID, TINY_IMAGE_SEQ_LENGTH
from transformers_vargpt import VargptForConditionalGeneration

PROMPT = torch.tensor([[1, 5, 6, 7]])


@pytest.fixture(scope="module")
def model():
    from conftest import make_tiny_model

    return make_tiny_model()


def generation_ids(num_pads: int) -> torch.LongTensor:
    return torch.tensor([[1, 5, IMAGE_GEN_START_ID] + [IMAGE_GEN_PAD_ID] * num_pads + [IMAGE_GEN_END_ID]])


# ---- forward -------------------------------------------------------------------------------------------------------
def test_image_token_count_mismatch(model):
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * (TINY_IMAGE_SEQ_LENGTH - 1) + [6]])
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32))


def test_two_images_for_one_image_block(model):
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * TINY_IMAGE_SEQ_LENGTH + [6]])
    with pytest.raises(ValueError, match="do not match"):
        model(input_ids=ids, pixel_values=torch.zeros(2, 3, 32, 32))


def test_pixel_values_without_image_tokens(model):
    with pytest.raises(ValueError, match="no <image> token"):
        model(input_ids=PROMPT, pixel_values=torch.zeros(1, 3, 32, 32))


def test_pixel_gen_values_of_wrong_size(model):
    with pytest.raises(ValueError, match=r"must be B x 3 x 64 x 64"):
        model(input_ids=generation_ids(30), pixel_gen_values=torch.zeros(1, 3, 32, 32))


def test_pad_count_mismatch(model):
    with pytest.raises(ValueError, match=r"29 <\|image_gen_pad\|> tokens"):
        model(input_ids=generation_ids(29), pixel_gen_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"<\|image_gen_pad\|> tokens"):
        model(input_ids=generation_ids(30), image_tokens=torch.zeros(2, 30, dtype=torch.long))


def test_image_tokens_of_wrong_length(model):
    with pytest.raises(ValueError, match="image tokens must be B x 30"):
        model(input_ids=generation_ids(30), image_tokens=torch.zeros(1, 29, dtype=torch.long))


def test_both_pixel_gen_values_and_image_tokens(model):
    with pytest.raises(ValueError, match="either pixel_gen_values or image_tokens"):
        model(
            input_ids=generation_ids(30),
            pixel_gen_values=torch.zeros(1, 3, 64, 64),
            image_tokens=torch.zeros(1, 30, dtype=torch.long),
        )


# ---- a config without the image generation tokens ------------------------------------------------------------------
def test_generate_images_without_generation_tokens(tiny_model):
    model = tiny_model(special_tokens={}, var_num_classes=303)
    assert not model.config.supports_image_generation
    with pytest.raises(ValueError, match="no image generation tokens"):
        model.generate_images(PROMPT)
    with pytest.raises(ValueError, match="no image generation tokens"):
        model.generate(PROMPT, generation_mode="image")
    # text still works
    assert model.generate(PROMPT, max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_config_without_generation_tokens_builds_or_fails_clearly(tiny_config):
    """special_tokens without the image generation ids (an understanding-only config): either the config says what
    is missing, or the model builds (and refuses to draw, see above) — never an opaque TypeError."""
    try:
        config = tiny_config(special_tokens={})
    except ValueError as error:
        assert "var_num_classes" in str(error) or "image_gen_start" in str(error)
        return
    model = VargptForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="no image generation tokens"):
        model.generate_images(PROMPT)


# ---- generate_images arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"num_images_per_prompt": 1.5}, "num_images_per_prompt"),
    ],
)
def test_generate_images_rejects_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate_images(PROMPT, **kwargs)
    with pytest.raises(ValueError, match=message):
        model.generate(PROMPT, generation_mode="image", **kwargs)


def test_prompt_longer_than_max_position_embeddings(tiny_model):
    model = tiny_model(text_config={"max_position_embeddings": 64})
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model.generate_images(torch.ones(1, 40, dtype=torch.long))
    # the prompt, its start token, 30 image tokens and the end token fit in 64 positions
    out = model.generate_images(torch.ones(1, 32, dtype=torch.long), do_sample=False)
    assert out.image_tokens.shape == (1, 30)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate_images(torch.ones(1, 33, dtype=torch.long))


def test_right_padded_prompts_are_refused(model):
    ids = torch.tensor([[1, 5, 6, 7], [1, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        model.generate_images(ids, attention_mask=mask)


def test_unknown_generation_mode(model):
    with pytest.raises(ValueError, match="generation_mode must be 'text', 'image' or 'interleaved'"):
        model.generate(PROMPT, generation_mode="video")
