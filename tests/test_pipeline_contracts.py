"""The pipeline contracts diffusers' `PipelineTesterMixin` checks, on a tiny random `VargptPipeline`: saving with a
variant, one generator per image, callbacks that steer the per-scale loop (guidance scale, `num_timesteps`,
`interrupt`), offloading and the execution device, negative prompts and precomputed prompt embeddings."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module

from transformers_vargpt import VargptPipeline
from transformers_vargpt.tiny_models import build_tiny_vargpt

PROMPT = "a red circle"


def _pipe() -> VargptPipeline:
    model, processor = build_tiny_vargpt(seed=0)
    pipe = VargptPipeline(model=model, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> VargptPipeline:
    return _pipe()


def _codes(pipe: VargptPipeline, **kwargs) -> torch.LongTensor:
    kwargs.setdefault("prompt", PROMPT)
    return pipe(output_type="pt", **kwargs).image_tokens


# ---- 11. save_pretrained shows the arguments diffusers passes ------------------------------------------------------
def test_model_save_pretrained_signature_shows_variant_and_shard_size(pipe):
    parameters = inspect.signature(pipe.model.save_pretrained).parameters
    assert "variant" in parameters and "max_shard_size" in parameters


def test_pipeline_saves_and_loads_a_variant(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, variant="fp16")
    saved = {path.name for path in (tmp_path / "model").iterdir()}
    assert "model.fp16.safetensors" in saved and "model.safetensors" not in saved
    loaded = VargptPipeline.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_codes(loaded, do_sample=False), _codes(pipe, do_sample=False))


# ---- 12. one generator per image ---------------------------------------------------------------------------------
def test_a_list_of_generators_seeds_each_image(pipe):
    def draw(*seeds):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return _codes(pipe, num_images_per_prompt=len(seeds), generator=generators)

    first = draw(0, 1)
    assert torch.equal(draw(0, 1), first)
    other = draw(0, 7)
    assert torch.equal(other[0], first[0]) and not torch.equal(other[1], first[1])
    one = _codes(pipe, generator=[torch.Generator().manual_seed(3)])
    assert torch.equal(one, _codes(pipe, generator=torch.Generator().manual_seed(3)))


def test_a_generator_list_of_the_wrong_length_is_rejected(pipe):
    with pytest.raises(ValueError, match="one per image"):
        pipe(PROMPT, num_images_per_prompt=3, generator=[torch.Generator(), torch.Generator()])


# ---- 13. callbacks steer the loop ----------------------------------------------------------------------------------
def test_callbacks_read_num_timesteps_and_change_the_guidance_scale(pipe):
    scales = []

    def raise_guidance(p, step, timestep, callback_kwargs):
        scales.append(p.guidance_scale)
        p._guidance_scale += 1.0
        return callback_kwargs

    pipe(PROMPT, guidance_scale=2.0, do_sample=False, callback_on_step_end=raise_guidance)
    assert pipe.num_timesteps == pipe.num_scales == 4
    assert scales == [2.0, 3.0, 4.0, 5.0]
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps


def test_a_guidance_cut_off_callback_takes_effect(pipe):
    def cut_off(p, step, timestep, callback_kwargs):
        p._guidance_scale = 0.0  # what diffusers' CFG cut-off callbacks do
        return callback_kwargs

    guided = _codes(pipe, guidance_scale=6.0, do_sample=False)
    cut = _codes(pipe, guidance_scale=6.0, do_sample=False, callback_on_step_end=cut_off)
    unguided = _codes(pipe, guidance_scale=1.0, do_sample=False)
    # the ramp gives scale 0 no guidance, so cutting after it draws every scale unguided
    assert not torch.equal(guided, unguided)
    assert torch.equal(cut, unguided)


def test_interrupt_stops_after_the_current_scale(pipe):
    steps = []

    def stop_after_two(p, step, timestep, callback_kwargs):
        steps.append(step)
        p._interrupt = step == 1
        return callback_kwargs

    out = pipe(PROMPT, do_sample=False, output_type="pt", callback_on_step_end=stop_after_two)
    assert steps == [0, 1]
    drawn = 1 + 4
    assert torch.equal(out.image_tokens[:, :drawn], _codes(pipe, do_sample=False)[:, :drawn])
    assert (out.image_tokens[:, drawn:] == 0).all()
    assert out.images.shape == (1, 3, 64, 64)


def test_callback_tensor_inputs_are_the_loop_state(pipe):
    seen = {}

    def record(p, step, timestep, callback_kwargs):
        seen[step] = {name: value.clone() for name, value in callback_kwargs.items()}
        return callback_kwargs

    out = pipe(
        PROMPT,
        do_sample=False,
        output_type="pt",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
    )
    assert set(seen[3]) == set(pipe._callback_tensor_inputs)
    assert torch.equal(seen[3]["image_tokens"], out.image_tokens)
    torch.testing.assert_close(seen[3]["image"], out.images, rtol=0, atol=0)


# ---- 14. execution device and offloading ---------------------------------------------------------------------------
def test_model_cpu_offload_runs_the_model_and_draws_the_same_codes():
    reference = _codes(_pipe(), do_sample=False)
    pipe = _pipe()
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device.type == "cpu"
    assert torch.equal(_codes(pipe, do_sample=False), reference)


class _MetaOutsideForwardHook(AlignDevicesHook):
    """accelerate's sequential-offload hook, reduced to what it guarantees: a module's own weights exist only during
    its `forward` and lie on the meta device otherwise. (accelerate's own tensor moves break on a CPU execution
    device with torch 2.13, so the real offload is tested on CUDA in tests/test_accelerator.py.)"""

    def __init__(self, module: torch.nn.Module):
        super().__init__(execution_device=torch.device("cpu"), offload=True)
        self.weights = {name: p.detach().clone() for name, p in module.named_parameters(recurse=False)}
        self.post_forward(module, None)

    def init_hook(self, module):
        return module

    def pre_forward(self, module, *args, **kwargs):
        for name, value in self.weights.items():
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        return args, kwargs

    def post_forward(self, module, output):
        for name, value in self.weights.items():
            module._parameters[name] = torch.nn.Parameter(value.to("meta"), requires_grad=False)
        return output


def test_weights_are_read_only_inside_their_modules_forward():
    """What sequential CPU offload needs: under hooks that give each module its weights only during its `forward`,
    the pipeline draws exactly what it draws without them (a weight read anywhere else would meet the meta device)."""
    reference = _pipe()(prompt=PROMPT, output_type="pt", do_sample=False, guidance_scale=2.0)
    pipe = _pipe()
    for module in pipe.model.modules():  # every module, as accelerate's `cpu_offload` does
        add_hook_to_module(module, _MetaOutsideForwardHook(module))
    assert pipe.model.lm_head.weight.device.type == "meta" and pipe._execution_device.type == "cpu"
    out = pipe(prompt=PROMPT, output_type="pt", do_sample=False, guidance_scale=2.0)
    assert torch.equal(out.image_tokens, reference.image_tokens)
    torch.testing.assert_close(out.images, reference.images)
    torch.testing.assert_close(pipe.model.decode_image_tokens(out.image_tokens), reference.images)
    # reading a picture too (the big-model inference path of transformers uses the same hooks)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]}]
    text = pipe.processor.apply_chat_template(conversation, add_generation_prompt=True)
    image = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    inputs = pipe.processor(images=[image], text=[text], return_tensors="pt")
    answer = pipe.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(answer, _pipe().model.generate(**inputs, max_new_tokens=5, do_sample=False))


def test_generation_runs_on_the_given_device_whatever_the_weights_say(pipe):
    """The pipeline passes its execution device; the model no longer reads it from a weight (meta when offloaded)."""
    inputs = pipe.processor(text=PROMPT, generation_mode="image", return_tensors="pt")
    state = pipe.model.prepare_next_scale_state(
        inputs["input_ids"], inputs["attention_mask"], device=torch.device("cpu")
    )
    assert state.image_tokens.device.type == "cpu"


# ---- 15. negative prompts and prompt embeddings --------------------------------------------------------------------
def test_prompt_embeds_draw_what_the_prompt_draws(pipe):
    embeds, mask, _, _ = pipe.encode_prompt([PROMPT, "a blue square"])
    from_text = _codes(pipe, prompt=[PROMPT, "a blue square"], do_sample=False, guidance_scale=2.0)
    from_embeds = _codes(
        pipe, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, do_sample=False, guidance_scale=2.0
    )
    assert torch.equal(from_embeds, from_text)


def test_negative_prompt_steers_the_unconditional_branch(pipe):
    plain = _codes(pipe, do_sample=False, guidance_scale=6.0)
    negative = _codes(pipe, negative_prompt="a blue square", do_sample=False, guidance_scale=6.0)
    assert not torch.equal(negative, plain)
    _, _, negative_embeds, negative_mask = pipe.encode_prompt(
        PROMPT, negative_prompt="a blue square", do_classifier_free_guidance=True
    )
    from_embeds = _codes(
        pipe,
        negative_prompt_embeds=negative_embeds,
        negative_prompt_attention_mask=negative_mask,
        do_sample=False,
        guidance_scale=6.0,
    )
    assert torch.equal(from_embeds, negative)


def test_negative_prompt_without_guidance_changes_nothing(pipe):
    assert torch.equal(_codes(pipe, negative_prompt="a blue square", do_sample=False), _codes(pipe, do_sample=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": None}, "exactly one"),
        ({"prompt_embeds": torch.zeros(1, 3, 64)}, "exactly one"),
        ({"negative_prompt": "x", "negative_prompt_embeds": torch.zeros(1, 3, 64)}, "not both"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 3, 64)}, re.escape("<|image_gen_start|> embedding")),
        ({"negative_prompt": ["x", "y"], "guidance_scale": 2.0}, "2 negative prompts for 1 prompts"),
    ],
)
def test_prompt_input_errors(pipe, kwargs, message):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_latent_output_and_the_latents_callback_name_are_the_features(pipe):
    features = pipe(PROMPT, do_sample=False, output_type="latent").images
    decoded = pipe(PROMPT, do_sample=False, output_type="pt").images
    torch.testing.assert_close(pipe.model.decode_fhat(features), decoded, rtol=0, atol=0)

    def blank_latents(p, step, timestep, callback_kwargs):
        assert callback_kwargs["latents"] is callback_kwargs["f_hat"]
        if step == p.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    blank = pipe(
        PROMPT,
        output_type="latent",
        callback_on_step_end=blank_latents,
        callback_on_step_end_tensor_inputs=["f_hat", "latents"],
    ).images
    assert blank.abs().sum() == 0
