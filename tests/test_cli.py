"""The `vargpt` command: generate / ask / chat on a saved tiny model, in-process (`main`) and as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transformers_vargpt
from transformers_vargpt import cli
from transformers_vargpt.cli import main
from transformers_vargpt.modeling_vargpt import VargptForConditionalGeneration
from transformers_vargpt.pipeline_vargpt import VargptPipeline
from transformers_vargpt.processing_vargpt import VargptProcessor
from transformers_vargpt.shapes_world import QUESTIONS, Scene, render
from transformers_vargpt.tiny_models import build_tiny_vargpt

REPOSITORY = Path(__file__).resolve().parents[1]
PROMPT = "Draw a red circle on a blue background."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A random tiny VARGPT saved with its processor, as a user's model directory."""
    directory = tmp_path_factory.mktemp("tiny-vargpt")
    model, processor = build_tiny_vargpt(seed=0)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pictures") / "triangle.png"
    render(Scene("triangle", "yellow", "purple", box=(12, 14, 47, 49)), 64).save(path)
    return str(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory, to see everything a command writes."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def expected_answer(model_dir: str, image_path: str, question: str, max_new_tokens: int) -> str:
    """The greedy answer computed directly with the model, processor and chat template (not through the CLI)."""
    model = VargptForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = VargptProcessor.from_pretrained(model_dir)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_cli(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m transformers_vargpt.cli ARGS` in `cwd`, offline, with this checkout's package first on the path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "transformers_vargpt.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ---- the entry point -------------------------------------------------------------------------------------------
def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vargpt"] == "transformers_vargpt.cli:main"
    module, _, function = scripts["vargpt"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


# ---- generate --------------------------------------------------------------------------------------------------
def test_generate_writes_only_the_output_file(model_dir, workdir, capsys):
    assert main(["generate", PROMPT, "-o", "out.png", "--model", model_dir, "--seed", "0"]) == 0
    assert sorted(os.listdir(workdir)) == ["out.png"]
    assert capsys.readouterr().out.splitlines() == ["out.png"]
    with Image.open(workdir / "out.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_generate_seed_is_reproducible(model_dir, workdir):
    for name, seed in (("a.png", "0"), ("b.png", "0"), ("c.png", "1")):
        assert main(["generate", PROMPT, "-o", name, "--model", model_dir, "--seed", seed, "--top-k", "0"]) == 0
    first, second = (np.asarray(Image.open(name)) for name in ("a.png", "b.png"))
    assert np.array_equal(first, second)
    assert sorted(os.listdir(workdir)) == ["a.png", "b.png", "c.png"]


def test_generate_several_images_are_numbered_from_the_output_name(model_dir, workdir, capsys):
    os.mkdir("pictures")
    assert main(["generate", PROMPT, "-o", "pictures/out.png", "--model", model_dir, "--num-images", "3"]) == 0
    assert sorted(os.listdir(workdir)) == ["pictures"]
    assert sorted(os.listdir(workdir / "pictures")) == ["out-0.png", "out-1.png", "out-2.png"]
    assert capsys.readouterr().out.split() == [os.path.join("pictures", f"out-{index}.png") for index in range(3)]


def test_generate_passes_only_the_sampling_options_given(model_dir, workdir, monkeypatch):
    """Options left out fall to the model's saved generation config, so the CLI must not pass defaults of its own."""
    calls = []
    original = VargptPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VargptPipeline, "__call__", spy)
    assert main(["generate", PROMPT, "-o", "a.png", "--model", model_dir]) == 0
    given = ["--top-k", "5", "--top-p", "0.5", "--guidance-scale", "2.5", "--temperature", "0.7", "--seed", "3",
             "--negative-prompt", "a dark picture"]
    assert main(["generate", PROMPT, "-o", "b.png", "--model", model_dir, *given]) == 0
    sampling = ("top_k", "top_p", "guidance_scale", "temperature", "do_sample", "negative_prompt")
    assert not any(name in calls[0] for name in sampling) and calls[0]["generator"] is None
    assert {name: calls[1][name] for name in sampling if name != "do_sample"} == {
        "top_k": 5,
        "top_p": 0.5,
        "guidance_scale": 2.5,
        "temperature": 0.7,
        "negative_prompt": "a dark picture",
    }
    assert calls[1]["generator"].initial_seed() == 3


# ---- ask -------------------------------------------------------------------------------------------------------
def test_ask_prints_only_the_answer(model_dir, picture, workdir, capsys):
    question = QUESTIONS["shape"]
    assert main(["ask", picture, question, "--model", model_dir, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out == expected_answer(model_dir, picture, question, max_new_tokens=8) + "\n"
    assert "ASSISTANT" not in out and question not in out
    assert os.listdir(workdir) == []


def test_ask_uses_the_bundled_model_by_default(model_dir, picture, workdir, monkeypatch, capsys):
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", model_dir, raising=False)
    assert main(["ask", picture, QUESTIONS["color"], "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == expected_answer(model_dir, picture, QUESTIONS["color"], max_new_tokens=4) + "\n"


def test_without_a_bundled_model_the_command_asks_for_model(picture, workdir, monkeypatch, capsys):
    monkeypatch.setattr(transformers_vargpt, "BUNDLED_MODEL", None, raising=False)
    assert main(["ask", picture, QUESTIONS["shape"]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err


# ---- chat ------------------------------------------------------------------------------------------------------
def test_chat_keeps_the_conversation_across_turns(model_dir, picture, workdir, monkeypatch, capsys):
    prompts = []
    original = VargptForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        prompts.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VargptForConditionalGeneration, "generate", spy)
    stdin = "What is this?\n\n/image " + picture + "\nAnd the color?\n/reset\nDescribe the picture\n/quit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["chat", "--model", model_dir, "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    replies = out.splitlines()
    assert len(prompts) == 3 and len(replies) == 3  # one streamed reply per message; nothing after /quit

    processor = VargptProcessor.from_pretrained(model_dir)
    texts = [processor.decode(call["input_ids"][0], skip_special_tokens=True) for call in prompts]
    first_reply = replies[0].strip()
    # turn 2 sees turn 1 (question and answer) and the image given with /image; after /reset nothing of it is left
    assert "what is this?" in texts[1] and first_reply in texts[1] and "and the color?" in texts[1]
    assert "pixel_values" not in prompts[0] and prompts[1]["pixel_values"].shape[0] == 1
    assert "what is this?" not in texts[2] and "pixel_values" not in prompts[2]
    # the second prompt is exactly the chat template's rendering of the conversation
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": first_reply}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And the color?"}]},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    expected_ids = processor(images=Image.open(picture), text=rendered, return_tensors="pt")["input_ids"]
    assert torch.equal(prompts[1]["input_ids"].cpu(), expected_ids)
    assert "reset" in err and "Traceback" not in err
    assert os.listdir(workdir) == []


def test_chat_reports_bad_turns_and_goes_on(model_dir, workdir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/image missing.png\n/image\n/unknown\nHi\n"))
    assert main(["chat", "--model", model_dir, "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "missing.png" in errors[0] and "/unknown" in errors[2]
    assert len(out.splitlines()) == 1  # "Hi" was answered


# ---- errors ----------------------------------------------------------------------------------------------------
@pytest.fixture
def corrupt_image(workdir) -> str:
    (workdir / "inputs").mkdir()
    path = workdir / "inputs" / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "missing.png", "What shape?"], "missing.png"),
        (["ask", "CORRUPT", "What shape?"], "corrupt.png"),
        (["ask", "PICTURE", "   "], "question is empty"),
        (["generate", "", "-o", "out.png"], "prompt is empty"),
        (["generate", PROMPT, "-o", "no/such/dir/out.png"], "does not exist"),
        (["generate", PROMPT, "-o", "CORRUPT/out.png"], "does not exist"),
        (["generate", PROMPT, "-o", "inputs"], "is a directory"),
        (["generate", PROMPT, "-o", "out.xyz"], "image format"),
        (["generate", PROMPT, "-o", "out.png", "--device", "tpu:x"], "unknown device"),
        (["generate", PROMPT, "-o", "out.png", "--negative-prompt", " "], "negative prompt is empty"),
        (["generate", PROMPT, "-o", "out.png", "--negative-prompt", "dark", "--guidance-scale", "1"],
         "needs --guidance-scale above 1"),
        (["chat", "--image", "missing.png"], "missing.png"),
    ],
)
def test_bad_input_gets_one_line_and_a_non_zero_exit(args, message, model_dir, picture, corrupt_image, capsys):
    before = sorted(os.listdir("."))
    args = [arg.replace("CORRUPT", corrupt_image).replace("PICTURE", picture) for arg in args]
    assert main([*args, "--model", model_dir]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("vargpt: error: ") and message in err
    assert "Traceback" not in err
    assert sorted(os.listdir(".")) == before


@pytest.mark.parametrize("model", ["does/not/exist", "./missing-model", "not-a-cached-model"])
def test_a_model_that_is_not_there_gets_one_line(model, workdir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "is_offline_mode", lambda: True)
    assert main(["generate", PROMPT, "-o", "out.png", "--model", model]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(model) in err and os.listdir(workdir) == []


def test_a_directory_without_a_model_gets_one_line(workdir, capsys):
    (workdir / "empty").mkdir()
    assert main(["generate", PROMPT, "-o", "out.png", "--model", "empty"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the model 'empty'" in err


@pytest.mark.parametrize(
    "args",
    [
        ["generate", PROMPT, "-o", "out.png", "--top-p", "1.5"],
        ["generate", PROMPT, "-o", "out.png", "--top-k", "-1"],
        ["generate", PROMPT, "-o", "out.png", "--num-images", "0"],
        ["generate", PROMPT, "-o", "out.png", "--guidance-scale", "nan"],
        ["generate", PROMPT, "-o", "out.png", "--temperature", "0"],
        ["generate", PROMPT, "-o", "out.png", "--dtype", "int8"],
        ["generate", PROMPT],
        ["ask", "image.png"],
        ["draw", PROMPT],
    ],
)
def test_unknown_option_values_are_argparse_errors(args, workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err and os.listdir(workdir) == []


# ---- device and dtype ------------------------------------------------------------------------------------------
def test_auto_dtype_is_bfloat16_on_cuda_and_float32_elsewhere():
    assert cli.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert cli.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert cli.resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_dtype_and_device_reach_the_model(model_dir):
    args = Namespace(model=model_dir, device="cpu", dtype="bfloat16")
    pipe = cli.load_pipeline(args)
    assert pipe.model.dtype == torch.bfloat16 and pipe.model.device.type == "cpu"


# ---- the real command line -------------------------------------------------------------------------------------
def test_subprocess_generate(model_dir, tmp_path):
    result = run_cli(["generate", PROMPT, "-o", "drawn.png", "--model", model_dir, "--seed", "0"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["drawn.png"] and result.stdout.split() == ["drawn.png"]


def test_subprocess_ask(model_dir, picture, tmp_path):
    question = QUESTIONS["background"]
    result = run_cli(["ask", picture, question, "--model", model_dir, "--max-new-tokens", "5"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(model_dir, picture, question, max_new_tokens=5) + "\n"
    assert os.listdir(tmp_path) == []


def test_subprocess_chat_from_a_pipe(model_dir, picture, tmp_path):
    result = run_cli(
        ["chat", "--model", model_dir, "--image", picture, "--max-new-tokens", "4"],
        tmp_path,
        stdin="What shape is in the image?\nWhat color is it?\n",  # ends without /quit: end of input leaves
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and "you>" not in result.stdout
    assert os.listdir(tmp_path) == []



# ---- --adapter ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> str:
    """LoRA adapters on the tiny model's language model and VAR decoder, with random (non-zero) B matrices so that
    they change both answers and pictures."""
    peft = pytest.importorskip("peft")
    from transformers_vargpt.training import lora_config_for_stage

    directory = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    base = VargptForConditionalGeneration.from_pretrained(model_dir)
    config = lora_config_for_stage(2, r=4, init_lora_weights=False, modules_to_save=[],
                                   target_modules=r".*(language_model.*(q_proj|v_proj)|scale_decoder.*attn\.qkv)")
    peft.get_peft_model(base, config).save_pretrained(directory)
    return str(directory)


def test_adapter_changes_pictures_and_answers_like_a_merged_model(model_dir, adapter_dir, picture, workdir, capsys):
    from peft import PeftModel

    common = ["--model", model_dir, "--seed", "0", "--top-k", "0"]
    assert main(["generate", PROMPT, "-o", "base.png", *common]) == 0
    assert main(["generate", PROMPT, "-o", "adapted.png", *common, "--adapter", adapter_dir]) == 0
    base, adapted = (np.asarray(Image.open(name)) for name in ("base.png", "adapted.png"))
    assert not np.array_equal(base, adapted)

    # the same picture as PeftModel.from_pretrained + merge_and_unload by hand, in the pipeline
    merged = PeftModel.from_pretrained(VargptForConditionalGeneration.from_pretrained(model_dir), adapter_dir)
    pipe = VargptPipeline(model=merged.merge_and_unload().eval(), processor=VargptProcessor.from_pretrained(model_dir))
    by_hand = pipe(PROMPT, generator=torch.Generator().manual_seed(0), top_k=0, output_type="np").images[0]
    np.testing.assert_allclose(adapted.astype(np.float64), np.round(by_hand * 255), atol=1)

    capsys.readouterr()
    assert main(["ask", picture, "What shape is in the image?", "--model", model_dir, "--adapter", adapter_dir,
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_a_directory_without_adapters_gets_one_line(model_dir, workdir, capsys):
    (workdir / "no-adapter").mkdir()
    assert main(["generate", PROMPT, "-o", "out.png", "--model", model_dir, "--adapter", "no-adapter"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no adapter_config.json" in err and os.listdir(workdir) == ["no-adapter"]
