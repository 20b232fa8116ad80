"""Every python snippet of the README runs as written, offline, on the tiny local model its first snippet saves
(the Hub id is the only substitution)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = "VARGPT-family/VARGPT_LLaVA-v1"
LOCAL_DIR = "tiny-vargpt"
SKIP_MARKER = "<!-- skip-test"  # e.g. <!-- skip-test: needs a GPU -->


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of `text`, in order, except those right after a skip marker."""
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", text, flags=re.S):
        if SKIP_MARKER not in match.group("before"):
            blocks.append(match.group("code"))
    return blocks


def test_readme_has_an_offline_recipe():
    blocks = python_blocks(README.read_text())
    assert blocks and f'save_pretrained("{LOCAL_DIR}")' in blocks[0]
    assert sum(HUB_ID in block for block in blocks) >= 2


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blocks = python_blocks(README.read_text())
    for index, block in enumerate(blocks):
        code = block.replace(HUB_ID, LOCAL_DIR)
        namespace = {"__name__": f"readme_block_{index}"}
        try:
            exec(compile(code, f"README.md python block {index}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 (report which snippet failed)
            pytest.fail(f"README python block {index} fails: {type(error).__name__}: {error}\n{block}")
        if "answer" in namespace:
            # the Use snippet's answer is the new text only, not the prompt echoed back
            assert "What is in this picture?" not in namespace["answer"]
    assert (tmp_path / "butterfly.png").is_file()
