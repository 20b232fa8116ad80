"""Pipelines: VargptPipeline (diffusers), transformers' stock image-text-to-text, and vargpt-image-to-text."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, ImageTextToTextPipeline, pipeline

import transformers_vargpt  # noqa: F401  (registers the model, the processor and the vargpt-image-to-text task)
from transformers_vargpt import VargptPipeline, VargptProcessor
from transformers_vargpt.pipelines_transformers import IMAGE_TO_TEXT_TASK, VargptImageToTextPipeline, register_pipelines
from transformers_vargpt.tiny_models import build_tiny_vargpt

TINY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vargpt-original-tiny"
QUESTION = "What color is the shape in this picture?"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((TINY / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(TINY / "golden.safetensors"))


@pytest.fixture(scope="module")
def t2i_description(golden) -> str:
    """The plain description whose text-to-image prompt is the fixture's `t2i_prompt`."""
    return golden["t2i_prompt"].removeprefix("USER: ").removesuffix(" ASSISTANT:")


@pytest.fixture(scope="module")
def released_pipe(golden) -> VargptPipeline:
    """VargptPipeline built from the released-layout fixture directory, with the VAR/VQVAE sizes as overrides."""
    pipe = VargptPipeline.from_pretrained(TINY, **golden["reference_hparams"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def und_image() -> PIL.Image.Image:
    with PIL.Image.open(TINY / "und_image.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def released_model(golden):
    return AutoModelForImageTextToText.from_pretrained(TINY, **golden["reference_hparams"]).eval()


def fixture_processor() -> VargptProcessor:
    return VargptProcessor.from_pretrained(TINY, patch_nums=[1, 2, 3, 4], image_gen_size=64)


# ---- VargptPipeline: text-to-image --------------------------------------------------------------------------------
def test_single_model_directory_loads_with_overrides(released_pipe):
    assert isinstance(released_pipe.model, transformers_vargpt.VargptForConditionalGeneration)
    assert isinstance(released_pipe.processor, VargptProcessor)
    assert released_pipe.model.config.var_embed_dim == 128
    assert released_pipe.processor.patch_nums == [1, 2, 3, 4] and released_pipe.processor.image_gen_size == 64
    assert released_pipe.num_scales == 4


def test_greedy_reproduces_released_text_to_image(released_pipe, golden, golden_tensors, t2i_description):
    rendered = released_pipe.processor.build_text_to_image_prompt(t2i_description)
    assert rendered == golden["t2i_prompt"] + "<|image_gen_start|>"
    out = released_pipe(t2i_description, do_sample=False, guidance_scale=1.0, output_type="pt")
    assert isinstance(out, ImagePipelineOutput)
    assert torch.equal(out.image_tokens, golden_tensors["t2i_indices"].view_as(out.image_tokens))
    # the fixture's t2i_image was de-normalised twice by the harness that wrote it: golden = 0.5 + 0.5 * image
    torch.testing.assert_close(0.5 + 0.5 * out.images, golden_tensors["t2i_image"], atol=3e-4, rtol=0)


def test_output_types(released_pipe, t2i_description):
    pil = released_pipe([t2i_description, "a red circle"], do_sample=False, output_type="pil").images
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(image, PIL.Image.Image) and image.size == (64, 64) and image.mode == "RGB" for image in pil)

    array = released_pipe([t2i_description, "a red circle"], do_sample=False, output_type="np").images
    assert isinstance(array, np.ndarray) and array.shape == (2, 64, 64, 3) and array.dtype == np.float32
    assert array.min() >= 0 and array.max() <= 1

    tensor = released_pipe([t2i_description, "a red circle"], do_sample=False, output_type="pt").images
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 3, 64, 64) and tensor.is_floating_point()
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), array, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))

    as_tuple = released_pipe(t2i_description, do_sample=False, output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and as_tuple[0].shape == (1, 3, 64, 64)


def test_num_images_per_prompt_and_seeds(released_pipe, t2i_description):
    def draw(seed, prompts=t2i_description, n=1):
        generator = torch.Generator().manual_seed(seed)
        return released_pipe(prompts, num_images_per_prompt=n, generator=generator, output_type="pt")

    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first.images, again.images) and torch.equal(first.image_tokens, again.image_tokens)
    assert not torch.equal(first.image_tokens, other.image_tokens)
    several = draw(0, [t2i_description, "a red circle"], n=3)
    assert several.images.shape == (6, 3, 64, 64) and several.image_tokens.shape == (6, 30)


