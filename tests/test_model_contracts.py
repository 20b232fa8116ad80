"""The model contracts every transformers model keeps (what transformers' common model and generation tests check),
tested on the tiny random VARGPT: cache passing, attention implementations, `inputs_embeds` with images, tuple
outputs, image features, a settable vocabulary size, several vision feature layers, static caches and
`torch.compile`, `shift_labels`, initialisation from the meta device and the Auto classes."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from conftest import IMAGE_GEN_PAD_ID, IMAGE_TOKEN_ID, TINY_IMAGE_SEQ_LENGTH, make_tiny_config, make_tiny_model
from transformers import AutoModel, AutoModelForImageTextToText, PreTrainedModel, set_seed
from transformers.modeling_outputs import BaseModelOutputWithPooling

from transformers_vargpt import VargptForConditionalGeneration, VargptModel


def _prompt_with_image(batch: int = 2, text: int = 5) -> dict[str, torch.Tensor]:
    """Prompts `<s> <image>×16 words…` (B×T) and one 32×32 image each."""
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(3, 200, (batch, text), generator=generator)
    image = torch.full((batch, TINY_IMAGE_SEQ_LENGTH), IMAGE_TOKEN_ID)
    input_ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), image, words], dim=1)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}


def _text_prompt(batch: int = 2, length: int = 6) -> torch.LongTensor:
    return torch.randint(3, 200, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model() -> VargptForConditionalGeneration:
    return make_tiny_model(seed=0)


# ---- 1. the cache argument -------------------------------------------------------------------------------------
def test_generate_continues_from_a_returned_cache(model):
    """Greedy decoding in two halves, the second fed the first's cache, equals one run of all the tokens."""
    prompt = _text_prompt()
    settings = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    full = model.generate(prompt, max_new_tokens=6, **settings)
    first = model.generate(prompt, max_new_tokens=3, return_dict_in_generate=True, **settings)
    assert first.cache is not None
    second = model.generate(first.sequences, cache=first.cache, max_new_tokens=3, **settings)
    assert torch.equal(second, full)


def test_forward_takes_the_cache_by_name(model):
    """`forward(cache=...)` extends the given cache: the last token's logits equal a full forward's."""
    ids = _text_prompt()
    full = model(input_ids=ids).logits[:, -1]
    prefix = model(input_ids=ids[:, :-1], use_cache=True)
    step = model(input_ids=ids[:, -1:], cache=prefix.cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-5)


def test_assisted_decoding_accepts_the_model_as_its_own_assistant(model):
    prompt = _text_prompt(batch=1)
    settings = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None, "max_new_tokens": 5}
    plain = model.generate(prompt, **settings)
    assisted = model.generate(prompt, assistant_model=model, **settings)
    assert torch.equal(assisted, plain)


def test_assisted_decoding_of_a_prompt_with_an_image_reads_the_image_in_the_assistant_too(model):
    """transformers prefills an assistant with `is_first_iteration=False`; the assistant's empty cache still marks it
    as reading the prompt, so it gets the image (without it, the `<image>` tokens would be read as text)."""
    inputs = {name: value[:1] for name, value in _prompt_with_image().items()}
    settings = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None, "max_new_tokens": 5}
    plain = model.generate(**inputs, **settings)
    seen = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        assisted = model.generate(**inputs, assistant_model=model, **settings)
    finally:
        hook.remove()
    assert torch.equal(assisted, plain)
    assert len(seen) == 2  # the image was encoded twice: by the model and by its assistant, each at its prefill


def test_prepare_inputs_for_generation_names_its_arguments(model):
    """transformers' generation tests look for `inputs_embeds` (and the cache) in the signature."""
    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    assert {"input_ids", "cache", "attention_mask", "inputs_embeds", "is_first_iteration"} <= set(parameters)


# ---- 2. attention implementation -------------------------------------------------------------------------------
def test_composite_model_switches_to_sdpa_and_eager():
    model = make_tiny_model(seed=0)
    inputs = _prompt_with_image()
    model.set_attn_implementation("eager")
    eager = model(**inputs).logits
    model.set_attn_implementation("sdpa")
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.model.vqvae.config._attn_implementation == "sdpa"
    torch.testing.assert_close(model(**inputs).logits, eager, rtol=1e-4, atol=1e-4)


# ---- 3. inputs_embeds with pixel_values ------------------------------------------------------------------------
def test_inputs_embeds_with_pixel_values_find_the_image_positions(model):
    inputs = _prompt_with_image()
    from_ids = model(**inputs).logits
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = model(
        inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
    ).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_inputs_embeds_without_image_embeddings_are_rejected_with_pixel_values(model):
    inputs = _prompt_with_image()
    embeds = model.get_input_embeddings()(_text_prompt(length=inputs["input_ids"].shape[1]))
    with pytest.raises(ValueError, match="no <image> token"):
        model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"])


# ---- 4. return_dict=False ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", [VargptModel, VargptForConditionalGeneration])
def test_return_dict_false_gives_the_outputs_as_a_tuple(model_class):
    torch.manual_seed(0)
    model = model_class(make_tiny_config()).eval()
    inputs = _prompt_with_image()
    as_dict = model(**inputs)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict[0])
    assert len(as_tuple) == len(as_dict.to_tuple())


def test_config_return_dict_false_keeps_the_head_working():
    torch.manual_seed(0)
    model = VargptForConditionalGeneration(make_tiny_config(return_dict=False)).eval()
    outputs = model(**_prompt_with_image())
    assert isinstance(outputs, tuple)
    assert outputs[0].shape[-1] == model.config.text_config.vocab_size


