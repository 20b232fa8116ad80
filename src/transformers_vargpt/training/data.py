"""Training data of VARGPT: the released conversation formats, normalised to one example form.

Every example the collator reads has the released ("messages", LLaMA-Factory) form:

    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...], "images": [image, ...]}

`<image>` in a turn marks an image to read (CLIP → LLM), `<image_gen>` marks an image to draw (VAR, normally in an
assistant turn); `images` lists both kinds in their order of appearance across the conversation, as file paths
(resolved against `image_root`) or PIL images. A text-only example has `images: []`.

Accepted inputs, from JSON (a list) or JSON Lines files, a list of dicts or a `datasets.Dataset`:

- released / LLaMA-Factory: `{"messages": [{"role", "content"}, ...], "images": [...]}`;
- LLaVA-1.5: `{"conversations": [{"from": "human" | "gpt" | "system", "value"}, ...], "image": "a.jpg"}` (`image`
  may also be a list, or absent for text-only rows); an image without a `<image>` placeholder gets one in front of
  the first user turn, as LLaVA's own preprocessing does.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..tokens_vargpt import IMAGE_GEN_MARKER, IMAGE_TOKEN

IMAGE_MARKER = IMAGE_TOKEN  # the `<image>` token doubles as the placeholder of an image to read
# `<image>` and `<image_gen>` in order of appearance (they never overlap: `<image_gen>` does not contain `<image>`)
_MARKER_PATTERN = re.compile(re.escape(IMAGE_MARKER) + "|" + re.escape(IMAGE_GEN_MARKER))

_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


def placeholder_kinds(messages: Sequence[dict[str, str]]) -> list[str]:
    """The image placeholders of a conversation in order of appearance: `"<image>"` or `"<image_gen>"` each."""
    return [match.group(0) for message in messages for match in _MARKER_PATTERN.finditer(message["content"])]


def _content_to_text(content: Any, where: str) -> str:
    """A turn's content as text; structured content (`[{"type": "text"|"image"|"image_gen", ...}]`) is flattened."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append(item.get("text", ""))
            elif kind == "image":
                parts.append(IMAGE_MARKER)
            elif kind == "image_gen":
                parts.append(IMAGE_GEN_MARKER)
            else:
                raise ValueError(f"{where}: unsupported content item {item!r}; use text, image or image_gen items")
        return "".join(parts)
    raise ValueError(f"{where}: a turn's content must be a string, got {type(content).__name__}")


def _resolve_image(image: Any, image_root: str | os.PathLike | None) -> Any:
    """Relative file paths are joined to `image_root` and made absolute (so resolving twice changes nothing); other
    images (PIL, dicts of bytes) pass through."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if image_root is not None and not path.is_absolute():
            return os.path.abspath(Path(image_root) / path)
        return str(path)
    return image


def normalize_example(
    example: dict[str, Any], image_root: str | os.PathLike | None = None, index: int | None = None
) -> dict[str, Any]:
    """One raw example (released "messages" or LLaVA "conversations") → `{"messages": [...], "images": [...]}`.

    Raises `ValueError` (naming the example's index) when roles are unknown, there is no assistant turn, or the
    placeholders do not match the images one to one.
    """
    where = f"example {index}" if index is not None else "example"
    if example.get("messages") is not None:
        turns = [(turn.get("role"), turn.get("content")) for turn in example["messages"]]
        images = example.get("images")
    elif example.get("conversations") is not None:
        turns = [(turn.get("from"), turn.get("value")) for turn in example["conversations"]]
        images = example.get("images", example.get("image"))
    else:
        raise ValueError(f"{where}: expected a 'messages' (released) or 'conversations' (LLaVA) field")
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]

    messages = []
    for position, (role, content) in enumerate(turns):
        normalized_role = _ROLES.get(str(role).lower()) if role is not None else None
        if normalized_role is None:
            raise ValueError(f"{where}: turn {position} has unknown role {role!r}; expected one of {sorted(_ROLES)}")
        messages.append({"role": normalized_role, "content": _content_to_text(content, f"{where}, turn {position}")})
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError(f"{where}: no assistant turn, so nothing to learn")

    kinds = placeholder_kinds(messages)
    if example.get("messages") is None and images and not kinds:
        # LLaVA rows may carry their image without a placeholder; LLaVA puts it before the first question
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = IMAGE_MARKER * len(images) + "\n" + first_user["content"]
            kinds = placeholder_kinds(messages)
    if len(kinds) != len(images):
        raise ValueError(
            f"{where}: {len(kinds)} image placeholder(s) ({IMAGE_MARKER} / {IMAGE_GEN_MARKER}) but {len(images)} "
            "image(s); list exactly one image per placeholder, in order of appearance"
        )
    return {"messages": messages, "images": [_resolve_image(image, image_root) for image in images]}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON file holding a list of examples (or `{"data": [...]}`), or a JSON Lines file."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped.startswith(("[", "{")):
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            content = None  # e.g. JSON Lines under a .json name
        if isinstance(content, list):
            return content
        if isinstance(content, dict) and isinstance(content.get("data"), list):
            return content["data"]
        if isinstance(content, dict) and ("messages" in content or "conversations" in content):
            return [content]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from error
    return rows


def load_vargpt_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[dict[str, Any]] | Any,
    image_root: str | os.PathLike | None = None,
):
    """Load training examples in either released format as a `datasets.Dataset` of normalised examples.

    Args:
        data: a JSON / JSONL file path, a list of such paths (concatenated), a list of example dicts, or a
            `datasets.Dataset` / `datasets.IterableDataset` with `messages` or `conversations` columns.
        image_root: directory that relative image paths are resolved against (default: as written).

    Returns:
        `datasets.Dataset` (or `IterableDataset` for an iterable input) with `messages` and `images` columns.
    """
    import datasets

    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        return to_vargpt_dataset(data, image_root)
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    rows: list[dict[str, Any]] = []
    for item in data:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"training data file {str(path)!r} does not exist")
            rows.extend(_read_rows(path))
        elif isinstance(item, dict):
            rows.append(item)
        else:
            raise TypeError(f"data must be file paths or example dicts, got {type(item).__name__}")
    if not rows:
        raise ValueError("no training examples found")
    examples = [normalize_example(row, image_root, index) for index, row in enumerate(rows)]
    return datasets.Dataset.from_list(examples)


def is_normalized(dataset) -> bool:
    """Whether a dataset already has the normalised columns (and nothing that needs converting)."""
    columns = getattr(dataset, "column_names", None) or []
    return "messages" in columns and "images" in columns and "conversations" not in columns


def to_vargpt_dataset(dataset, image_root: str | os.PathLike | None = None):
    """Normalise a `datasets.Dataset` in place of TRL's own preparation (idempotent; paths resolved once).

    A dataset that already has `messages` and `images` columns is returned as it is when `image_root` is None.
    """
    if is_normalized(dataset) and image_root is None:
        return dataset
    columns = getattr(dataset, "column_names", None)

    def convert(example, index=None):
        return normalize_example(example, image_root, index)

    if columns is None:  # an IterableDataset without known features
        return dataset.map(convert)
    extra = [column for column in columns if column not in ("messages", "images")]
    return dataset.map(convert, with_indices=True, remove_columns=extra)


__all__ = ["IMAGE_MARKER", "load_vargpt_dataset", "normalize_example", "placeholder_kinds", "to_vargpt_dataset"]