def test_guidance_changes_the_drawing(released_pipe, t2i_description):
    plain = released_pipe(t2i_description, do_sample=False, output_type="pt")
    guided = released_pipe(t2i_description, do_sample=False, guidance_scale=4.0, output_type="pt")
    assert released_pipe.guidance_scale == 4.0
    assert guided.images.shape == plain.images.shape
    assert not torch.equal(guided.image_tokens, plain.image_tokens)


def test_pipeline_defaults_come_from_the_generation_config(golden, t2i_description):
    pipe = VargptPipeline.from_pretrained(TINY, **golden["reference_hparams"])
    pipe.set_progress_bar_config(disable=True)
    greedy_guided = pipe(t2i_description, do_sample=False, guidance_scale=2.0, output_type="pt")
    pipe.model.generation_config.image_generation = {"do_sample": False, "guidance_scale": 2.0}
    from_config = pipe(t2i_description, output_type="pt")
    assert pipe.guidance_scale == 2.0
    assert torch.equal(from_config.image_tokens, greedy_guided.image_tokens)
    unguided = pipe(t2i_description, guidance_scale=1.0, output_type="pt")
    assert not torch.equal(unguided.image_tokens, from_config.image_tokens)
    assert pipe.guidance_scale == 1.0


def test_pipeline_guidance_reads_the_default_negative_prompt(golden, t2i_description):
    """A model whose generation config names a negative prompt: the pipeline draws as if it were given."""
    pipe = VargptPipeline.from_pretrained(TINY, **golden["reference_hparams"])
    pipe.set_progress_bar_config(disable=True)
    negative = "a blurry picture"
    explicit = pipe(t2i_description, negative_prompt=negative, do_sample=False, guidance_scale=2.0, output_type="pt")
    same_prompt = pipe(t2i_description, do_sample=False, guidance_scale=2.0, output_type="pt")
    ids = pipe.processor(text=negative, generation_mode="image")["input_ids"][0]
    pipe.model.generation_config.image_generation = {"negative_prompt_ids": [int(i) for i in ids]}
    default = pipe(t2i_description, do_sample=False, guidance_scale=2.0, output_type="pt")
    assert torch.equal(default.image_tokens, explicit.image_tokens)
    assert not torch.equal(default.image_tokens, same_prompt.image_tokens)
    other = pipe(t2i_description, negative_prompt="a dark picture", do_sample=False, guidance_scale=2.0,
                 output_type="pt")
    assert not torch.equal(other.image_tokens, default.image_tokens)  # an explicit negative prompt wins


def test_progress_bar_advances_once_per_scale(released_pipe, t2i_description):
    stream = io.StringIO()
    released_pipe.set_progress_bar_config(file=stream, mininterval=0, disable=False)
    try:
        released_pipe(t2i_description, do_sample=False)
    finally:
        released_pipe.set_progress_bar_config(disable=True)
    assert "4/4" in stream.getvalue() and "5/4" not in stream.getvalue()

    silent = io.StringIO()
    released_pipe.set_progress_bar_config(file=silent, disable=True)
    released_pipe(t2i_description, do_sample=False)
    assert silent.getvalue() == ""


