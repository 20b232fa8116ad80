"""Inputs that used to give silent wrong results or obscure torch errors now fail early, saying what is wrong."""

from __future__ import annotations

import io
import re
import shutil
import time

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from conftest import (
    IMAGE_GEN_END_ID,
    IMAGE_GEN_PAD_ID,
    IMAGE_GEN_START_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TINY_IMAGE_SEQ_LENGTH,
    TINY_NUM_IMAGE_GEN_TOKENS,
    TINY_TEXT_CONFIG,
    make_tiny_model,
)
from transformers_vargpt import VargptPipeline
from transformers_vargpt.tiny_models import build_tiny_vargpt

PROMPT = [1, 5, 6, 7]
VOCAB = TINY_TEXT_CONFIG["vocab_size"]


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def understanding_ids() -> torch.LongTensor:
    return torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * TINY_IMAGE_SEQ_LENGTH + [6]])


def generation_ids() -> torch.LongTensor:
    pads = [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS
    return torch.tensor([[1, 5, IMAGE_GEN_START_ID] + pads + [IMAGE_GEN_END_ID]])


def codes(model, value: int = 0) -> torch.LongTensor:
    return torch.full((1, model.config.num_image_gen_tokens), value, dtype=torch.long)


# ---- placeholders without their images -----------------------------------------------------------------------------
def test_image_tokens_without_pixel_values(model):
    # the generation entry points refuse the prompt; `forward` reads the tokens as text with a warning, as LLaVA's
    # forward does (transformers' common model tests call it that way)
    with pytest.raises(ValueError, match=f"{TINY_IMAGE_SEQ_LENGTH} <image> tokens .* no pixel_values"):
        model.generate(understanding_ids(), max_new_tokens=2, do_sample=False)
    with pytest.raises(ValueError, match="no pixel_values"):
        model.generate(input_ids=understanding_ids(), max_new_tokens=2, do_sample=False)
    modeling_logger = logging.get_logger("transformers_vargpt.modeling_vargpt")
    modeling_logger.warning_once.cache_clear()
    with CaptureLogger(modeling_logger) as captured:
        logits = model(input_ids=understanding_ids()).logits
    assert "no pixel_values were given" in captured.out and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="no pixel_values"):
        model.generate_images(understanding_ids(), do_sample=False)


def test_generation_pads_without_images_to_draw(model):
    with pytest.raises(ValueError, match=f"{TINY_NUM_IMAGE_GEN_TOKENS} <\\|image_gen_pad\\|> tokens .* neither"):
        model.generate(generation_ids(), max_new_tokens=2, do_sample=False)
    modeling_logger = logging.get_logger("transformers_vargpt.modeling_vargpt")
    modeling_logger.warning_once.cache_clear()
    with CaptureLogger(modeling_logger) as captured:
        model(input_ids=generation_ids())
    assert "<|image_gen_pad|> tokens but no pixel_gen_values or image_tokens were given" in captured.out


# ---- non-finite values ---------------------------------------------------------------------------------------------
def test_non_finite_pixel_values(model):
    pixels = torch.zeros(1, 3, 32, 32)
    pixels[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pixel_values contain NaN"):
        model(input_ids=understanding_ids(), pixel_values=pixels)
    gen = torch.zeros(1, 3, 64, 64)
    gen[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="pixel_gen_values contain NaN or infinite"):
        model(input_ids=generation_ids(), pixel_gen_values=gen)


def test_non_finite_code_logits_name_the_scale_and_the_dtype():
    model = make_tiny_model()
    with torch.no_grad():
        model.model.scale_decoder.head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="code logits of scale 0"):
        model.generate_images(torch.tensor([PROMPT]), do_sample=False)
    with pytest.raises(FloatingPointError, match="bfloat16"):
        model.half().generate_images(torch.tensor([PROMPT]), do_sample=False)


def test_non_finite_decoded_image():
    model = make_tiny_model()
    with torch.no_grad():
        model.model.vqvae.post_quant_conv.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="decoded images"):
        model.decode_image_tokens(codes(model))


