"""Image generation settings and code sampling: defaults from the generation config, the logits processors against
the sampling they replace, and the one next-scale step shared by generation and teacher forcing."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from conftest import TINY_NUM_IMAGE_GEN_TOKENS
from transformers_vargpt import VargptForConditionalGeneration
from transformers_vargpt.generation_vargpt import (
    IMAGE_GENERATION_DEFAULTS,
    CodeSampler,
    ScaleRampedGuidanceLogitsProcessor,
)

PROMPT = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 12]])
SCALE_SIZES = [1, 2, 3, 4]


# ---- references: the sampling the processors replace, written out independently ----------------------------------
def descending_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """The previous sampler's filtering (B×l×V): k-th best threshold, then drop a code once the codes ranked above
    it cover top_p."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[..., -1:], -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits


def var_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """VAR's released filtering (B×l×V): smallest of the top k as threshold; ascending sort, drop while the
    cumulative probability stays <= 1 - top_p, never the best code."""
    logits = logits.clone()
    if top_k > 0:
        threshold = logits.topk(min(top_k, logits.shape[-1]), dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits[logits < threshold] = -math.inf
    if top_p > 0:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[..., -1] = False
        logits[drop.scatter(-1, order, drop)] = -math.inf
    return logits


class RecordScores(LogitsProcessor):
    """Keeps the scores it is given (after the processors before it) and passes them on."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.clone())
        return scores


def filtered_scores(logits: torch.Tensor, **settings) -> torch.Tensor:
    """What CodeSampler hands to the multinomial for `logits` (B×l×V), as (B·l)×V."""
    config = GenerationConfig()
    for name, value in {**IMAGE_GENERATION_DEFAULTS, **settings}.items():
        setattr(config, name, value)
    sampler = CodeSampler(config, SCALE_SIZES)
    recorder = RecordScores()
    sampler.processors.append(recorder)
    sampler(logits, torch.zeros(logits.shape[0], 0, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    return recorder.scores[0]


@pytest.mark.parametrize(
    "settings",
    [
        {"top_k": 900, "top_p": 0.95, "temperature": 1.0},
        {"top_k": 50, "top_p": 0.5, "temperature": 0.7},
        {"top_k": 0, "top_p": 0.8, "temperature": 1.3},
        {"top_k": 10, "top_p": 1.0, "temperature": 1.0},
        {"top_k": 5000, "top_p": 0.9, "temperature": 1.0},  # k above the vocabulary keeps everything
    ],
)
def test_warpers_keep_the_codes_the_released_sampling_keeps(settings):
    logits = torch.randn(3, 7, 4096, generator=torch.Generator().manual_seed(1)) * 3
    ours = filtered_scores(logits, **settings)
    previous = descending_top_k_top_p(logits, **settings).flatten(0, 1)
    released = var_top_k_top_p(logits.float() / settings["temperature"], settings["top_k"], settings["top_p"])
    # the same codes survive as with the previous sampler, with the same scores
    assert torch.equal(torch.isinf(ours), torch.isinf(previous))
    assert torch.equal(ours[~torch.isinf(ours)], previous[~torch.isinf(previous)])
    # and the scores are exactly VAR's
    assert torch.equal(ours, released.flatten(0, 1))


def test_sampled_codes_equal_the_previous_sampler_draw_for_draw():
    logits = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(2))
    config = GenerationConfig()
    for name, value in {**IMAGE_GENERATION_DEFAULTS, "top_k": 20, "top_p": 0.9, "temperature": 0.8}.items():
        setattr(config, name, value)
    no_codes_yet = torch.zeros(2, 0, dtype=torch.long)
    codes = CodeSampler(config, SCALE_SIZES)(logits, no_codes_yet, torch.Generator().manual_seed(3))
    probs = descending_top_k_top_p(logits, 20, 0.9, 0.8).softmax(dim=-1).view(-1, 64)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).view(2, 9)
    assert torch.equal(codes, expected)


def test_guidance_processor_ramps_over_scales():
    guidance = ScaleRampedGuidanceLogitsProcessor(3.0, SCALE_SIZES)
    cond, uncond = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(4)).unbind(0)
    scores = torch.cat([cond, uncond])
    starts = [0, 1, 5, 14]  # codes drawn before each scale
    for scale_index, start in enumerate(starts):
        t = 2.0 * scale_index / 3
        out = guidance(torch.zeros(4, start, dtype=torch.long), scores)
        torch.testing.assert_close(out, cond + t * (cond - uncond), rtol=0, atol=1e-6)
    assert torch.equal(guidance(torch.zeros(4, 0, dtype=torch.long), scores), cond)  # scale 0: no guidance
    with pytest.raises(ValueError, match="start of a scale"):
        guidance(torch.zeros(4, 3, dtype=torch.long), scores)


# ---- defaults from the generation config ---------------------------------------------------------------------------
def test_image_generation_config_defaults_and_overrides(tiny_model):
    model = tiny_model()
    assert model.generation_config.image_generation == IMAGE_GENERATION_DEFAULTS
    resolved = model.image_generation_config()
    assert {name: getattr(resolved, name) for name in IMAGE_GENERATION_DEFAULTS} == IMAGE_GENERATION_DEFAULTS
    model.generation_config.image_generation = {"top_k": 7, "guidance_scale": 2.0}
    resolved = model.image_generation_config(top_p=0.5, temperature=None)
    assert (resolved.top_k, resolved.top_p, resolved.temperature, resolved.guidance_scale) == (7, 0.5, 1.0, 2.0)
    assert resolved.do_sample is True
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.image_generation_config(max_new_tokens=3)
    model.generation_config.image_generation = {"top_kk": 7}
    with pytest.raises(ValueError, match="top_kk"):
        model.image_generation_config()


def test_text_generation_is_not_changed_by_the_image_defaults(tiny_model):
    model = tiny_model()
    assert not model.generation_config.do_sample  # text stays greedy by default
    greedy = model.generate(PROMPT, max_new_tokens=4)
    assert torch.equal(greedy, model.generate(PROMPT, max_new_tokens=4, do_sample=False))


def test_generation_config_drives_generate_images(tiny_model):
    model = tiny_model()
    greedy = model.generate_images(PROMPT, do_sample=False).image_tokens
    model.generation_config.image_generation = {"do_sample": False}
    assert torch.equal(model.generate_images(PROMPT).image_tokens, greedy)
    assert torch.equal(model.generate(PROMPT, generation_mode="image").image_tokens, greedy)
    # explicit arguments win over the config
    generator = torch.Generator().manual_seed(0)
    sampled = model.generate_images(PROMPT, do_sample=True, top_k=0, top_p=1.0, generator=generator)
    assert not torch.equal(sampled.image_tokens, greedy)
    # a GenerationConfig passed in is the image config
    passed = GenerationConfig(do_sample=True, top_k=1, top_p=1.0, temperature=1.0, guidance_scale=1.0)
    assert torch.equal(model.generate_images(PROMPT, generation_config=passed).image_tokens, greedy)


def test_saved_generation_config_changes_the_image_defaults(tiny_model, tmp_path):
    model = tiny_model()
    greedy = model.generate_images(PROMPT, do_sample=False).image_tokens
    guided = model.generate_images(PROMPT, do_sample=False, guidance_scale=3.0).image_tokens
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["image_generation"] == IMAGE_GENERATION_DEFAULTS
    saved["image_generation"].update(do_sample=False, guidance_scale=3.0)
    (tmp_path / "generation_config.json").write_text(json.dumps(saved))
    loaded = VargptForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.generate_images(PROMPT).image_tokens, guided)
    assert torch.equal(loaded.generate_images(PROMPT, guidance_scale=1.0).image_tokens, greedy)


def test_default_negative_prompt_is_what_guidance_reads(tiny_model):
    """`negative_prompt_ids` in the image settings: the unconditional rows read them, exactly as if they were passed
    as negative prompts; without guidance they change nothing; explicit negative prompts win."""
    model = tiny_model()
    negative = torch.tensor([[1, 13, 14, 15]])
    explicit = model.generate_images(PROMPT.repeat(2, 1), do_sample=False, guidance_scale=3.0,
                                     negative_input_ids=negative.repeat(2, 1)).image_tokens
    same_prompt = model.generate_images(PROMPT, do_sample=False, guidance_scale=3.0).image_tokens
    unguided = model.generate_images(PROMPT, do_sample=False).image_tokens
    assert not torch.equal(explicit[:1], same_prompt)  # the negative prompt matters here
    model.generation_config.image_generation = {"do_sample": False, "guidance_scale": 3.0,
                                                "negative_prompt_ids": negative[0].tolist()}
    assert torch.equal(model.generate_images(PROMPT.repeat(2, 1)).image_tokens, explicit)
    assert torch.equal(model.generate_images(PROMPT, guidance_scale=1.0).image_tokens, unguided)
    other = torch.tensor([[1, 16, 17]])
    assert torch.equal(model.generate_images(PROMPT, negative_input_ids=other).image_tokens,
                       model.generate_images(PROMPT, negative_input_ids=other, negative_prompt_ids=[1, 2]).image_tokens)


@pytest.mark.parametrize(("ids", "message"), [([], "non-empty list"), ([1, -2], "integers >= 0"),
                                              ("1 2", "non-empty list"), ([1, 10**6], "outside the text vocabulary")])
def test_bad_negative_prompt_ids_are_refused(tiny_model, ids, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.generate_images(PROMPT, guidance_scale=2.0, negative_prompt_ids=ids)


def test_released_generation_config_without_image_settings_uses_the_released_defaults(released_tiny_model):
    assert getattr(released_tiny_model.generation_config, "image_generation", None) is None
    resolved = released_tiny_model.image_generation_config()
    assert {name: getattr(resolved, name) for name in IMAGE_GENERATION_DEFAULTS} == IMAGE_GENERATION_DEFAULTS


def test_user_logits_processor_takes_part(tiny_model):
    model = tiny_model()

    class OnlyCodeThree(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return torch.full_like(scores, -math.inf).index_fill(-1, torch.tensor([3]), 0.0)

    out = model.generate_images(PROMPT, logits_processor=LogitsProcessorList([OnlyCodeThree()]))
    assert torch.equal(out.image_tokens, torch.full((1, TINY_NUM_IMAGE_GEN_TOKENS), 3))


# ---- the next-scale step -------------------------------------------------------------------------------------------
def test_add_scale_is_the_step_of_teacher_forcing_and_generation(tiny_model):
    quantizer = tiny_model().model.vqvae.quantizer
    codes = torch.randint(0, quantizer.codebook.num_embeddings, (2, TINY_NUM_IMAGE_GEN_TOKENS))
    per_scale = quantizer.split_scales(codes)
    f_hat = torch.zeros(2, quantizer.codebook.embedding_dim, quantizer.final_size, quantizer.final_size)
    inputs = []
    for si, idx in enumerate(per_scale):
        f_hat, next_input = quantizer.add_scale(f_hat, si, idx)
        if next_input is not None:
            side = quantizer.scale_sizes[si + 1]
            assert next_input.shape == (2, side * side, quantizer.codebook.embedding_dim)
            expected = F.interpolate(f_hat, size=(side, side), mode="area").flatten(2).transpose(1, 2)
            assert torch.equal(next_input, expected)
            inputs.append(next_input)
    assert next_input is None
    assert torch.equal(torch.cat(inputs, dim=1), quantizer.next_scale_inputs(per_scale))
    torch.testing.assert_close(f_hat, quantizer.indices_to_fhat(per_scale), rtol=0, atol=1e-6)