def test_callback_on_step_end_sees_every_scale(released_pipe, t2i_description):
    seen, partial_images = [], {}

    def callback(pipe, step, timestep, callback_kwargs):
        seen.append((step, timestep, sorted(callback_kwargs)))
        assert pipe is released_pipe
        image = partial_images[step] = callback_kwargs["image"]
        assert image.shape == (2, 3, 64, 64) and image.min() >= 0 and image.max() <= 1
        assert callback_kwargs["f_hat"].shape == (2, 8, 4, 4)
        assert callback_kwargs["image_tokens"].shape == (2, sum(s * s for s in (1, 2, 3, 4)[: step + 1]))
        return callback_kwargs

    out = released_pipe(
        t2i_description,
        num_images_per_prompt=2,
        do_sample=False,
        output_type="pt",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["f_hat", "image_tokens", "image"],
    )
    assert seen == [(i, i, ["f_hat", "image", "image_tokens"]) for i in range(4)]
    # the partial image after the last scale is the final image
    torch.testing.assert_close(partial_images[3], out.images, atol=0, rtol=0)


def test_callback_may_replace_f_hat(released_pipe, t2i_description):
    def erase_last_scale(pipe, step, timestep, callback_kwargs):
        if step == pipe.num_scales - 1:
            callback_kwargs["f_hat"] = torch.zeros_like(callback_kwargs["f_hat"])
        return callback_kwargs

    out = released_pipe(t2i_description, do_sample=False, output_type="pt", callback_on_step_end=erase_last_scale)
    blank = released_pipe.model.vqvae.decode_fhat(torch.zeros(1, 8, 4, 4)).add(1).mul(0.5)
    torch.testing.assert_close(out.images, blank, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": ""}, ValueError, "empty"),
        ({"prompt": ["a cat", "   "]}, ValueError, "empty"),
        ({"prompt": []}, ValueError, "empty"),
        ({"prompt": 3}, TypeError, "prompt must be a string"),
        ({"prompt": "a cat", "num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ({"prompt": "a cat", "output_type": "latents"}, ValueError, "output_type"),
        ({"prompt": "a cat", "callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "tensor_inputs"),
        ({"prompt": "a cat", "generator": 0}, TypeError, "generator"),
        ({"prompt": "a cat " * 600}, ValueError, "max_position_embeddings"),
    ],
)
def test_clear_errors(released_pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        released_pipe(**kwargs)


def test_pipeline_save_and_load_round_trip(released_pipe, t2i_description, tmp_path):
    released_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VargptPipeline"
    assert index["model"][1] == "VargptForConditionalGeneration" and index["processor"][1] == "VargptProcessor"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "processor" / "tokenizer.json").is_file()

    loaded = VargptPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.processor.patch_nums == [1, 2, 3, 4]
    a = released_pipe(t2i_description, generator=torch.Generator().manual_seed(3), output_type="pt")
    b = loaded(t2i_description, generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.equal(a.image_tokens, b.image_tokens) and torch.equal(a.images, b.images)


def test_single_model_directory_in_our_layout(tmp_path):
    model, processor = build_tiny_vargpt(seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = VargptPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    direct = model.generate_images(
        **processor(text="a red circle", generation_mode="image", return_tensors="pt"),
        generator=torch.Generator().manual_seed(0),
    )
    out = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(out.image_tokens, direct.image_tokens)


# ---- transformers pipelines: stock image-text-to-text, and vargpt-image-to-text ----------------------------------
def golden_answer(golden_tensors, processor) -> str:
    """The released code's greedy answer to the fixture's understanding prompt (8 new tokens), decoded."""
    new_ids = golden_tensors["und_generate_ids"][0, golden_tensors["und_input_ids"].shape[1] :]
    return processor.decode(new_ids, skip_special_tokens=True)


def question_chat(image, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_stock_image_text_to_text_gives_the_released_greedy_answer(released_model, golden, golden_tensors, und_image):
    """transformers' own pipeline, unchanged, on the released-layout directory and on a model object."""
    from_directory = pipeline("image-text-to-text", model=str(TINY), model_kwargs=golden["reference_hparams"])
    from_objects = pipeline("image-text-to-text", model=released_model, processor=fixture_processor())
    for pipe in (from_directory, from_objects):
        assert type(pipe) is ImageTextToTextPipeline
        assert pipe.tokenizer.padding_side == "left"  # the processor's tokenizer pads where generation continues
        out = pipe(text=question_chat(und_image), max_new_tokens=8, return_full_text=False)
        assert out[0]["generated_text"] == golden_answer(golden_tensors, pipe.processor)


def test_image_text_to_text_plain_prompts_batches_and_directory(golden, und_image):
    pipe = pipeline("image-text-to-text", model=str(TINY), model_kwargs=golden["reference_hparams"])
    assert pipe.processor.patch_nums == [1, 2, 3, 4]  # model_kwargs reach the processor too
    prompts = [golden["und_prompt"], "USER: <image>\nWhat is it? ASSISTANT:"]
    images = [und_image, und_image.rotate(90)]
    singles = [pipe(images=i, text=t, max_new_tokens=4)[0]["generated_text"] for i, t in zip(images, prompts)]
    together = [record["generated_text"] for record in pipe(images=images, text=prompts, max_new_tokens=4)]
    assert together == singles
    assert all(text.startswith(prompt) for text, prompt in zip(singles, prompts))

    chats = [question_chat(image) for image in images]
    one_by_one = [pipe(text=chat, max_new_tokens=4)[0]["generated_text"][-1] for chat in chats]
    # batch_size=2 collates the two chats with the tokenizer's padding side: left, as the processor sets it
    batched = [result[0]["generated_text"][-1] for result in pipe(text=chats, max_new_tokens=4, batch_size=2)]
    assert batched == one_by_one
    assert all(message["role"] == "assistant" for message in batched)

    text_only = pipe(text="USER: Please draw a red circle. ASSISTANT:", max_new_tokens=3, return_full_text=False)
    assert isinstance(text_only[0]["generated_text"], str)


def test_stock_pipeline_serves_a_saved_directory(released_model, golden_tensors, und_image, tmp_path):
    """A directory saved by this package answers through the stock pipeline as `model.generate` does (greedy),
    one by one and in a padded batch (which a right-padding tokenizer gets wrong for the second question)."""
    processor = fixture_processor()
    released_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["padding_side"] == "left"

    pipe = pipeline("image-text-to-text", model=str(tmp_path))
    assert type(pipe) is ImageTextToTextPipeline
    questions = [(und_image, QUESTION), (und_image.rotate(90), "What is it?")]  # prompts of different lengths
    expected = []
    for image, question in questions:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        ids = released_model.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected.append(processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    assert expected[0] == golden_answer(golden_tensors, processor)

    chats = [question_chat(image, question) for image, question in questions]
    one_by_one = [pipe(text=chat, max_new_tokens=8, return_full_text=False)[0]["generated_text"] for chat in chats]
    batched = pipe(text=chats, max_new_tokens=8, return_full_text=False, batch_size=2)
    assert one_by_one == expected
    assert [result[0]["generated_text"] for result in batched] == expected


def test_image_to_text_is_transformers_image_text_to_text(golden, golden_tensors, tmp_path):
    """What `pipeline("image-to-text")` does on transformers 5 (as the README says): transformers logs that the task
    was replaced and builds its own `image-text-to-text` pipeline, which needs text with the image. Run in a fresh
    interpreter, as a user would: transformers 5.24 logs that line with a stray argument, which pytest's log capture
    turns into an exception while a plain interpreter prints it."""
    script = textwrap.dedent(
        f"""
        import json
        import PIL.Image
        import transformers_vargpt
        from transformers import ImageTextToTextPipeline, pipeline

        pipe = pipeline("image-to-text", model={str(TINY)!r}, model_kwargs={golden["reference_hparams"]!r})
        image = PIL.Image.open({str(TINY / "und_image.png")!r}).convert("RGB")
        try:
            pipe(image)
            error = None
        except ValueError as caught:
            error = str(caught)
        content = [{{"type": "image", "image": image}}, {{"type": "text", "text": {QUESTION!r}}}]
        chat = [{{"role": "user", "content": content}}]
        answer = pipe(text=chat, max_new_tokens=8, return_full_text=False)[0]["generated_text"]
        print(json.dumps({{"stock": type(pipe) is ImageTextToTextPipeline, "error": error, "answer": answer}}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stock"] is True
    assert report["error"] == "You must provide text for this pipeline."
    assert report["answer"] == golden_answer(golden_tensors, fixture_processor())
    assert "The task `image-to-text` has been removed and has been replaced by `image-text-to-text`" in result.stderr


def test_vargpt_image_to_text_like_transformers_4(golden, golden_tensors, und_image):
    captioner = pipeline(IMAGE_TO_TEXT_TASK, model=str(TINY), model_kwargs=golden["reference_hparams"])
    assert type(captioner) is VargptImageToTextPipeline

    # a question, rendered with the chat template: the released prompt, the released greedy answer
    answer = captioner(und_image, prompt=QUESTION, generate_kwargs={"max_new_tokens": 8})
    assert answer == [{"generated_text": golden_answer(golden_tensors, captioner.processor)}]
    # a prompt that places <image> itself is used as it is
    assert captioner(und_image, prompt=golden["und_prompt"], max_new_tokens=8) == answer
    full = captioner(und_image, prompt=golden["und_prompt"], max_new_tokens=8, return_full_text=True)
    assert full[0]["generated_text"] == golden["und_prompt"] + answer[0]["generated_text"]

    # no prompt: the user turn holds only the image
    caption = captioner(str(TINY / "und_image.png"), max_new_tokens=3)
    assert isinstance(caption, list) and list(caption[0]) == ["generated_text"]

    # a list of images: one list of results per image, batched or not
    images = [und_image, und_image.rotate(90)]
    results = captioner(images, prompt=QUESTION, max_new_tokens=5)
    assert results == captioner(images, prompt=QUESTION, max_new_tokens=5, batch_size=2)
    assert len(results) == 2 and all(len(result) == 1 for result in results)
    assert results[0] == captioner(images[0], prompt=QUESTION, max_new_tokens=5)
    per_image = captioner(images, prompt=[QUESTION, "What is it?"], max_new_tokens=5)
    assert per_image[0] == results[0]

    with pytest.raises(ValueError, match="prompts for 2 images"):
        captioner(images, prompt=[QUESTION], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt"):
        captioner(images=und_image, text=golden["und_prompt"], prompt=QUESTION)


def test_vargpt_image_to_text_with_model_object():
    model, processor = build_tiny_vargpt(seed=0)
    captioner = pipeline(IMAGE_TO_TEXT_TASK, model=model, processor=processor)
    image = PIL.Image.new("RGB", (40, 30), "red")
    out = captioner(image, prompt="what color is this ?", max_new_tokens=4)
    assert isinstance(out, list) and isinstance(out[0]["generated_text"], str)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is this ?"}]}]
    inputs = processor(
        images=image, text=processor.apply_chat_template(conversation, add_generation_prompt=True), return_tensors="pt"
    )
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = expected[0, inputs["input_ids"].shape[1] :]
    assert out[0]["generated_text"] == processor.decode(new_tokens, skip_special_tokens=True)


def test_registration_adds_only_vargpt_task():
    from transformers.pipelines import PIPELINE_REGISTRY

    assert PIPELINE_REGISTRY.check_task(IMAGE_TO_TEXT_TASK)[1]["impl"] is VargptImageToTextPipeline
    # transformers 5.24 names its classes lazily, by import path
    stock = PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"]
    assert stock in (ImageTextToTextPipeline, "transformers.pipelines.image_text_to_text.ImageTextToTextPipeline")
    assert "image-to-text" not in PIPELINE_REGISTRY.supported_tasks
    entry = PIPELINE_REGISTRY.supported_tasks[IMAGE_TO_TEXT_TASK]
    register_pipelines()  # idempotent: the entry is not replaced
    assert PIPELINE_REGISTRY.supported_tasks[IMAGE_TO_TEXT_TASK] is entry


# Runs in a fresh interpreter: builds a tiny LLaVA, records what transformers' pipelines are for it, imports
# transformers_vargpt, records again and prints the differences.
IMPORT_LEAVES_OTHERS_SCRIPT = textwrap.dedent(
    """
    import json, logging

    import PIL.Image
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    import transformers
    import transformers.pipelines
    from transformers import (
        CLIPImageProcessorPil, CLIPVisionConfig, ImageTextToTextPipeline, LlamaConfig, LlavaConfig,
        LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast, pipeline,
    )
    from transformers.pipelines import PIPELINE_REGISTRY

    words = "<unk> <s> </s> <pad> <image> user assistant : what is this ? a red blue shape".split()
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant :"
        "{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(words),
            pad_token_id=3,
        ),
        image_token_index=4, image_seq_length=4,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    chat = [{"role": "user", "content": [{"type": "image", "image": PIL.Image.new("RGB", (16, 16), "red")},
                                         {"type": "text", "text": "what is this ?"}]}]


    def transformers_loggers():
        return {
            name: (list(logger.filters), list(logger.handlers))
            for name, logger in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
            if isinstance(logger, logging.Logger) and (name == "" or name.split(".")[0] == "transformers")
        }


    def snapshot():
        pipe = pipeline("image-text-to-text", model=model, processor=processor)
        return {
            "tasks": {
                name: (entry["impl"], entry["pt"], repr(entry.get("default")), entry.get("type"))
                for name, entry in PIPELINE_REGISTRY.supported_tasks.items()
            },
            "aliases": dict(PIPELINE_REGISTRY.task_aliases),
            "loggers": transformers_loggers(),
            "pipelines_module": dict(vars(transformers.pipelines)),
            "pipeline_class": dict(vars(ImageTextToTextPipeline)),
            "llava_pipeline": type(pipe),
            "llava_image_to_text": type(pipeline("image-to-text", model=model, processor=processor)),
            "llava_answer": pipe(text=chat, max_new_tokens=3, return_full_text=False)[0]["generated_text"],
            "padding_side": processor.tokenizer.padding_side,
        }


    before = snapshot()
    import transformers_vargpt  # noqa: F401
    after = snapshot()

    def changed(old, new):
        return sorted(key for key in old if key not in new or new[key] is not old[key] and new[key] != old[key])

    report = {
        "new_tasks": sorted(set(after["tasks"]) - set(before["tasks"])),
        "changed_tasks": [name for name in before["tasks"] if after["tasks"].get(name) != before["tasks"][name]],
        "changed_aliases": before["aliases"] != after["aliases"],
        "changed_loggers": changed(before["loggers"], after["loggers"]),
        "new_logger_filters": [
            name for name, (filters, _) in after["loggers"].items() if name not in before["loggers"] and filters
        ],
        "changed_pipelines_module": changed(before["pipelines_module"], after["pipelines_module"]),
        "changed_pipeline_class": changed(before["pipeline_class"], after["pipeline_class"])
        + sorted(set(after["pipeline_class"]) - set(before["pipeline_class"])),
        "llava_pipeline": [before["llava_pipeline"].__name__, after["llava_pipeline"].__name__],
        "llava_pipeline_same_class": after["llava_pipeline"] is before["llava_pipeline"] is ImageTextToTextPipeline,
        "llava_image_to_text_same_class": after["llava_image_to_text"] is before["llava_image_to_text"],
        "llava_answers": [before["llava_answer"], after["llava_answer"]],
        "padding_side": [before["padding_side"], after["padding_side"]],
    }
    print(json.dumps(report))
    """
)


def test_import_leaves_other_models_pipelines_unchanged(tmp_path):
    """Importing the package adds its own task and nothing else: a LLaVA's pipeline class, the registry's existing
    entries, transformers' loggers and the pipeline module are the same objects before and after the import."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_LEAVES_OTHERS_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["new_tasks"] == [IMAGE_TO_TEXT_TASK]
    assert report["changed_tasks"] == [] and report["changed_aliases"] is False
    assert report["changed_loggers"] == [] and report["new_logger_filters"] == []
    assert report["changed_pipelines_module"] == [] and report["changed_pipeline_class"] == []
    assert report["llava_pipeline"] == ["ImageTextToTextPipeline", "ImageTextToTextPipeline"]
    assert report["llava_pipeline_same_class"] and report["llava_image_to_text_same_class"]
    assert report["llava_answers"][0] == report["llava_answers"][1]
    assert report["padding_side"][0] == report["padding_side"][1]
