"""Sharing checkpoints: auto_map + code files on save, trust_remote_code loading without the package, model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForImageTextToText, AutoProcessor

import transformers_vargpt
from transformers_vargpt import VargptForConditionalGeneration, VargptProcessor, hub

TINY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vargpt-original-tiny"
PACKAGE_DIR = Path(transformers_vargpt.__file__).resolve().parent
CODE_FILES = {
    "configuration_vargpt.py",
    "generation_image_vargpt.py",
    "generation_vargpt.py",
    "hub.py",
    "image_processing_vargpt.py",
    "modeling_vargpt.py",
    "modeling_vargpt_var.py",
    "modeling_vargpt_vqvae.py",
    "processing_vargpt.py",
    "tokens_vargpt.py",
}
T2I_TEXT = "Please design a drawing of a butterfly on a flower."
QUESTION_PROMPT = "USER: <image>\nWhat color is the shape in this picture? ASSISTANT:"


@pytest.fixture(scope="module")
def released():
    """(model, processor) of the released-layout fixture, with the VAR/VQVAE sizes as overrides."""
    golden = json.loads((TINY / "golden.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(TINY, **golden["reference_hparams"]).eval()
    processor = VargptProcessor.from_pretrained(TINY, patch_nums=[1, 2, 3, 4], image_gen_size=64)
    return model, processor


@pytest.fixture(scope="module")
def saved_dir(released, tmp_path_factory) -> Path:
    """The fixture model and processor saved side by side in this package's layout."""
    model, processor = released
    target = tmp_path_factory.mktemp("shared") / "vargpt-tiny"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def reference_outputs(model, processor) -> dict:
    """Greedy image codes and greedy text ids: what the copy without the package must reproduce."""
    image_inputs = processor(text=T2I_TEXT, generation_mode="image", return_tensors="pt")
    codes = model.generate_images(**image_inputs, do_sample=False).image_tokens
    text_inputs = processor(images=str(TINY / "und_image.png"), text=QUESTION_PROMPT, return_tensors="pt")
    text_ids = model.generate(**text_inputs, max_new_tokens=5, do_sample=False)
    return {"image_tokens": codes[0].tolist(), "text_ids": text_ids[0].tolist()}