# ---- 5. image features -----------------------------------------------------------------------------------------
def test_get_image_features_returns_vision_outputs_with_projected_pooler_output():
    model = make_tiny_model(seed=0)
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    pixel_values = _prompt_with_image()["pixel_values"]
    outputs = model.get_image_features(pixel_values, output_attentions=True, output_hidden_states=True)
    assert isinstance(outputs, BaseModelOutputWithPooling)
    hidden = model.config.text_config.hidden_size
    assert outputs.pooler_output.shape == (2, TINY_IMAGE_SEQ_LENGTH, hidden)
    assert len(outputs.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert len(outputs.attentions) == model.config.vision_config.num_hidden_layers
    as_tuple = model.get_image_features(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    # hidden states only when asked for (the features read them either way)
    unasked = model.get_image_features(pixel_values)
    assert unasked.hidden_states is None
    torch.testing.assert_close(unasked.pooler_output, outputs.pooler_output)


def test_forward_outputs_carry_the_image_outputs(model):
    outputs = model(**_prompt_with_image())
    assert isinstance(outputs.image_outputs, BaseModelOutputWithPooling)
    torch.testing.assert_close(outputs.image_outputs.pooler_output, outputs.image_hidden_states)


# ---- 6. vocab_size ---------------------------------------------------------------------------------------------
def test_config_vocab_size_is_settable_and_follows_resizing():
    config = make_tiny_config()
    config.vocab_size = 400
    assert config.text_config.vocab_size == 400
    model = make_tiny_model(seed=0)
    model.resize_token_embeddings(352)
    assert model.config.vocab_size == model.config.text_config.vocab_size == 352
    assert model.lm_head.out_features == 352
    assert model(input_ids=_text_prompt()).logits.shape[-1] == 352


# ---- 7. several vision feature layers --------------------------------------------------------------------------
def test_vision_feature_layers_list_concatenates_their_features():
    torch.manual_seed(0)
    model = VargptForConditionalGeneration(make_tiny_config(vision_feature_layer=[-2, -1])).eval()
    vision_width = model.config.vision_config.hidden_size
    assert model.model.multi_modal_projector.linear_1.in_features == 2 * vision_width
    pixel_values = _prompt_with_image()["pixel_values"]
    hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    expected = model.model.multi_modal_projector(torch.cat([hidden_states[-2], hidden_states[-1]], -1)[:, 1:])
    torch.testing.assert_close(model.get_image_features(pixel_values).pooler_output, expected)
    assert model(**_prompt_with_image()).logits.isfinite().all()


def test_vision_feature_layer_argument_overrides_the_config(model):
    pixel_values = _prompt_with_image()["pixel_values"]
    hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    expected = model.model.multi_modal_projector(hidden_states[-1])  # "full": CLS kept
    outputs = model.get_image_features(pixel_values, vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.testing.assert_close(outputs.pooler_output, expected)


# ---- 8. static cache and torch.compile ---------------------------------------------------------------------------
def test_static_cache_generation_equals_dynamic(model):
    assert VargptForConditionalGeneration._can_compile_fullgraph
    prompt = _text_prompt()
    settings = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None, "max_new_tokens": 5}
    dynamic = model.generate(prompt, **settings)
    static = model.generate(prompt, cache_implementation="static", **settings)
    assert torch.equal(static, dynamic)


def test_decoding_step_compiles_as_one_graph(model):
    """The forward of a decoding step (static cache, one new token) traces with `fullgraph=True`: no graph break."""
    from transformers import StaticCache

    torch._dynamo.reset()
    ids = _text_prompt(batch=1)
    cache = StaticCache(config=model.config.text_config, max_cache_len=16)
    prefix = model(input_ids=ids, cache=cache, use_cache=True)
    compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
    step_ids = prefix.logits[:, -1:].argmax(-1)
    position = torch.tensor([[ids.shape[1]]])
    step = compiled(input_ids=step_ids, cache=cache, position_ids=position, use_cache=True)
    reference = model(input_ids=torch.cat([ids, step_ids], 1)).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], reference, rtol=1e-4, atol=1e-5)


# ---- 9. shift_labels and meta-device initialisation -------------------------------------------------------------
def test_shift_labels_give_the_same_loss_as_labels(model):
    ids = _text_prompt()
    labels = ids.clone()
    labels[:, :2] = -100
    shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with_labels = model(input_ids=ids, labels=labels).loss
    with_shift = model(input_ids=ids, shift_labels=shift_labels).loss
    torch.testing.assert_close(with_shift, with_labels)
    # a real target at the last position counts only through shift_labels (there is no token after it)
    shift_labels[:, -1] = 5
    assert not torch.allclose(model(input_ids=ids, shift_labels=shift_labels).loss, with_labels)


@pytest.mark.parametrize("model_class", [VargptModel, VargptForConditionalGeneration])
def test_initialisation_from_the_meta_device_equals_the_constructor(model_class, monkeypatch):
    """`from_pretrained(None, state_dict={})` initialises every weight as the constructor does (same seed)."""
    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(42)
        original(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    config = make_tiny_config()
    from_init = model_class(copy.deepcopy(config)).state_dict()
    from_meta = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).state_dict()
    assert sorted(from_init) == sorted(from_meta)
    different = [name for name in from_init if not torch.equal(from_init[name], from_meta[name])]
    assert different == []


# ---- 10. the Auto classes ----------------------------------------------------------------------------------------
def test_auto_classes_find_the_base_model_and_the_head():
    config = make_tiny_config()
    assert type(AutoModel.from_config(config)) is VargptModel
    assert type(AutoModelForImageTextToText.from_config(config)) is VargptForConditionalGeneration
    assert VargptModel.base_model_prefix == "model"
