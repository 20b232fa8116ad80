"""Parity with the released VARGPT code: the tiny released-layout checkpoint and the golden outputs it produced.

Tolerances: token ids and code indices exact; logits 1e-4; images 3e-4 (float32 reordering noise through a decoder
whose raw output spans about ±25 before the clamp).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from transformers_vargpt import VargptConfig, VargptForConditionalGeneration, VargptModel

LOGITS_ATOL = 1e-4
IMAGE_ATOL = 3e-4


def _no_loading_problems(info: dict, allowed_unexpected: set[str] = frozenset()) -> None:
    assert info["missing_keys"] == set(), f"missing: {sorted(info['missing_keys'])[:10]}"
    assert set(info["unexpected_keys"]) <= set(allowed_unexpected), f"unexpected: {sorted(info['unexpected_keys'])}"
    assert not info["mismatched_keys"], f"mismatched: {info['mismatched_keys']}"
    assert not info.get("error_msgs"), info.get("error_msgs")


def _assert_matches_golden_t2i_image(images: torch.Tensor, golden_tensors) -> None:
    # The harness that wrote the fixture de-normalised the [0, 1] image a second time: golden = 0.5 + 0.5 * image.
    # Compare in the golden's own space, where the tolerance was measured.
    torch.testing.assert_close(0.5 + 0.5 * images, golden_tensors["t2i_image"], atol=IMAGE_ATOL, rtol=0)


# ---- loading ---------------------------------------------------------------------------------------------------------
def test_auto_config_reads_released_config_with_overrides(tiny_dir, golden):
    hparams = golden["reference_hparams"]
    config = AutoConfig.from_pretrained(tiny_dir, **hparams)
    assert isinstance(config, VargptConfig)
    for name, value in hparams.items():
        assert getattr(config, name) == value, name
    # released fields come through as they are
    assert config.image_token_index == golden["image_token_index"]
    assert config.image_gen_start_token_id == golden["special_tokens"]["image_gen_start_token_id"]
    assert config.image_gen_end_token_id == golden["special_tokens"]["image_gen_end_token_id"]
    assert config.image_gen_pad_token_id == golden["special_tokens"]["image_gen_pad_token_id"]
    assert config.num_image_gen_tokens == 30
    assert config.text_config.vocab_size == 320


def test_auto_model_for_image_text_to_text_loads_every_released_key(tiny_dir, golden):
    model, info = AutoModelForImageTextToText.from_pretrained(
        tiny_dir, output_loading_info=True, **golden["reference_hparams"]
    )
    assert isinstance(model, VargptForConditionalGeneration)
    _no_loading_problems(info)


def test_auto_model_loads_the_body(tiny_dir, golden, golden_tensors, released_tiny_model):
    model, info = AutoModel.from_pretrained(tiny_dir, output_loading_info=True, **golden["reference_hparams"])
    assert isinstance(model, VargptModel)
    # A body has no text head: the checkpoint's head is the one key it does not use (as LlamaModel from a
    # LlamaForCausalLM checkpoint).
    _no_loading_problems(info, allowed_unexpected={"lm_head.weight"})
    with torch.no_grad():
        hidden = model.eval()(
            input_ids=golden_tensors["und_input_ids"], pixel_values=golden_tensors["und_pixel_values"]
        ).last_hidden_state
        logits = released_tiny_model.lm_head(hidden)
    torch.testing.assert_close(logits, golden_tensors["und_logits"], atol=LOGITS_ATOL, rtol=0)


# ---- understanding ---------------------------------------------------------------------------------------------------
def test_understanding_logits(released_tiny_model, golden_tensors):
    with torch.no_grad():
        out = released_tiny_model(
            input_ids=golden_tensors["und_input_ids"], pixel_values=golden_tensors["und_pixel_values"]
        )
    torch.testing.assert_close(out.logits, golden_tensors["und_logits"], atol=LOGITS_ATOL, rtol=0)


def test_understanding_greedy_generate(released_tiny_model, golden_tensors):
    ids = released_tiny_model.generate(
        input_ids=golden_tensors["und_input_ids"],
        pixel_values=golden_tensors["und_pixel_values"],
        max_new_tokens=8,
        do_sample=False,
    )
    assert torch.equal(ids, golden_tensors["und_generate_ids"]), (ids, golden_tensors["und_generate_ids"])


# ---- VQVAE -----------------------------------------------------------------------------------------------------------
def test_vqvae_tokenize(released_tiny_model, golden_tensors):
    indices = released_tiny_model.model.vqvae.tokenize(golden_tensors["vq_image"])
    assert torch.equal(indices, golden_tensors["vq_indices"])


def test_vqvae_decode(released_tiny_model, golden_tensors):
    with torch.no_grad():
        recon = released_tiny_model.model.vqvae.decode(golden_tensors["vq_indices"])
    torch.testing.assert_close(recon, golden_tensors["vq_recon"], atol=IMAGE_ATOL, rtol=0)


# ---- generation, teacher forcing -------------------------------------------------------------------------------------
def _check_gen_forward(out, golden_tensors):
    torch.testing.assert_close(out.logits, golden_tensors["gen_text_logits"], atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(out.image_logits, golden_tensors["gen_image_logits"], atol=LOGITS_ATOL, rtol=0)
    assert torch.equal(out.image_gen_targets, golden_tensors["gen_image_targets"])
    torch.testing.assert_close(
        out.image_loss.reshape(1), golden_tensors["gen_image_loss"].reshape(1), atol=LOGITS_ATOL, rtol=0
    )


def test_generation_forward_eval(released_tiny_model, golden_tensors):
    with torch.no_grad():
        out = released_tiny_model(
            input_ids=golden_tensors["gen_input_ids"], pixel_gen_values=golden_tensors["vq_image"]
        )
    _check_gen_forward(out, golden_tensors)


def test_generation_forward_from_code_indices_matches_pixels(released_tiny_model, golden_tensors):
    with torch.no_grad():
        out = released_tiny_model(
            input_ids=golden_tensors["gen_input_ids"], image_gen_tokens=golden_tensors["vq_indices"]
        )
    _check_gen_forward(out, golden_tensors)


def test_generation_forward_train_mode_without_dropout_equals_eval(tiny_dir, golden, golden_tensors):
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_dir, var_cond_drop_rate=0.0, var_drop_path_rate=0.0, **golden["reference_hparams"]
    )
    model.train()
    out = model(input_ids=golden_tensors["gen_input_ids"], pixel_gen_values=golden_tensors["vq_image"])
    _check_gen_forward(out, golden_tensors)
    assert out.image_loss.requires_grad


def test_train_mode_dropout_is_random_and_eval_is_deterministic(tiny_dir, golden, golden_tensors):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, **golden["reference_hparams"])
    assert model.config.var_cond_drop_rate > 0 and model.config.var_drop_path_rate > 0
    inputs = dict(input_ids=golden_tensors["gen_input_ids"], pixel_gen_values=golden_tensors["vq_image"])
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        train_losses = {round(model(**inputs).image_loss.item(), 6) for _ in range(25)}
    assert len(train_losses) > 1, "condition dropout / drop-path never changed the image loss in train mode"
    model.eval()
    with torch.no_grad():
        first = model(**inputs)
        second = model(**inputs)
    assert torch.equal(first.image_logits, second.image_logits)
    assert torch.equal(first.image_loss, second.image_loss)
    torch.testing.assert_close(
        first.image_loss.reshape(1), golden_tensors["gen_image_loss"].reshape(1), atol=LOGITS_ATOL, rtol=0
    )


# ---- generation, next-scale ----------------------------------------------------------------------------------------
def _check_t2i(out, golden_tensors):
    expected = golden_tensors["t2i_indices"]
    assert torch.equal(out.image_tokens, expected), (out.image_tokens, expected)
    assert out.images.shape == (1, 3, 64, 64)
    assert out.images.dtype == torch.float32
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    _assert_matches_golden_t2i_image(out.images, golden_tensors)


def test_generate_images_greedy(released_tiny_model, golden, golden_tensors):
    prompt = golden_tensors["t2i_input_ids"]
    assert prompt[0, -1].item() == golden["special_tokens"]["image_gen_start_token_id"]
    _check_t2i(released_tiny_model.generate_images(prompt, do_sample=False), golden_tensors)


def test_generate_image_mode(released_tiny_model, golden_tensors):
    out = released_tiny_model.generate(golden_tensors["t2i_input_ids"], generation_mode="image", do_sample=False)
    _check_t2i(out, golden_tensors)


def test_generate_images_appends_missing_start_token(released_tiny_model, golden_tensors):
    prompt = golden_tensors["t2i_input_ids"][:, :-1]
    _check_t2i(released_tiny_model.generate_images(prompt, do_sample=False), golden_tensors)
    _check_t2i(
        released_tiny_model.generate(input_ids=prompt, generation_mode="image", do_sample=False), golden_tensors
    )


def test_generate_images_top_k_1_is_greedy(released_tiny_model, golden_tensors):
    out = released_tiny_model.generate_images(golden_tensors["t2i_input_ids"], do_sample=True, top_k=1)
    _check_t2i(out, golden_tensors)


def test_decode_image_tokens_of_golden_codes(released_tiny_model, golden_tensors):
    images = released_tiny_model.decode_image_tokens(golden_tensors["t2i_indices"])
    _assert_matches_golden_t2i_image(images, golden_tensors)


# ---- our own layout ------------------------------------------------------------------------------------------------
def test_save_and_reload_without_overrides(released_tiny_model, golden_tensors, tmp_path):
    """After save_pretrained the VAR/VQVAE sizes live in config.json: no overrides are needed to reload."""
    released_tiny_model.save_pretrained(tmp_path)
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    _no_loading_problems(info)
    model.eval()
    assert model.config.patch_nums == [1, 2, 3, 4]
    with torch.no_grad():
        out = model(input_ids=golden_tensors["und_input_ids"], pixel_values=golden_tensors["und_pixel_values"])
    torch.testing.assert_close(out.logits, golden_tensors["und_logits"], atol=LOGITS_ATOL, rtol=0)
    _check_t2i(model.generate_images(golden_tensors["t2i_input_ids"], do_sample=False), golden_tensors)