def test_save_writes_auto_map_and_code_files(saved_dir):
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vargpt.VargptConfig",
        "AutoModelForImageTextToText": "modeling_vargpt.VargptForConditionalGeneration",
    }
    processor_config = json.loads((saved_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_vargpt.VargptProcessor"}
    assert CODE_FILES <= {path.name for path in saved_dir.iterdir()}
    for name in CODE_FILES:  # copied as they are
        assert (saved_dir / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()


def test_saved_directory_loads_with_the_installed_package(released, saved_dir):
    model, processor = released
    loaded = AutoModelForImageTextToText.from_pretrained(saved_dir)
    loaded_processor = AutoProcessor.from_pretrained(saved_dir)
    # with the package importable the registered classes win over the copied code
    assert type(loaded) is VargptForConditionalGeneration and type(loaded_processor) is VargptProcessor
    assert reference_outputs(loaded, loaded_processor) == reference_outputs(model, processor)


def test_trust_remote_code_without_the_package(released, saved_dir, tmp_path):
    """A Python where transformers_vargpt cannot be imported loads and runs the saved directory from its code files.

    An import hook makes the package unimportable whatever way it is installed (editable or not), so the model and
    processor can only come from the copied code files, which must import nothing of the package."""
    expected = reference_outputs(*released)
    script = textwrap.dedent(
        f"""
        import json, sys


        class WithoutThePackage:  # import hook: as if transformers_vargpt were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "transformers_vargpt":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None


        sys.meta_path.insert(0, WithoutThePackage())
        try:
            import transformers_vargpt
        except ImportError:
            pass
        else:
            raise SystemExit("transformers_vargpt is still importable: the check would prove nothing")

        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained({str(saved_dir)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(saved_dir)!r}, trust_remote_code=True)
        image_inputs = processor(text={T2I_TEXT!r}, generation_mode="image", return_tensors="pt")
        codes = model.generate_images(**image_inputs, do_sample=False).image_tokens
        text_inputs = processor(images={str(TINY / "und_image.png")!r}, text={QUESTION_PROMPT!r}, return_tensors="pt")
        text_ids = model.generate(**text_inputs, max_new_tokens=5, do_sample=False)
        assert "transformers_vargpt" not in sys.modules
        print(json.dumps({{
            "model_module": type(model).__module__,
            "processor_module": type(processor).__module__,
            "image_tokens": codes[0].tolist(),
            "text_ids": text_ids[0].tolist(),
        }}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_module"].startswith("transformers_modules.")
    assert report["processor_module"].startswith("transformers_modules.")
    assert report["image_tokens"] == expected["image_tokens"]
    assert report["text_ids"] == expected["text_ids"]


def test_model_card_metadata(saved_dir):
    card = ModelCard.load(saved_dir / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == ["VARGPT-family/VARGPT_LLaVA-v1"]
    assert card.data.tags == ["vargpt", "var", "llava", "text-to-image", "multimodal"]
    assert "1, 2, 3, 4 (30 image tokens per image)" in card.text
    assert "trust_remote_code=True" in card.text


def test_model_card_base_model_and_hand_written_card(released, tmp_path):
    model, _ = released
    card = hub.build_model_card(model.config, name_or_path="someone/vargpt-finetuned")
    assert card.data.base_model == ["someone/vargpt-finetuned"]

    (tmp_path / "README.md").write_text("# my own notes\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my own notes\n"  # never replaced

    generated = tmp_path / "again"
    model.save_pretrained(generated)
    first = (generated / "README.md").read_text()
    model.save_pretrained(generated)  # a card this package wrote is refreshed
    assert (generated / "README.md").read_text() == first


def mock_hub(monkeypatch, repository_has_card: bool) -> dict:
    """Replace the Hub calls (huggingface_hub's public `HfApi.create_repo` / `upload_folder`, `ModelCard.load`);
    returns what the upload received."""
    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        uploaded["create_repo"] = {"repo_id": repo_id, **kwargs}
        return SimpleNamespace(repo_id=repo_id)

    def fake_load(repo_id, token=None):
        if not repository_has_card:
            raise EntryNotFoundError("no README.md")
        return ModelCard("---\nlicense: mit\n---\n# the owner's card\n")

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, upload_kwargs=kwargs)
        uploaded["files"] = {path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
        return "https://hub.example/commit"

    monkeypatch.setattr(hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(hub.ModelCard, "load", staticmethod(fake_load))
    return uploaded


@pytest.mark.parametrize("repository_has_card", [False, True])
def test_push_to_hub_uploads_code_auto_map_and_card(released, monkeypatch, repository_has_card):
    model, _ = released
    uploaded = mock_hub(monkeypatch, repository_has_card)
    result = model.push_to_hub("someone/vargpt-tiny", tags=["demo"], private=True, commit_message="first")
    assert result == "https://hub.example/commit"

    expected_repo = {"repo_id": "someone/vargpt-tiny", "private": True, "token": None, "exist_ok": True}
    assert uploaded["create_repo"] == expected_repo
    assert uploaded["upload_kwargs"]["commit_message"] == "first" and uploaded["upload_kwargs"]["create_pr"] is False
    files = uploaded["files"]
    assert uploaded["repo_id"] == "someone/vargpt-tiny"
    assert CODE_FILES - {"processing_vargpt.py", "image_processing_vargpt.py"} <= set(files)
    assert "model.safetensors" in files
    assert "AutoModelForImageTextToText" in json.loads(files["config.json"])["auto_map"]
    card = ModelCard(files["README.md"].decode())
    if repository_has_card:  # the repository's own card is kept, only tagged
        assert card.data.license == "mit" and "the owner's card" in card.text
        assert card.data.tags == ["demo"]
    else:
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
        assert card.data.tags == ["vargpt", "var", "llava", "text-to-image", "multimodal", "demo"]
        assert 'from_pretrained("someone/vargpt-tiny"' in card.text
        assert "pip install transformers-vargpt" not in card.text and "not published on PyPI" in card.text


def test_save_pretrained_push_to_hub_keeps_the_card(released, monkeypatch, tmp_path):
    """`save_pretrained(push_to_hub=True)` uploads the saved directory with this package's card, not a template."""
    model, _ = released
    uploaded = mock_hub(monkeypatch, repository_has_card=False)
    model.save_pretrained(tmp_path / "vargpt-tiny", push_to_hub=True, commit_message="save and push")
    assert uploaded["repo_id"] == "vargpt-tiny" and uploaded["upload_kwargs"]["commit_message"] == "save and push"
    card = ModelCard(uploaded["files"]["README.md"].decode())
    assert card.data.tags == ["vargpt", "var", "llava", "text-to-image", "multimodal"]
    assert 'from_pretrained("vargpt-tiny"' in card.text
    assert (tmp_path / "vargpt-tiny" / "README.md").read_bytes() == uploaded["files"]["README.md"]

    # a hand-written card in the directory is what the upload carries
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("---\nlicense: mit\n---\n# my own notes\n")
    model.save_pretrained(tmp_path / "mine", push_to_hub=True, repo_id="someone/mine")
    assert uploaded["repo_id"] == "someone/mine"
    assert "# my own notes" in uploaded["files"]["README.md"].decode()


def test_processor_save_carries_its_code(released, tmp_path):
    _, processor = released
    saved = tmp_path / "processor"
    processor.save_pretrained(saved)
    assert {"processing_vargpt.py", "configuration_vargpt.py"} <= {path.name for path in saved.iterdir()}
    reloaded = AutoProcessor.from_pretrained(saved)
    assert reloaded.patch_nums == [1, 2, 3, 4]
    inputs = reloaded(text=T2I_TEXT, generation_mode="image", return_tensors="pt")
    expected = processor(text=T2I_TEXT, generation_mode="image", return_tensors="pt")
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
