"""Behaviour of tiny random VARGPT models built in-process: saving/loading, text generation, image generation,
interleaved generation, training, attention backends and dtypes."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

import torch
from safetensors import safe_open
from transformers import (
    AutoModelForImageTextToText,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    TextIteratorStreamer,
)

from conftest import (
    IMAGE_GEN_END_ID,
    IMAGE_GEN_PAD_ID,
    IMAGE_GEN_START_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TINY_IMAGE_SEQ_LENGTH,
    TINY_NUM_IMAGE_GEN_TOKENS,
)
from transformers_vargpt import VargptConfig, VargptForConditionalGeneration, VargptImageGenerationOutput
from transformers_vargpt.modeling_vargpt import RELEASED_KEY_MAPPING

Z_CHANNELS = 8  # vq_z_channels of the tiny config
FINAL_SIDE = 4  # last patch_num of the tiny config

LONG_PROMPT = [1, 5, 6, 7, 8, 9, 10, 11, 12]
SHORT_PROMPT = [1, 20, 21, 22]


def left_padded(*prompts: list[int]) -> tuple[torch.LongTensor, torch.LongTensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def mixed_inputs(batch: int = 1):
    """Text + one understanding image (16 <image> tokens) + one generation block (start, 30 pads, end)."""
    ids = [1, 5, 6] + [IMAGE_TOKEN_ID] * TINY_IMAGE_SEQ_LENGTH + [7, 8, IMAGE_GEN_START_ID]
    ids += [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS + [IMAGE_GEN_END_ID, 9, 2]
    generator = torch.Generator().manual_seed(0)
    return dict(
        input_ids=torch.tensor([ids] * batch),
        pixel_values=torch.randn(batch, 3, 32, 32, generator=generator),
        pixel_gen_values=torch.rand(batch, 3, 64, 64, generator=generator) * 2 - 1,
    )


# ---- save / load ----------------------------------------------------------------------------------------------------
def test_save_pretrained_round_trip(tiny_model, tmp_path):
    model = tiny_model()
    target = tmp_path / "saved"
    model.save_pretrained(target)

    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "vargpt_llava"
    vq, var = config["vq_config"], config["var_config"]
    assert vq["scale_sizes"] == [1, 2, 3, 4] and vq["image_size"] == 64
    assert var["num_hidden_layers"] == 2 and var["hidden_size"] == 64 and var["num_attention_heads"] == 2
    assert vq["base_channels"] == 32 and vq["z_channels"] == 8 and vq["vocab_size"] == 64
    assert config["special_tokens"]["image_gen_start_token_id"] == IMAGE_GEN_START_ID

    with safe_open(str(target / "model.safetensors"), "pt") as f:
        saved_names = list(f.keys())
    foreign = [n for n in saved_names if not n.startswith(("model.", "lm_head."))]
    assert not foreign, f"saved weights not in our layout: {foreign[:10]}"
    assert "model.scale_decoder.head.weight" in saved_names
    assert "model.vqvae.quantizer.codebook.weight" in saved_names

    loaded, info = AutoModelForImageTextToText.from_pretrained(target, output_loading_info=True)
    assert isinstance(loaded, VargptForConditionalGeneration)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded.eval()
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, loaded_state[name]), name

    inputs = mixed_inputs()
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
    # the parameters are equal, the computed floats only close: memory-mapped safetensors parameters are not always
    # 64-byte aligned, so other kernels may run
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.image_logits, b.image_logits, atol=1e-5, rtol=1e-5)
    prompt = torch.tensor([LONG_PROMPT])
    assert torch.equal(
        model.generate_images(prompt, do_sample=False).image_tokens,
        loaded.generate_images(prompt, do_sample=False).image_tokens,
    )


def test_released_key_mapping_leaves_our_names_alone(tiny_model):
    """from_pretrained always applies RELEASED_KEY_MAPPING; our own saved names must pass through unchanged."""
    for name in tiny_model().state_dict():
        renamed = name
        for pattern, replacement in RELEASED_KEY_MAPPING.items():
            renamed = re.sub(pattern, replacement, renamed)
        assert renamed == name


def test_save_and_generate_write_nothing_outside_the_target(tiny_model, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    model = tiny_model()
    target = tmp_path / "out" / "model"
    model.save_pretrained(target)
    model.generate_images(torch.tensor([SHORT_PROMPT]), do_sample=False)  # the released code wrote output.png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out"]
    assert list(workdir.iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model"]


# ---- text generation -----------------------------------------------------------------------------------------------
def test_left_padded_text_batch_matches_single_prompts(tiny_model):
    model = tiny_model()
    singles = [
        model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, len(p) :]
        for p in (LONG_PROMPT, SHORT_PROMPT)
    ]
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)[:, ids.shape[1] :]
    assert torch.equal(batch[0], singles[0])
    assert torch.equal(batch[1], singles[1])


def test_text_generate_with_image_input(tiny_model):
    """An understanding prompt with an image; the image changes the answer's logits."""
    model = tiny_model()
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * TINY_IMAGE_SEQ_LENGTH + [6, 7]])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    out = model.generate(ids, pixel_values=pixels[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pixels[:1]).logits[:, -1]
        b = model(input_ids=ids, pixel_values=pixels[1:]).logits[:, -1]
    assert not torch.allclose(a, b)


def test_text_iterator_streamer(tiny_model, tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = tiny_model()
    inputs = tokenizer("USER: Hello there ASSISTANT:", return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    result = {}

    def run():
        result["ids"] = model.generate(**inputs, max_new_tokens=10, do_sample=False, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    streamed = "".join(streamer)
    thread.join(timeout=60)
    new_tokens = result["ids"][0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert streamed == tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert streamed


def test_gqa_text_config(tiny_model):
    model = tiny_model(text_config={"num_key_value_heads": 2})
    attn = model.model.language_model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64)
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 4)
    images = model.generate_images(ids, attention_mask=mask, do_sample=False)
    assert images.images.shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(model(**mixed_inputs()).image_logits).all()


# ---- image generation ----------------------------------------------------------------------------------------------
def test_generate_images_left_padded_batch_matches_single_prompts(tiny_model):
    model = tiny_model()
    singles = [model.generate_images(torch.tensor([p]), do_sample=False) for p in (LONG_PROMPT, SHORT_PROMPT)]
    assert not torch.equal(singles[0].image_tokens, singles[1].image_tokens), "prompts should draw differently"
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    batch = model.generate_images(ids, attention_mask=mask, do_sample=False)
    for row, single in enumerate(singles):
        assert torch.equal(batch.image_tokens[row], single.image_tokens[0]), row
        torch.testing.assert_close(batch.images[row], single.images[0], atol=1e-4, rtol=0)


def test_generate_images_mixed_start_tokens_in_batch(tiny_model):
    """One prompt already ends with <|image_gen_start|>, the other not: both draw as they would alone."""
    model = tiny_model()
    with_start = LONG_PROMPT + [IMAGE_GEN_START_ID]
    singles = [model.generate_images(torch.tensor([p]), do_sample=False) for p in (with_start, SHORT_PROMPT)]
    ids, mask = left_padded(with_start, SHORT_PROMPT)
    batch = model.generate_images(ids, attention_mask=mask, do_sample=False)
    for row, single in enumerate(singles):
        assert torch.equal(batch.image_tokens[row], single.image_tokens[0]), row


def test_num_images_per_prompt_shapes_and_range(tiny_model):
    model = tiny_model()
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    generator = torch.Generator().manual_seed(0)
    out = model.generate_images(ids, attention_mask=mask, num_images_per_prompt=2, generator=generator)
    assert isinstance(out, VargptImageGenerationOutput)
    assert out.images.shape == (4, 3, 64, 64)
    assert out.image_tokens.shape == (4, TINY_NUM_IMAGE_GEN_TOKENS)
    assert out.image_tokens.dtype == torch.long
    assert int(out.image_tokens.min()) >= 0 and int(out.image_tokens.max()) < 64
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    # greedy: the images of one prompt are consecutive copies
    greedy = model.generate_images(ids, attention_mask=mask, num_images_per_prompt=2, do_sample=False)
    single = model.generate_images(ids, attention_mask=mask, do_sample=False)
    assert torch.equal(greedy.image_tokens, single.image_tokens.repeat_interleave(2, dim=0))


def test_generator_seed_reproducibility(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([LONG_PROMPT])

    def draw(seed):
        return model.generate_images(prompt, do_sample=True, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a.image_tokens, b.image_tokens)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.image_tokens, c.image_tokens)


def test_sampling_parameters_change_the_draw(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([LONG_PROMPT])
    greedy = model.generate_images(prompt, do_sample=False).image_tokens
    # a very low temperature is (almost) greedy; top_k=1 is exactly greedy
    cold = model.generate_images(prompt, temperature=1e-4, generator=torch.Generator().manual_seed(0)).image_tokens
    assert torch.equal(cold, greedy)
    top1 = model.generate_images(prompt, top_k=1, generator=torch.Generator().manual_seed(0)).image_tokens
    assert torch.equal(top1, greedy)
    hot = model.generate_images(prompt, top_k=0, top_p=1.0, generator=torch.Generator().manual_seed(0)).image_tokens
    assert not torch.equal(hot, greedy)


def test_classifier_free_guidance(tiny_model):
    model = tiny_model()
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    plain = model.generate_images(ids, attention_mask=mask, do_sample=False, guidance_scale=1.0)
    guided = model.generate_images(ids, attention_mask=mask, do_sample=False, guidance_scale=3.0)
    assert guided.images.shape == (2, 3, 64, 64)
    assert guided.image_tokens.shape == (2, TINY_NUM_IMAGE_GEN_TOKENS)
    assert not torch.equal(plain.image_tokens, guided.image_tokens)
    # guidance is per prompt: the batch gives what each prompt gives alone
    alone = model.generate_images(torch.tensor([SHORT_PROMPT]), do_sample=False, guidance_scale=3.0)
    assert torch.equal(guided.image_tokens[1], alone.image_tokens[0])
    # and works with several images per prompt
    several = model.generate_images(
        ids, attention_mask=mask, do_sample=False, guidance_scale=3.0, num_images_per_prompt=2
    )
    assert torch.equal(several.image_tokens, guided.image_tokens.repeat_interleave(2, dim=0))


def test_decode_image_tokens_equals_generated_images(tiny_model):
    model = tiny_model()
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    out = model.generate_images(ids, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    decoded = model.decode_image_tokens(out.image_tokens)
    assert decoded.shape == out.images.shape
    # same f_hat values; only its memory layout differs between the two paths, which moves the conv decoder's float32
    # rounding by ~1e-5
    torch.testing.assert_close(decoded, out.images, atol=5e-5, rtol=0)


def test_scale_callback(tiny_model):
    model = tiny_model()
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    calls = []

    def callback(scale_index, state):
        calls.append((scale_index, state["f_hat"].clone(), state["image_tokens"].clone()))

    out = model.generate_images(ids, attention_mask=mask, do_sample=False, scale_callback=callback)
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    for _, f_hat, _ in calls:
        assert f_hat.shape == (2, Z_CHANNELS, FINAL_SIDE, FINAL_SIDE)
    assert [c[2].shape[1] for c in calls] == [1, 5, 14, 30]
    assert torch.equal(calls[-1][2], out.image_tokens)
    # the last f_hat is what gets decoded
    final = model.model.vqvae.decode_fhat(calls[-1][1]).add(1).mul(0.5)
    torch.testing.assert_close(final, out.images, atol=5e-5, rtol=0)


def test_bfloat16_generate_images(tiny_model):
    model = tiny_model().to(torch.bfloat16)
    ids, mask = left_padded(LONG_PROMPT, SHORT_PROMPT)
    out = model.generate_images(ids, attention_mask=mask, do_sample=False, guidance_scale=2.0)
    assert out.images.shape == (2, 3, 64, 64)
    assert torch.isfinite(out.images).all()
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    assert out.image_tokens.shape == (2, TINY_NUM_IMAGE_GEN_TOKENS)


def test_image_mode_of_generate(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([LONG_PROMPT])
    direct = model.generate_images(prompt, do_sample=False, guidance_scale=2.0)
    via_generate = model.generate(prompt, generation_mode="image", do_sample=False, guidance_scale=2.0)
    assert torch.equal(direct.image_tokens, via_generate.image_tokens)
    via_kwarg = model.generate(input_ids=prompt, generation_mode="image", do_sample=False, guidance_scale=2.0)
    assert torch.equal(direct.image_tokens, via_kwarg.image_tokens)


# ---- interleaved generation ----------------------------------------------------------------------------------------
class DrawFirstThenText(LogitsProcessor):
    """Forces <|image_gen_start|> as the first answer token; afterwards forbids EOS and special tokens."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        if input_ids.shape[1] == self.prompt_length:
            scores[:] = -float("inf")
            scores[:, IMAGE_GEN_START_ID] = 0.0
        else:
            scores[:, [2, IMAGE_TOKEN_ID, PAD_TOKEN_ID, IMAGE_GEN_START_ID, IMAGE_GEN_END_ID, IMAGE_GEN_PAD_ID]] = (
                -float("inf")
            )
        return scores


def test_interleaved_generation(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([SHORT_PROMPT])
    max_new_tokens = 6
    out = model.generate(
        prompt,
        generation_mode="interleaved",
        max_new_tokens=max_new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([DrawFirstThenText(prompt.shape[1])]),
        image_kwargs={"do_sample": False},
    )
    assert len(out.sequences) == 1 and len(out.images) == 1 and len(out.image_tokens) == 1
    sequence = out.sequences[0]
    n = len(SHORT_PROMPT)
    assert sequence[:n].tolist() == SHORT_PROMPT
    assert sequence[n].item() == IMAGE_GEN_START_ID
    block_end = n + 1 + TINY_NUM_IMAGE_GEN_TOKENS
    assert sequence[n + 1 : block_end].tolist() == [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS
    assert sequence[block_end].item() == IMAGE_GEN_END_ID
    text_after = sequence[block_end + 1 :]
    assert 1 <= len(text_after) <= max_new_tokens - 1
    assert out.images[0].shape == (1, 3, 64, 64)
    assert out.image_tokens[0].shape == (1, TINY_NUM_IMAGE_GEN_TOKENS)
    torch.testing.assert_close(model.decode_image_tokens(out.image_tokens[0]), out.images[0], atol=5e-5, rtol=0)
    # the drawing is what generate_images draws after the same prefix
    drawn = model.generate_images(sequence[None, : n + 1], do_sample=False)
    assert torch.equal(drawn.image_tokens, out.image_tokens[0])
    # the text after the image is what the model says with that image in its context
    continued = model.generate(
        sequence[None, : block_end + 1],
        image_tokens=out.image_tokens[0],
        max_new_tokens=len(text_after),
        do_sample=False,
        logits_processor=LogitsProcessorList([DrawFirstThenText(-1)]),
    )
    assert torch.equal(continued[0, block_end + 1 :], text_after)


def test_interleaved_without_drawing_is_plain_text(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([LONG_PROMPT])
    out = model.generate(
        prompt,
        generation_mode="interleaved",
        max_new_tokens=5,
        do_sample=False,
        logits_processor=LogitsProcessorList([DrawFirstThenText(-1)]),
    )
    plain = model.generate(
        prompt, max_new_tokens=5, do_sample=False, logits_processor=LogitsProcessorList([DrawFirstThenText(-1)])
    )
    assert torch.equal(out.sequences[0], plain[0])
    assert out.image_tokens[0].shape == (0, TINY_NUM_IMAGE_GEN_TOKENS)


# ---- training ------------------------------------------------------------------------------------------------------
def _train_step(model):
    inputs = mixed_inputs()
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.text_loss is not None and out.image_loss is not None
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_train_step(tiny_model):
    reference = tiny_model(var_drop_path_rate=0.0, var_cond_drop_rate=0.0).train()
    reference_grads = _train_step(reference)

    model = tiny_model(var_drop_path_rate=0.0, var_cond_drop_rate=0.0)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model.train()
    grads = _train_step(model)

    var_params = [n for n, _ in model.named_parameters() if n.startswith("model.scale_decoder.")]
    assert var_params
    for name in var_params + ["model.gen_input_projector.fc1.weight", "model.gen_output_projector.fc2.weight"]:
        assert name in grads, f"no gradient for {name}"
        assert grads[name].abs().sum() > 0, f"zero gradient for {name}"
    assert grads["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_text_loss_uses_labels_and_ignores_image_pads(tiny_model):
    model = tiny_model()
    inputs = mixed_inputs()
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]  # supervise only the final answer tokens
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        logits = out.logits[0, -3:-1]
        expected = torch.nn.functional.cross_entropy(logits, ids[0, -2:])
        torch.testing.assert_close(out.text_loss, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.loss, out.text_loss + out.image_loss, atol=1e-6, rtol=0)
        # pads are never text targets, even when labels point at them
        with_pads = model(**inputs, labels=ids.clone())
        no_pads = ids.masked_fill(ids == IMAGE_GEN_PAD_ID, -100)
        torch.testing.assert_close(with_pads.text_loss, model(**inputs, labels=no_pads).text_loss, atol=1e-6, rtol=0)


# ---- attention backends --------------------------------------------------------------------------------------------
def test_sdpa_and_eager_give_the_same_logits(tiny_config):
    torch.manual_seed(0)
    eager = VargptForConditionalGeneration._from_config(tiny_config(), attn_implementation="eager").eval()
    sdpa = VargptForConditionalGeneration._from_config(tiny_config(), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.model.language_model.config._attn_implementation == "eager"
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    inputs = mixed_inputs()
    with torch.no_grad():
        a, b = eager(**inputs), sdpa(**inputs)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.image_logits, b.image_logits, atol=1e-4, rtol=0)
    prompt = torch.tensor([LONG_PROMPT])
    assert torch.equal(
        eager.generate_images(prompt, do_sample=False).image_tokens,
        sdpa.generate_images(prompt, do_sample=False).image_tokens,
    )


@pytest.mark.parametrize("patch_nums", [[1, 2, 3, 4, 5, 6, 8, 10, 13, 16], [1, 2, 3, 4, 5], [1, 2, 3, 4]])
def test_residual_filter_choice_follows_the_released_float64_ticks(patch_nums):
    """Scales that fall exactly between two Φ ticks (2/9, 1/2) must pick the filter VAR's numpy rounding picks."""
    from transformers_vargpt.configuration_vargpt import VargptVQVAEConfig
    from transformers_vargpt.modeling_vargpt_vqvae import MultiScaleQuantizer

    config = VargptVQVAEConfig(scale_sizes=patch_nums, image_size=patch_nums[-1] * 16)
    ticks = np.linspace(1 / 12, 11 / 12, 4)  # VAR's PhiPartiallyShared with 4 filters
    expected = [int(np.argmin(np.abs(ticks - si / (len(patch_nums) - 1)))) for si in range(len(patch_nums))]
    assert MultiScaleQuantizer(config).filter_of_scale == expected


def test_text_loss_from_target_positions_only_equals_the_full_loss(tiny_model):
    """Training may evaluate the LM head only where a text target follows (not over an image's pads): same loss,
    same gradients."""
    from transformers_vargpt.training.trainer import supervised_positions

    model = tiny_model(seed=3)
    prompt = [1, 40, 41, 42, IMAGE_GEN_START_ID] + [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS
    input_ids = torch.tensor([prompt + [IMAGE_GEN_END_ID, 50, 51, 2]])
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[input_ids == IMAGE_GEN_PAD_ID] = -100
    tokens = torch.randint(0, 64, (1, TINY_NUM_IMAGE_GEN_TOKENS))
    positions = supervised_positions(labels)
    # the tokens before <|image_gen_start|>, the last pad (<|image_gen_end|>), <|image_gen_end|> (50), 50 (51), 51 (</s>)
    end = 4 + TINY_NUM_IMAGE_GEN_TOKENS
    assert positions.tolist() == [3, end, end + 1, end + 2, end + 3]
    losses, grads = [], []
    for keep in (0, positions):
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels, image_tokens=tokens, logits_to_keep=keep)
        out.text_loss.backward()
        losses.append(out.text_loss.detach())
        grads.append(model.lm_head.weight.grad.clone())
    assert out.logits.shape[1] == positions.numel()
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=input_ids, labels=labels, image_tokens=tokens, logits_to_keep=2)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upsample_phases_equal_nearest_upsampling_then_conv(memory_format):
    """The decoder's ×2 upsampling runs as four 2×2 phase convs on the small map; values and gradients must be those
    of the released nearest-upsample + 3×3 conv."""
    import torch.nn.functional as F

    from transformers_vargpt.modeling_vargpt_vqvae import VQUpsample

    torch.manual_seed(0)
    upsample = VQUpsample(16)
    x = torch.randn(2, 16, 5, 7).contiguous(memory_format=memory_format).requires_grad_()
    reference_input = x.detach().clone().requires_grad_()
    out = upsample(x)
    reference = upsample.conv(F.interpolate(reference_input, scale_factor=2.0, mode="nearest"))
    assert out.shape == (2, 16, 10, 14) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(reference)
    (out * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference_input.grad, atol=1e-5, rtol=1e-5)


def test_decoder_in_place_inference_matches_autograd_path(tiny_model):
    """Under no_grad the decoder updates activations in place; with autograd on it must give the same image and
    still backpropagate (nothing it needs for the backward pass was overwritten)."""
    vqvae = tiny_model(seed=5).model.vqvae
    size = vqvae.quantizer.final_size
    f_hat = torch.randn(3, vqvae.config.z_channels, size, size)
    with torch.no_grad():
        fast = vqvae.decode_fhat(f_hat)
    f_hat.requires_grad_()
    tracked = vqvae.decode_fhat(f_hat)
    torch.testing.assert_close(fast, tracked.detach(), atol=1e-4, rtol=0)
    tracked.sum().backward()
    assert f_hat.grad is not None and torch.isfinite(f_hat.grad).all()


def test_decode_fhat_images_per_call(tiny_model):
    """Decoding a batch in slices (the CPU default is one image per call) gives the whole-batch result (up to the
    float reordering noise of a random decoder whose raw outputs span ±25)."""
    vqvae = tiny_model(seed=6).model.vqvae
    size = vqvae.quantizer.final_size
    f_hat = torch.randn(5, vqvae.config.z_channels, size, size)
    with torch.no_grad():
        whole = vqvae.decode_fhat(f_hat, images_per_call=5)
        for images_per_call in (None, 1, 2, 8):
            torch.testing.assert_close(
                vqvae.decode_fhat(f_hat, images_per_call=images_per_call), whole, atol=1e-4, rtol=0
            )
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="images_per_call"):
            vqvae.decode_fhat(f_hat, images_per_call=bad)
    with pytest.raises(ValueError, match="f_hat must be"):
        vqvae.decode_fhat(f_hat[0])


def test_image_gen_tokens_and_image_gen_targets_are_deprecated_names(tiny_model):
    model = tiny_model()
    inputs = mixed_inputs()
    codes = model.model.vqvae.tokenize(inputs.pop("pixel_gen_values"))
    with torch.no_grad():
        new = model(**inputs, image_tokens=codes)
        with pytest.warns(FutureWarning, match="image_tokens"):
            old = model(**inputs, image_gen_tokens=codes)
    assert torch.equal(new.image_logits, old.image_logits) and torch.equal(new.image_tokens, codes)
    with pytest.warns(FutureWarning, match="image_tokens"):
        assert torch.equal(new.image_gen_targets, codes)
    with pytest.raises(ValueError, match="once"), pytest.warns(FutureWarning):
        model(**inputs, image_tokens=codes, image_gen_tokens=codes)


def test_scale_loss_weighting_gives_every_scale_the_same_weight(tiny_model):
    """`loss_weighting="scale"`: the image loss is the mean over scales of each scale's mean code loss; `"token"`
    (released) the plain mean over codes. Same logits either way."""
    model = tiny_model(seed=5)
    prompt = [1, 40, 41, 42, IMAGE_GEN_START_ID] + [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS + [IMAGE_GEN_END_ID]
    input_ids = torch.tensor([prompt, prompt])
    tokens = torch.randint(0, 64, (2, TINY_NUM_IMAGE_GEN_TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per_token = model(input_ids=input_ids, image_tokens=tokens)
        model.config.var_config.loss_weighting = "scale"
        per_scale = model(input_ids=input_ids, image_tokens=tokens)
    torch.testing.assert_close(per_token.image_logits, per_scale.image_logits)
    codes = torch.nn.functional.cross_entropy(per_token.image_logits.flatten(0, 1), tokens.flatten(), reduction="none")
    codes = codes.view(tokens.shape)
    torch.testing.assert_close(per_token.image_loss, codes.mean())
    sides = model.config.vq_config.scale_sizes
    scale_means = [part.mean() for part in codes.split([side * side for side in sides], dim=1)]
    torch.testing.assert_close(per_scale.image_loss, torch.stack(scale_means).mean())
    assert not torch.allclose(per_scale.image_loss, per_token.image_loss)
    with pytest.raises(ValueError, match="loss_weighting"):
        VargptConfig(var_config={"loss_weighting": "pixel"})


def test_input_code_noise_changes_training_inputs_only(tiny_model):
    """`input_code_noise`: in training, some teacher-forced input codes are random (seeded by torch's RNG, like
    dropout); the targets stay the true codes, and evaluation is untouched."""
    model = tiny_model(seed=5)
    for block in model.model.scale_decoder.blocks:  # no other randomness in training mode
        block.drop_path_rate = 0.0
    model.config.var_config.condition_dropout = 0.0
    prompt = [1, 40, 41, 42, IMAGE_GEN_START_ID] + [IMAGE_GEN_PAD_ID] * TINY_NUM_IMAGE_GEN_TOKENS + [IMAGE_GEN_END_ID]
    input_ids = torch.tensor([prompt, prompt])
    tokens = torch.randint(0, 64, (2, TINY_NUM_IMAGE_GEN_TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.train()
        clean = model(input_ids=input_ids, image_tokens=tokens)
        model.config.var_config.input_code_noise = 0.5
        torch.manual_seed(0)
        noisy = model(input_ids=input_ids, image_tokens=tokens)
        torch.manual_seed(0)
        again = model(input_ids=input_ids, image_tokens=tokens)
        model.eval()
        evaluated = model(input_ids=input_ids, image_tokens=tokens)
        model.config.var_config.input_code_noise = 0.0
        evaluated_clean = model(input_ids=input_ids, image_tokens=tokens)
    assert torch.equal(noisy.image_tokens, tokens) and torch.equal(clean.image_tokens, tokens)
    # the first scale's input is the condition alone: its logits cannot change; later scales' do
    first = model.config.vq_config.scale_sizes[0] ** 2
    torch.testing.assert_close(noisy.image_logits[:, :first], clean.image_logits[:, :first])
    assert not torch.allclose(noisy.image_logits[:, first:], clean.image_logits[:, first:])
    torch.testing.assert_close(noisy.image_logits, again.image_logits)
    torch.testing.assert_close(evaluated.image_logits, evaluated_clean.image_logits)
    with pytest.raises(ValueError, match="input_code_noise"):
        VargptConfig(var_config={"input_code_noise": 1.0})