def test_float16_overflow_of_the_fixture_says_to_use_bfloat16(tiny_dir, golden, golden_tensors):
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_dir, dtype=torch.float16, **golden["reference_hparams"]
    ).eval()
    with pytest.raises(FloatingPointError, match="float16 .*bfloat16"):
        model.generate_images(golden_tensors["t2i_input_ids"], do_sample=False)


# ---- padding without a mask ----------------------------------------------------------------------------------------
def test_padded_batch_without_attention_mask_draws_like_the_prompt_alone(model):
    long_prompt = [1, 5, 6, 7, 8, 9, 10]
    alone = model.generate_images(torch.tensor([PROMPT]), do_sample=False).image_tokens
    padded = torch.tensor([[PAD_TOKEN_ID] * (len(long_prompt) - len(PROMPT)) + PROMPT, long_prompt])
    batch = model.generate_images(padded, do_sample=False).image_tokens
    assert torch.equal(batch[0], alone[0])
    long_alone = model.generate_images(torch.tensor([long_prompt]), do_sample=False).image_tokens
    assert torch.equal(batch[1], long_alone[0])


def test_pads_inside_a_prompt_need_the_mask(model):
    with pytest.raises(ValueError, match="pass the attention_mask"):
        model.generate_images(torch.tensor([[1, PAD_TOKEN_ID, 5, PAD_TOKEN_ID, 6]]), do_sample=False)


# ---- training images out of range ----------------------------------------------------------------------------------
def test_generation_images_outside_minus_one_one(model):
    eight_bit = torch.full((1, 3, 64, 64), 255.0)
    eight_bit[..., 0, :] = 0
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 255\]"):
        model(input_ids=generation_ids(), pixel_gen_values=eight_bit)
    nan = torch.zeros(1, 3, 64, 64)
    nan[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.train()(input_ids=generation_ids(), pixel_gen_values=nan)
    model.eval()


# ---- codes ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, error, message",
    [
        ("too_large", ValueError, r"codes in \[0, 64\)"),
        ("negative", ValueError, r"codes in \[0, 64\)"),
        ("empty", ValueError, "B >= 1"),
        ("float", TypeError, "integer tensor"),
        ("list", TypeError, "torch tensor"),
    ],
)
def test_bad_codes(model, bad, error, message):
    tokens = {
        "too_large": codes(model, 64),
        "negative": codes(model, -1),
        "empty": codes(model)[:0],
        "float": codes(model).float(),
        "list": codes(model).tolist(),
    }[bad]
    with pytest.raises(error, match=message):
        model.decode_image_tokens(tokens)
    with pytest.raises(error, match=message):
        model(input_ids=generation_ids(), image_tokens=tokens)


# ---- tensors of the wrong shape or content -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (3, 32, 32), (1, 4, 32, 32)])
def test_pixel_values_of_wrong_channels_or_rank(model, shape):
    with pytest.raises(ValueError, match="pixel_values must be N x 3 x H x W"):
        model(input_ids=understanding_ids(), pixel_values=torch.zeros(shape))


