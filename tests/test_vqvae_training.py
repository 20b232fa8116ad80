"""VQVAE training (`transformers_vargpt.training.vqvae`): losses, straight-through codes, codebook upkeep, the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from transformers_vargpt import VargptVQVAE, VargptVQVAEConfig
from transformers_vargpt.shapes_world import PALETTE
from transformers_vargpt.training.vqvae import (
    EVAL_FILE_NAME,
    CodebookEMA,
    CodebookUsage,
    VQVAETrainingArguments,
    main,
    training_batch,
    vqvae_training_losses,
)

IMAGE_SIZE = 16


def tiny_config(**overrides) -> VargptVQVAEConfig:
    sizes = dict(
        vocab_size=32,
        z_channels=8,
        base_channels=32,
        channel_multipliers=[1, 1],
        num_res_blocks=0,
        scale_sizes=[1, 2, 4, 8],
        image_size=IMAGE_SIZE,
        norm_groups=8,
    )
    return VargptVQVAEConfig(**{**sizes, **overrides})


def tiny_batch(seed: int = 0, batch_size: int = 4) -> torch.Tensor:
    return training_batch(random.Random(seed), batch_size, IMAGE_SIZE, random_color_fraction=0.5)


def test_training_batches_mix_palette_and_random_colors():
    palette = {tuple(rgb) for rgb in PALETTE.values()}
    for fraction, expect_palette in ((0.0, True), (1.0, False)):
        images = training_batch(random.Random(1), 6, IMAGE_SIZE, random_color_fraction=fraction)
        assert images.shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE) and images.min() >= -1 and images.max() <= 1
        pixels = ((images + 1) * 127.5).round().to(torch.int64).permute(0, 2, 3, 1).reshape(-1, 3)
        colors = {tuple(rgb) for rgb in pixels.tolist()}
        assert (colors <= palette) is expect_palette


def test_a_share_of_training_scenes_can_be_drawn_in_a_fixed_box():
    box = (4, 4, 11, 11)
    for fraction in (1.0, 0.0):
        images = training_batch(random.Random(2), 8, IMAGE_SIZE, 0.5, fixed_box=box, fixed_box_fraction=fraction)
        pixels = images.permute(0, 2, 3, 1)
        # everything outside the box is background (the corner's colour) exactly when every scene is in the box
        outside = torch.ones(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
        outside[4:12, 4:12] = False
        only_background = [bool((p[outside] == p[0, 0]).all()) for p in pixels]
        assert all(only_background) if fraction == 1.0 else not all(only_background)
    with pytest.raises(ValueError, match="needs --fixed_box"):
        VQVAETrainingArguments(output="x", fixed_box_fraction=0.5)
    with pytest.raises(ValueError, match="must lie inside"):
        VQVAETrainingArguments(output="x", image_size=16, fixed_box=[4, 4, 16, 10], fixed_box_fraction=0.5)


def test_training_path_codes_equal_inference_codes():
    torch.manual_seed(0)
    model = VargptVQVAE(tiny_config())
    pixels = tiny_batch()
    features = model.quant_conv(model.encoder(pixels))
    output = model.quantizer.quantize_with_losses(features)
    expected = model.encode(pixels)
    assert len(output.indices) == len(expected)
    for got, want in zip(output.indices, expected):
        assert torch.equal(got, want)
    # the straight-through f̂ has the value of the inference f̂ and passes gradients to the features
    torch.testing.assert_close(output.f_hat, model.quantizer.indices_to_fhat(expected), atol=1e-5, rtol=1e-5)
    (output.f_hat.sum() + output.codebook_loss + output.commitment_loss).backward()
    assert model.encoder.conv_in.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.weight.grad.abs().sum() > 0
    assert model.quantizer.residual_filters[0].weight.grad.abs().sum() > 0


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = VargptVQVAE(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels = tiny_batch(seed=3)
    totals = []
    for _ in range(12):
        losses, _, _ = vqvae_training_losses(model, pixels)
        loss = losses["l1"] + losses["edge"] + losses["codebook"] + losses["commitment"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.85 * totals[0]


def test_dead_codes_are_reinitialised_from_encoder_vectors():
    torch.manual_seed(0)
    model = VargptVQVAE(tiny_config(vocab_size=8))
    quantizer = model.quantizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    vectors = torch.randn(20, model.config.z_channels)
    with torch.no_grad():
        quantizer.codebook.weight[:5] = vectors[:5]  # codes 0..4 are each the nearest code of at least one vector
        quantizer.codebook.weight[5:] = 1000.0  # codes 5, 6, 7 are far from everything: never chosen
    quantizer.codebook.weight.sum().backward()
    optimizer.step()  # creates the AdamW moments
    usage = CodebookUsage(8)
    usage.update([quantizer.nearest_codes(vectors[:12]), quantizer.nearest_codes(vectors[12:])])
    assert (usage.hits[:5] > 0).all() and usage.hits[5:].sum() == 0 and usage.hits.sum() == 20
    before = quantizer.codebook.weight.detach().clone()

    restarted = usage.restart_dead_codes(quantizer, vectors, torch.Generator().manual_seed(0), optimizer)

    after = quantizer.codebook.weight.detach()
    assert restarted == 3
    torch.testing.assert_close(after[:5], before[:5])
    for code in after[5:]:  # each new code is one of the vectors, up to 1% noise
        assert (vectors - code).norm(dim=1).min() < 0.05 * vectors.norm(dim=1).mean()
    state = optimizer.state[quantizer.codebook.weight]
    assert state["exp_avg"][5:].abs().sum() == 0 and state["exp_avg_sq"][5:].abs().sum() == 0
    assert usage.hits.sum() == 0  # counting starts again


def test_codebook_running_means_follow_the_vectors_each_code_is_chosen_for():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-5.0, 5.0]])
    ema = CodebookEMA(codebook, decay=0.5)
    vectors = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 12.0]])  # code 0 twice, code 1 once, code 2 never
    indices = torch.tensor([[0, 0, 1]])
    for _ in range(40):
        ema.update(codebook, [indices[:, :2], indices[:, 2:]], [vectors[:2], vectors[2:]])  # two "scales"
    torch.testing.assert_close(codebook[0], torch.tensor([2.0, 1.0]), atol=1e-3, rtol=0)  # mean of its vectors
    torch.testing.assert_close(codebook[1], torch.tensor([9.0, 12.0]), atol=1e-3, rtol=0)
    assert codebook[2].abs().max() < 0.01  # unused: fades towards 0 (until a dead-code restart)

    codebook[2] = torch.tensor([7.0, 7.0])  # re-initialised by a restart: its running mean starts there
    ema.restarted(codebook, torch.tensor([2]))
    ema.update(codebook, [indices], [vectors])
    torch.testing.assert_close(codebook[2], torch.tensor([7.0, 7.0]), atol=0.05, rtol=0)


def test_with_running_means_the_optimizer_leaves_the_codebook_alone(tmp_path):
    from transformers_vargpt.training.vqvae import train_vqvae

    args = VQVAETrainingArguments(output=str(tmp_path), image_size=IMAGE_SIZE, scale_sizes=[1, 2, 4, 8],
                                  channel_multipliers=[1, 1], vocab_size=16, z_channels=8, steps=3, batch_size=2,
                                  warmup_steps=1, final_steps_without_restarts=0)
    model, _ = train_vqvae(args)
    assert not model.quantizer.codebook.weight.requires_grad
    with pytest.raises(ValueError, match="codebook_ema_decay must be in"):
        VQVAETrainingArguments(output=str(tmp_path), codebook_ema_decay=1.0)


def test_cli_trains_saves_and_evaluates(tmp_path):
    output = tmp_path / "vqvae"
    argv = [
        "--output", str(output), "--image-size", str(IMAGE_SIZE), "--scale-sizes", "1", "2", "4", "8",
        "--channel-multipliers", "1", "1", "--vocab-size", "32", "--z-channels", "8", "--steps", "2",
        "--batch-size", "2", "--warmup-steps", "1", "--restart-every", "1", "--final-steps-without-restarts", "0",
        "--eval-scenes", "3", "--eval-random-color-scenes", "2", "--log-every", "1",
        "--fixed-box", "4", "4", "11", "11", "--fixed-box-fraction", "0.5",
    ]  # fmt: skip
    results = main(argv)
    reloaded = VargptVQVAE.from_pretrained(output)
    assert reloaded.config.image_size == IMAGE_SIZE and reloaded.config.scale_sizes == [1, 2, 4, 8]
    saved = json.loads((output / EVAL_FILE_NAME).read_text())
    assert saved["palette_scenes"] == 3 and saved["arguments"]["steps"] == 2
    assert 0.0 <= saved["palette_match_rate"] <= 1.0 and 0 < saved["codebook_usage"] <= 1.0
    assert np.isfinite(saved["random_color_shape_error_mean"]) and saved == json.loads(json.dumps(results))
    assert saved["fixed_box"] == [4, 4, 11, 11] and 0.0 <= saved["fixed_box_match_rate"] <= 1.0

    again = main(["--output", str(output), "--eval-only", "--eval-scenes", "3", "--eval-random-color-scenes", "2"])
    assert again["mean_abs_pixel_error"] == pytest.approx(results["mean_abs_pixel_error"], abs=1e-6)

    # --init-from goes on from the saved weights (and keeps their sizes)
    more = tmp_path / "more"
    main(["--output", str(more), "--init-from", str(output), "--steps", "1", "--batch-size", "2", "--warmup-steps", "1",
          "--vocab-size", "64", "--eval-scenes", "1", "--eval-random-color-scenes", "0"])  # fmt: skip
    continued = VargptVQVAE.from_pretrained(more)
    assert continued.config.vocab_size == 32 and continued.config.image_size == IMAGE_SIZE
    assert not torch.equal(continued.encoder.conv_in.weight, reloaded.encoder.conv_in.weight)


def test_decoder_only_run_keeps_every_code_and_changes_only_the_decoder(tmp_path):
    from transformers_vargpt.training.vqvae import train_vqvae

    torch.manual_seed(0)
    start = VargptVQVAE(tiny_config())
    before = {name: tensor.clone() for name, tensor in start.state_dict().items()}
    images = tiny_batch(seed=3, batch_size=6)
    codes_before = start.tokenize(images)
    args = VQVAETrainingArguments(output=str(tmp_path), image_size=IMAGE_SIZE, steps=3, batch_size=2, warmup_steps=1,
                                  restart_every=1, final_steps_without_restarts=0, learning_rate=1e-2,
                                  decoder_only=True, init_from=str(tmp_path / "given"))
    model, stats = train_vqvae(args, start)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed), changed
    assert stats["restarted_codes"] == 0  # the codebook's upkeep is off too
    assert torch.equal(model.tokenize(images), codes_before)
    with pytest.raises(ValueError, match="--init_from"):
        VQVAETrainingArguments(output=str(tmp_path), decoder_only=True)


def test_norm_groups_must_divide_every_width():
    assert tiny_config(norm_groups=8).norm_groups == 8
    with pytest.raises(ValueError, match="multiple of norm_groups=32"):
        tiny_config(base_channels=16, norm_groups=32)
    # groups change how GroupNorm normalises, never the parameter shapes: weights load across group counts
    a, b = VargptVQVAE(tiny_config(norm_groups=8)), VargptVQVAE(tiny_config(norm_groups=32))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.decoder.norm_out.num_groups == 8 and b.decoder.norm_out.num_groups == 32


def test_eval_only_without_a_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no saved VQVAE"):
        main(["--output", str(tmp_path / "missing"), "--eval-only"])
