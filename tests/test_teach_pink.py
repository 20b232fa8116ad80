"""`examples/teach_pink_lora.py` end to end on a tiny shapes-world model (the bundled architecture at smoke sizes,
untrained): data, the new word, LoRA training, the adapter directory, and loading it the ordinary ways."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_vargpt import VargptForConditionalGeneration, VargptPipeline, VargptProcessor, VargptVQVAE
from transformers_vargpt.bundled.model import BundledSizes, build_untrained_model
from transformers_vargpt.bundled.tokenizer import build_shapes_tokenizer
from transformers_vargpt.cli import main as vargpt
from transformers_vargpt.configuration_vargpt import VargptVQVAEConfig

peft = pytest.importorskip("peft")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "teach_pink_lora.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("teach_pink_lora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_shapes_model(tmp_path_factory) -> str:
    vqvae = VargptVQVAE(VargptVQVAEConfig(vocab_size=32, z_channels=8, base_channels=16, channel_multipliers=[1, 1, 1, 1],
                                          num_res_blocks=0, scale_sizes=[1, 2, 4, 8], image_size=64, norm_groups=8))
    model, processor = build_untrained_model(build_shapes_tokenizer(), vqvae, BundledSizes.smoke(), seed=0)
    directory = tmp_path_factory.mktemp("tiny-shapes")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def test_pink_combinations_split_like_the_world(example):
    train, held = example.pink_combinations()
    assert len(train) + len(held) == 3 * 2 * 8 and 0 < len(held) < len(train)
    assert all("pink" in (color, background) for color, _, background in train + held)
    assert not set(train) & set(held)


@pytest.mark.parametrize("hold_out", [False, True])
def test_pink_rows_show_the_held_out_pink_combinations_only_when_asked(example, tmp_path, hold_out):
    path = example.write_data(tmp_path, pink_rows=96, old_rows=2, seed=0, hold_out_pink=hold_out)
    _, held = example.pink_combinations()
    drawn = set()
    for line in path.read_text().splitlines():
        text = json.dumps(json.loads(line)["messages"])
        drawn |= {combination for combination in held if "{} {} on a {} background".format(*combination) in text}
    assert (drawn == set()) if hold_out else drawn


def test_teach_pink_end_to_end_on_a_tiny_model(example, tiny_shapes_model, tmp_path, monkeypatch):
    output = tmp_path / "pink"
    report = example.main(["--output-dir", str(output), "--model", tiny_shapes_model, "--pink-rows", "12",
                           "--old-rows", "6", "--max-steps", "2", "--batch-size", "4", "--eval-limit", "2"])
    adapter = output / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["modules_to_save"]) == set(example.MODULES_TO_SAVE)
    # what loading needs and nothing else: no pickled trainer arguments, no code copies, the real base model named
    assert config["base_model_name_or_path"] == tiny_shapes_model
    assert not (adapter / "training_args.bin").exists() and not list(adapter.glob("*.py"))
    card = (adapter / "README.md").read_text()
    assert "| pink questions, color question" in card and str(adapter) in card
    assert (output / "before_after.png").is_file() and (output / "evaluation.json").is_file()
    assert set(report["before"]) == set(report["after"]) >= {"pink_generation", "pink_questions"}
    rows = [json.loads(line) for line in (output / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and any("pink" in json.dumps(row) for row in rows)

    # the word is one token with the adapters' tokenizer (the base one reads it as <unk>)
    processor = VargptProcessor.from_pretrained(adapter)
    pink = processor.tokenizer("pink", add_special_tokens=False)["input_ids"]
    assert len(pink) == 1 and pink[0] != processor.tokenizer.unk_token_id
    base_tokenizer = VargptProcessor.from_pretrained(tiny_shapes_model).tokenizer
    assert base_tokenizer("pink", add_special_tokens=False)["input_ids"] == [base_tokenizer.unk_token_id]

    # PeftModel on the unchanged base model, and a merged copy that loads with from_pretrained alone
    base = VargptForConditionalGeneration.from_pretrained(tiny_shapes_model)
    adapted = peft.PeftModel.from_pretrained(base, adapter)
    merged_dir = tmp_path / "merged"
    adapted.merge_and_unload().save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    merged = VargptPipeline.from_pretrained(str(merged_dir))
    prompt = "Draw a pink circle on a blue background."
    by_hand = merged(prompt, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    # the command line with --adapter draws the same picture
    monkeypatch.chdir(tmp_path)
    assert vargpt(["generate", prompt, "-o", "pink.png", "--model", tiny_shapes_model, "--adapter", str(adapter),
                   "--seed", "0"]) == 0
    np.testing.assert_allclose(np.asarray(Image.open("pink.png"), dtype=np.float64), np.round(by_hand * 255), atol=1)
    assert sorted(os.listdir(tmp_path)) == sorted(["pink", "merged", "pink.png"])