def test_attention_mask_of_the_wrong_shape(model):
    ids = torch.tensor([PROMPT])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(input_ids=ids, attention_mask=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.generate_images(ids, torch.ones(2, 4, dtype=torch.long), do_sample=False)


def test_empty_batch(model):
    with pytest.raises(ValueError, match="non-empty B x T"):
        model(input_ids=torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty B x T"):
        model.generate_images(torch.zeros(0, 4, dtype=torch.long), do_sample=False)


def test_out_of_vocabulary_input_ids(model):
    for bad in (VOCAB, -5):
        with pytest.raises(ValueError, match=rf"outside the vocabulary \[0, {VOCAB}\)"):
            model(input_ids=torch.tensor([[1, bad, 5]]))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.generate_images(torch.tensor([[1, bad, 5]]), do_sample=False)


def test_generator_must_be_a_torch_generator_also_when_greedy(model):
    for do_sample in (False, True):
        with pytest.raises(TypeError, match="torch.Generator"):
            model.generate_images(torch.tensor([PROMPT]), do_sample=do_sample, generator=np.random.default_rng(0))


def test_do_sample_must_be_a_bool(model):
    with pytest.raises(ValueError, match="do_sample must be True or False"):
        model.generate_images(torch.tensor([PROMPT]), do_sample="no")


# ---- images given to the processor ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair():
    return build_tiny_vargpt()


def test_empty_image(tiny_pair):
    _, processor = tiny_pair
    with pytest.raises(ValueError, match=r"empty \(0x0 pixels\)"):
        processor(images=PIL.Image.new("RGB", (0, 0)), text="<image>\nWhat is it?", return_tensors="pt")


def test_lazily_opened_truncated_image_is_named(tiny_pair, tmp_path, monkeypatch):
    # PIL's default (some libraries, lmms-eval among them, switch it globally to pad truncated files silently)
    monkeypatch.setattr(PIL.ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:300])
    _, processor = tiny_pair
    with pytest.raises(ValueError, match="cut.png' is truncated"):
        processor(images=PIL.Image.open(path), text="<image>\nWhat is it?", return_tensors="pt")


# ---- pipeline callbacks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "returned, error, message",
    [
        (lambda kwargs: ["f_hat"], TypeError, "must return a dict"),
        (lambda kwargs: {"f_hat": kwargs["f_hat"][:, :, :1]}, ValueError, "must keep the shape"),
    ],
)
def test_pipeline_callback_returning_the_wrong_thing(tiny_pair, returned, error, message):
    pipe = VargptPipeline(*tiny_pair)
    with pytest.raises(error, match=message):
        pipe("a cat", do_sample=False, output_type="pt", callback_on_step_end=lambda p, s, t, kwargs: returned(kwargs))


# ---- checkpoints ---------------------------------------------------------------------------------------------------
def test_truncated_weights_file_is_named(tiny_pair, tmp_path):
    model, processor = tiny_pair
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_released_directory_without_sizes_reads_them_from_the_weights(tiny_dir, golden, golden_tensors):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()  # no sizes passed
    for name, value in golden["reference_hparams"].items():
        assert getattr(model.config, name) == pytest.approx(value), name
    with torch.no_grad():
        out = model(input_ids=golden_tensors["und_input_ids"], pixel_values=golden_tensors["und_pixel_values"])
        gen = model(input_ids=golden_tensors["gen_input_ids"], pixel_gen_values=golden_tensors["vq_image"])
    torch.testing.assert_close(out.logits, golden_tensors["und_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(gen.image_logits, golden_tensors["gen_image_logits"], atol=1e-4, rtol=0)
    drawn = model.generate_images(golden_tensors["t2i_input_ids"], do_sample=False).image_tokens
    assert torch.equal(drawn, golden_tensors["t2i_indices"].view_as(drawn))


def test_released_directory_without_scale_ids_names_patch_nums(tiny_dir, tmp_path):
    for name in ("config.json", "generation_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    weights = load_file(str(tiny_dir / "model.safetensors"))
    weights.pop("vargpt_gen.lvl_1L")
    save_file(weights, str(tmp_path / "model.safetensors"))
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"4 scales and 30 image tokens.*pass patch_nums="):
        AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert time.monotonic() - start < 10, "the missing size must be named before any model is built"
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, patch_nums=[1, 2, 3, 4])
    assert model.config.image_gen_size == 64 and model.config.var_depth == 2


@pytest.mark.parametrize(
    "wrong",
    [{"var_depth": 1}, {"var_depth": 3}, {"vq_vocab_size": 128}, {"var_embed_dim": 64}, {"patch_nums": [1, 2, 3, 5]}],
)
def test_released_directory_with_wrong_sizes_is_refused(tiny_dir, golden, wrong):
    sizes = {**golden["reference_hparams"], **wrong}
    (name, value), = wrong.items()
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"{name}={re.escape(repr(value))} \(the weights have"):
        AutoModelForImageTextToText.from_pretrained(tiny_dir, **sizes)
    assert time.monotonic() - start < 10
