"""Training refuses what would train nothing or lose work: misplaced LoRA targets, stages without data, unreadable
or escaping images, broken checkpoints, wrong launches; and what a new user meets (config keys, cards, warnings)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("datasets")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from PIL import Image  # noqa: E402

from transformers_vargpt.tiny_models import build_tiny_vargpt  # noqa: E402
from transformers_vargpt.training import (  # noqa: E402
    VargptDataCollator,
    VargptSFTConfig,
    freeze_for_stage,
    load_vargpt_dataset,
    lora_config_for_stage,
)
from transformers_vargpt.training.checkpoints import checkpoint_problems  # noqa: E402
from transformers_vargpt.training.cli import train_main  # noqa: E402
from transformers_vargpt.training.synthetic import draw_shape, write_shapes_dataset  # noqa: E402
from transformers_vargpt.training.trainer import check_launched_world_size, requested_num_processes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-errors")
    model, processor = build_tiny_vargpt(seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    write_shapes_dataset(root / "data", num_examples=4, kinds=("generation", "understanding", "generation", "text"))
    write_shapes_dataset(root / "understanding", num_examples=4, kinds=("understanding", "text"))
    return root


def _argv(workdir: Path, output: Path, *extra: str, data: str = "data", stage: str = "3") -> list[str]:
    return ["--stage", stage, "--model", str(workdir / "model"), "--data", str(workdir / data / "train.jsonl"),
            "--image-root", str(workdir / data), "--output", str(output), "--per_device_train_batch_size", "2",
            "--report_to", "none", "--disable_tqdm", "true", *extra]  # fmt: skip


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _draw_row(image: str) -> dict:
    return {"messages": [{"role": "user", "content": "please draw a red circle ."},
                         {"role": "assistant", "content": "here .<image_gen>"}], "images": [image]}  # fmt: skip


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---- training that trains nothing -----------------------------------------------------------------------------------
def test_lora_targets_outside_the_stage_are_refused_by_name():
    from peft import get_peft_model

    model, _ = build_tiny_vargpt(seed=0)
    # stage 3 trains VAR; adapters on the LLM's q_proj as well would be saved untrained
    config = lora_config_for_stage(3, r=4, target_modules=["attn.qkv", "q_proj"])
    peft_model = get_peft_model(model, config)
    outside = r"outside what stage 3 trains.*model\.language_model\.layers\.0\.self_attn\.q_proj"
    with pytest.raises(ValueError, match=outside):
        freeze_for_stage(peft_model, 3)


def test_cli_refuses_lora_targets_outside_the_stage_before_training(workdir, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"q_proj"):
        train_main(_argv(workdir, output, "--lora", "--lora_target_modules", "attn.qkv", "q_proj", "--max_steps", "1"))
    assert not output.exists() or not any(output.glob("**/adapter_model.safetensors"))


@pytest.mark.parametrize("stage", ["1", "3"])
def test_generation_stage_without_generation_samples_is_refused(workdir, tmp_path, stage):
    with pytest.raises(ValueError, match=rf"stage {stage} trains only the image-generation modules.*none of the 4"):
        train_main(_argv(workdir, tmp_path / "out", "--max_steps", "1", data="understanding", stage=stage))


# ---- data ------------------------------------------------------------------------------------------------------------
def test_messages_as_a_string_is_a_clear_error(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"messages": "USER: hi ASSISTANT: hello", "images": []}])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: 'messages' must be a list of turns.*got str"):
        load_vargpt_dataset(path)
    path = _write_jsonl(tmp_path / "turns.jsonl", [{"messages": ["hi", "hello"]}])
    with pytest.raises(ValueError, match=r"turns\.jsonl:1: turn 0 of 'messages' must be a dict"):
        load_vargpt_dataset(path)


def test_missing_and_truncated_images_are_found_at_load_with_their_line(tmp_path):
    draw_shape("circle", "red").save(tmp_path / "good.png")
    draw_shape("square", "blue", size=256).save(tmp_path / "broken.png")
    _truncate(tmp_path / "broken.png")
    path = _write_jsonl(tmp_path / "train.jsonl", [_draw_row("good.png"), _draw_row("missing.png"),
                                                   _draw_row("good.png"), _draw_row("broken.png")])  # fmt: skip
    with pytest.raises(ValueError) as error:
        load_vargpt_dataset(path, image_root=tmp_path)
    message = str(error.value)
    assert "2 training example(s)" in message
    assert re.search(r"train\.jsonl:2: image file '.*missing\.png' does not exist", message)
    assert re.search(r"train\.jsonl:4: image '.*broken\.png' cannot be read", message)
    dataset = load_vargpt_dataset(path, image_root=tmp_path, skip_bad_images=True)
    assert len(dataset) == 2 and all(images[0].endswith("good.png") for images in dataset["images"])


def test_cli_skips_bad_images_and_says_how_many(workdir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(workdir / "data", data)
    (data / "images" / "0002.png").unlink()
    argv = ["--stage", "3", "--model", str(workdir / "model"), "--data", str(data / "train.jsonl"), "--image-root",
            str(data), "--output", str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none",
            "--save_strategy", "no"]  # fmt: skip
    with pytest.raises(ValueError, match=r"train\.jsonl:3: image file .*0002\.png' does not exist"):
        train_main(argv)
    with caplog.at_level("WARNING"):
        train_main(argv + ["--skip_bad_images"])
    assert "skipped 1 of 4 training example(s)" in caplog.text


def test_lazily_opened_truncated_pil_image_is_named(tmp_path):
    draw_shape("square", "blue", size=256).save(tmp_path / "lazy.png")
    _truncate(tmp_path / "lazy.png")
    row = _draw_row("placeholder")
    row["images"] = [Image.open(tmp_path / "lazy.png")]  # opened lazily: the pixels are read later
    with pytest.raises(ValueError, match=r"example 0: image '.*lazy\.png' cannot be read"):
        load_vargpt_dataset([row])
    _, processor = build_tiny_vargpt(seed=0)
    row["images"] = [Image.open(tmp_path / "lazy.png")]
    with pytest.raises(ValueError, match=r"training image '.*lazy\.png' cannot be read"):
        VargptDataCollator(processor)([row])


@pytest.mark.parametrize("escape", ["../outside.png", "ABSOLUTE"])
def test_image_paths_outside_the_root_are_refused_unless_allowed(tmp_path, escape):
    root = tmp_path / "root"
    root.mkdir()
    draw_shape("circle", "red").save(tmp_path / "outside.png")
    image = str(tmp_path / "outside.png") if escape == "ABSOLUTE" else escape
    path = _write_jsonl(root / "train.jsonl", [_draw_row(image)])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: image .* is outside image_root"):
        load_vargpt_dataset(path, image_root=root)
    dataset = load_vargpt_dataset(path, image_root=root, allow_images_outside_root=True)
    assert dataset["images"][0] == [str(tmp_path / "outside.png")]
    inside = _write_jsonl(root / "inside.jsonl", [_draw_row(str(tmp_path / "outside.png"))])
    shutil.copy(tmp_path / "outside.png", root / "in.png")
    _write_jsonl(inside, [_draw_row(str(root / "in.png"))])  # an absolute path under the root is fine
    assert load_vargpt_dataset(inside, image_root=root)["images"][0] == [str(root / "in.png")]


# ---- resuming --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(workdir, tmp_path_factory):
    """A run with checkpoints at steps 2 and 4 (full fine-tune, stage 3)."""
    output = tmp_path_factory.mktemp("resume") / "run"
    train_main(_argv(workdir, output, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                     "--learning_rate", "1e-3", "--logging_steps", "1"))  # fmt: skip
    return output


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"]
)
def test_resume_names_the_truncated_file_and_last_falls_back(checkpoints, workdir, tmp_path, name, caplog):
    output = tmp_path / "run"
    shutil.copytree(checkpoints, output)
    assert checkpoint_problems(output / "checkpoint-4") == []
    _truncate(output / "checkpoint-4" / name)
    problems = checkpoint_problems(output / "checkpoint-4")
    assert len(problems) == 1 and problems[0].startswith(str(output / "checkpoint-4" / name))

    argv = _argv(workdir, output, "--max_steps", "5", "--save_strategy", "no", "--learning_rate", "1e-3")
    with pytest.raises(ValueError, match=rf"cannot resume from .*checkpoint-4.*\n  .*checkpoint-4/{re.escape(name)}"):
        train_main(argv + ["--resume_from_checkpoint", str(output / "checkpoint-4")])
    with caplog.at_level("WARNING"):
        train_main(argv + ["--resume_from_checkpoint", "last"])
    fallback = rf"resuming from .*checkpoint-2, the newest intact checkpoint.*checkpoint-4: .*{name}"
    assert re.search(fallback, caplog.text)
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    # steps 1-2 from checkpoint-2's history, 3-5 trained again after it: none lost, none repeated
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5]


# ---- what a new user meets -------------------------------------------------------------------------------------------
def test_yaml_accepts_the_option_aliases_and_unknown_keys_give_a_short_error(workdir, tmp_path):
    yaml = pytest.importorskip("yaml")
    output = tmp_path / "yaml-run"
    config = {"stage": 2, "model": str(workdir / "model"), "data": [str(workdir / "data" / "train.jsonl")],
              "image-root": str(workdir / "data"), "output": str(output), "max_steps": 1, "report_to": "none",
              "save_strategy": "no"}  # fmt: skip
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    train_main(["--config", str(path)])
    assert (output / "model.safetensors").is_file()

    path.write_text(yaml.safe_dump({**config, "learning_rat": 1e-3}))
    command = [sys.executable, "-m", "transformers_vargpt.training", "--config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key(s) in the config file: 'learning_rat' (did you mean 'learning_rate'?)" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


def test_cli_without_output_is_refused_and_writes_nothing(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(["--stage", "2", "--model", str(workdir / "model"), "--data", str(workdir / "data" / "train.jsonl")])
    assert "--output (the output directory) is required" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_example_without_output_dir_writes_nothing_in_the_working_directory(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "finetune_lora.py"), "--max_steps", "1", "--num_examples", "4"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = re.search(r"adapters: (\S+)", result.stderr + result.stdout).group(1)
    assert list(tmp_path.iterdir()) == [] and Path(written).is_dir()
    shutil.rmtree(Path(written).parent)


def test_model_init_kwargs_documents_the_var_and_vqvae_sizes():
    from dataclasses import fields

    help_text = next(f for f in fields(VargptSFTConfig) if f.name == "model_init_kwargs").metadata["help"]
    assert "VargptForConditionalGeneration" in help_text and "var_depth" in help_text and "vq_" in help_text
    assert "AutoModelForCausalLM" not in help_text


def test_model_init_kwargs_reach_the_model(workdir, tmp_path):
    from transformers_vargpt import VargptForConditionalGeneration

    output = tmp_path / "out"
    train_main(_argv(workdir, output, "--max_steps", "1", "--save_strategy", "no",
                     "--model_init_kwargs", '{"var_cond_drop_rate": 0.5}'))  # fmt: skip
    assert VargptForConditionalGeneration.from_pretrained(output).config.var_cond_drop_rate == 0.5


def test_accelerate_asking_for_two_processes_but_starting_one_is_an_error(workdir, tmp_path):
    assert requested_num_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=3", "x.py"]) == 3
    assert requested_num_processes(["accelerate", "launch", "--num-processes", "2", "-m", "m"]) == 2
    assert requested_num_processes(["bash"]) is None
    check_launched_world_size(2, ["accelerate", "launch", "--num_processes", "2", "x.py"])  # got what it asked
    with pytest.raises(RuntimeError, match="asked for 2 processes but started 1.*--multi_gpu --num_processes 2"):
        check_launched_world_size(1, ["accelerate", "launch", "--num_processes", "2", "x.py"])
    # the real launcher: on a machine without GPUs, `--num_processes 2` alone starts a single process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "transformers_vargpt.training",
               *_argv(workdir, tmp_path / "out", "--max_steps", "1", "--save_strategy", "no")]  # fmt: skip
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("accelerate starts two processes on a machine with GPUs")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "asked for 2 processes but started 1" in result.stderr


def test_training_emits_no_deprecation_warning_we_cause(workdir, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_main(_argv(workdir, tmp_path / "out", "--lora", "--max_steps", "1", "--save_strategy", "no"))
    messages = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [m for m in messages if "checkpointing" in m], messages
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]


@pytest.mark.parametrize("lora", [True, False])
def test_the_output_has_a_vargpt_model_card(workdir, tmp_path, lora):
    output = tmp_path / "out"
    train_main(_argv(workdir, output, *(["--lora"] if lora else []), "--max_steps", "1", "--save_strategy", "no"))
    card = (output / "README.md").read_text()
    assert "fine-tuned version of" not in card and "More Information Needed" not in card
    assert f"base model: `{workdir / 'model'}`" in card and "stage 3 (image-generation fine-tuning)" in card
    assert "transformers_vargpt" in card
    if lora:
        assert "LoRA: r=16" in card and "merge_and_unload()" in card and "library_name: peft" in card
    else:
        assert "full fine-tune" in card and "VargptForConditionalGeneration.from_pretrained" in card


def _readme_training_blocks() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Training", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for language, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(language, []).append(body)
    return blocks


def test_readme_training_snippets_run_as_written(tmp_path):
    """The README's training section, run in an empty directory: the offline set-up, each command, the YAML file."""
    blocks = _readme_training_blocks()
    assert set(blocks) == {"bash", "yaml", "python"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for code in blocks["python"]:
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "train.yaml").write_text(blocks["yaml"][0])
    commands = [line.split("  #")[0].strip() for line in blocks["bash"][0].replace("\\\n", " ").splitlines()]
    entry_points = {"vargpt-train": [sys.executable, "-m", "transformers_vargpt.training"],
                    "accelerate launch": [sys.executable, "-m", "accelerate.commands.launch"]}  # fmt: skip
    ran = 0
    for command in commands:
        if not command or command.startswith("pip install"):
            continue
        prefix = next(name for name in entry_points if command.startswith(name))
        argv = entry_points[prefix] + command[len(prefix):].split()
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        ran += 1
    assert ran == 3
    assert (tmp_path / "runs" / "stage3" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "runs" / "stage2" / "model.safetensors").is_file()
