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

Loading checks every image before training starts (a missing or unreadable file is reported with its record's
file and line, not when the collator reaches it at step N; `skip_bad_images` drops such records and says how many),
and refuses image paths that leave `image_root` (`../`, absolute paths elsewhere) unless
`allow_images_outside_root`.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import PIL.Image
from transformers.utils import logging

from ..tokens_vargpt import IMAGE_GEN_MARKER, IMAGE_TOKEN

logger = logging.get_logger(__name__)

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


def _resolve_image(
    image: Any, image_root: str | os.PathLike | None, allow_outside_root: bool = False, where: str = "example"
) -> Any:
    """Relative file paths are joined to `image_root` and made absolute (so resolving twice changes nothing); other
    images (PIL, dicts of bytes) pass through. A path that ends up outside `image_root` (`../`, an absolute path
    elsewhere) is refused unless `allow_outside_root`: a dataset should not read files its root does not hold."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if image_root is None:
            return str(path)
        root = os.path.abspath(image_root)
        resolved = os.path.abspath(Path(root) / path)  # an absolute `path` stays itself (normalised)
        if not allow_outside_root and os.path.commonpath([root, resolved]) != root:
            raise ValueError(
                f"{where}: image {str(image)!r} is outside image_root {root!r}; move it under the root, or allow "
                "such paths with --allow_images_outside_root (allow_images_outside_root=True)"
            )
        return resolved
    return image


def _turns(example: dict[str, Any], key: str, role_key: str, content_key: str, where: str) -> list[tuple[Any, Any]]:
    """(role, content) of each turn of `example[key]`, which must be a list of dicts."""
    turns = example[key]
    if not isinstance(turns, (list, tuple)):
        raise ValueError(
            f"{where}: {key!r} must be a list of turns ({{{role_key!r}: ..., {content_key!r}: ...}}), got "
            f"{type(turns).__name__} {_preview(turns)}"
        )
    for position, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ValueError(
                f"{where}: turn {position} of {key!r} must be a dict with {role_key!r} and {content_key!r}, got "
                f"{type(turn).__name__} {_preview(turn)}"
            )
    return [(turn.get(role_key), turn.get(content_key)) for turn in turns]


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_example(
    example: dict[str, Any],
    image_root: str | os.PathLike | None = None,
    index: int | None = None,
    where: str | None = None,
    allow_images_outside_root: bool = False,
) -> dict[str, Any]:
    """One raw example (released "messages" or LLaVA "conversations") → `{"messages": [...], "images": [...]}`.

    Raises `ValueError` (naming the example: `where`, e.g. `"train.jsonl:12"`, else its index) when the turns are
    not a list of dicts, roles are unknown, there is no assistant turn, the placeholders do not match the images one
    to one, or an image path leaves `image_root` (unless `allow_images_outside_root`).
    """
    if where is None:
        where = f"example {index}" if index is not None else "example"
    if not isinstance(example, Mapping):  # a dict, or a `datasets` row
        raise ValueError(f"{where}: an example must be a JSON object, got {type(example).__name__} {_preview(example)}")
    if example.get("messages") is not None:
        turns = _turns(example, "messages", "role", "content", where)
        images = example.get("images")
    elif example.get("conversations") is not None:
        turns = _turns(example, "conversations", "from", "value", where)
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
    images = [_resolve_image(image, image_root, allow_images_outside_root, where) for image in images]
    return {"messages": messages, "images": images}


def image_problem(image: Any) -> str | None:
    """Why an image of a training example cannot be read (a missing file, a truncated or corrupt one), or None.

    File paths are opened and decoded (JPEGs at reduced scale, which still reads the whole stream), as are lazily
    opened PIL images and `datasets` image records; arrays and tensors are taken as they are.
    """
    name = str(image)
    try:
        if isinstance(image, dict):
            if image.get("bytes") is not None:
                name = image.get("path") or "an image given as bytes"
                with PIL.Image.open(io.BytesIO(image["bytes"])) as opened:
                    opened.load()
                return None
            image = image.get("path")
            name = str(image)
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                return f"image file {name!r} does not exist"
            with PIL.Image.open(image) as opened:
                opened.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale (the whole file is still read)
                opened.load()
        elif isinstance(image, PIL.Image.Image):
            name = getattr(image, "filename", "") or f"a {image.width}x{image.height} PIL image"
            image.load()
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        return f"image {name!r} cannot be read ({type(error).__name__}: {error})"
    return None


def find_unreadable_images(
    images_per_example: Sequence[Sequence[Any]], locations: Sequence[str], num_workers: int | None = None
) -> dict[int, str]:
    """`{example index: "<location>: <problem>"}` for the examples that have an image `image_problem` rejects."""
    flat = [(row, image) for row, images in enumerate(images_per_example) for image in images or ()]
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding releases the GIL
        problems = list(pool.map(lambda item: image_problem(item[1]), flat))
    bad: dict[int, str] = {}
    for (row, _), problem in zip(flat, problems):
        if problem is not None and row not in bad:
            bad[row] = f"{locations[row]}: {problem}"
    return dict(sorted(bad.items()))


def report_unreadable_images(bad: dict[int, str], total: int, skip_bad_images: bool) -> None:
    """Raise an error naming the examples with unreadable images (up to 20), or with `skip_bad_images` warn with
    their count (the caller drops them)."""
    lines = list(bad.values())
    shown = "\n  ".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
    if not skip_bad_images:
        raise ValueError(
            f"{len(lines)} training example(s) have an image that cannot be read:\n  {shown}\n"
            "Fix them, or skip such examples with --skip_bad_images (skip_bad_images=True)"
        )
    logger.warning(f"skipped {len(lines)} of {total} training example(s) whose images cannot be read:\n  {shown}")
    if len(lines) == total:
        raise ValueError("no training example left after skipping those with unreadable images")


def _read_rows(path: Path) -> list[tuple[dict[str, Any], str]]:
    """The examples of a JSON file holding a list of examples (or `{"data": [...]}`), or of a JSON Lines file, each
    with its location (`file:line` for JSON Lines, `file, item i` for a JSON list)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped.startswith(("[", "{")):
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            content = None  # e.g. JSON Lines under a .json name
        if isinstance(content, dict) and isinstance(content.get("data"), list):
            content = content["data"]
        if isinstance(content, list):
            return [(row, f"{path}, item {index}") for index, row in enumerate(content)]
        if isinstance(content, dict) and ("messages" in content or "conversations" in content):
            return [(content, str(path))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((json.loads(line), f"{path}:{number}"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from error
    return rows


def load_vargpt_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[dict[str, Any]] | Any,
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
    skip_bad_images: bool = False,
    allow_images_outside_root: bool = False,
):
    """Load training examples in either released format as a `datasets.Dataset` of normalised examples.

    Args:
        data: a JSON / JSONL file path, a list of such paths (concatenated), a list of example dicts, or a
            `datasets.Dataset` / `datasets.IterableDataset` with `messages` or `conversations` columns.
        image_root: directory that relative image paths are resolved against (default: as written). Paths that
            leave it (`../`, absolute paths elsewhere) are refused unless `allow_images_outside_root`.
        check_images: open and decode every image now, so that a missing or unreadable one is reported with its
            example's file and line before training starts (not for an `IterableDataset`, read as it streams).
        skip_bad_images: drop the examples with such an image (a warning counts them) instead of raising.
        allow_images_outside_root: accept image paths outside `image_root`.

    Returns:
        `datasets.Dataset` (or `IterableDataset` for an iterable input) with `messages` and `images` columns.
    """
    import datasets

    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        dataset = to_vargpt_dataset(data, image_root, allow_images_outside_root)
        return check_dataset_images(dataset, skip_bad_images) if check_images else dataset
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    rows: list[tuple[Any, str]] = []
    for item in data:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"training data file {str(path)!r} does not exist")
            rows.extend(_read_rows(path))
        elif isinstance(item, dict):
            rows.append((item, f"example {len(rows)}"))
        else:
            raise TypeError(f"data must be file paths or example dicts, got {type(item).__name__}")
    if not rows:
        raise ValueError("no training examples found")
    examples = [
        normalize_example(row, image_root, where=where, allow_images_outside_root=allow_images_outside_root)
        for row, where in rows
    ]
    if check_images:
        bad = find_unreadable_images([example["images"] for example in examples], [where for _, where in rows])
        if bad:
            report_unreadable_images(bad, len(examples), skip_bad_images)
            examples = [example for index, example in enumerate(examples) if index not in bad]
    dataset = datasets.Dataset.from_list(examples)
    if check_images:
        _CHECKED_FINGERPRINTS.add(dataset._fingerprint)
    return dataset


# Fingerprints of the datasets whose images this process has checked (so the trainer does not check them again).
_CHECKED_FINGERPRINTS: set[str] = set()


def check_dataset_images(dataset, skip_bad_images: bool = False):
    """A normalised `datasets.Dataset` whose images all read: an error naming the examples whose images do not,
    or with `skip_bad_images` the dataset without them. An `IterableDataset` is returned as it is (its images are
    read as it streams)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or getattr(dataset, "_fingerprint", None) in _CHECKED_FINGERPRINTS:
        return dataset
    images_per_example, locations = [], []
    for index in range(len(dataset)):
        where = f"example {index}"
        try:
            images_per_example.append(dataset[index]["images"] or [])
        except Exception as error:  # a `datasets` Image feature decodes on access
            raise ValueError(f"{where}: its images cannot be read ({type(error).__name__}: {error})") from error
        locations.append(where)
    bad = find_unreadable_images(images_per_example, locations)
    if bad:
        report_unreadable_images(bad, len(dataset), skip_bad_images)
        dataset = dataset.select([index for index in range(len(dataset)) if index not in bad])
    _CHECKED_FINGERPRINTS.add(dataset._fingerprint)
    return dataset


def is_normalized(dataset) -> bool:
    """Whether a dataset already has the normalised columns (and nothing that needs converting)."""
    columns = getattr(dataset, "column_names", None) or []
    return "messages" in columns and "images" in columns and "conversations" not in columns


def to_vargpt_dataset(
    dataset, image_root: str | os.PathLike | None = None, allow_images_outside_root: bool = False
):
    """Normalise a `datasets.Dataset` in place of TRL's own preparation (idempotent; paths resolved once).

    A dataset that already has `messages` and `images` columns is returned as it is when `image_root` is None, or
    when `load_vargpt_dataset` made it (its paths are resolved and checked).
    """
    checked = getattr(dataset, "_fingerprint", None) in _CHECKED_FINGERPRINTS
    if is_normalized(dataset) and (image_root is None or checked):
        return dataset
    columns = getattr(dataset, "column_names", None)

    def convert(example, index=None):
        return normalize_example(example, image_root, index, allow_images_outside_root=allow_images_outside_root)

    if columns is None:  # an IterableDataset without known features
        return dataset.map(convert)
    extra = [column for column in columns if column not in ("messages", "images")]
    return dataset.map(convert, with_indices=True, remove_columns=extra)


__all__ = [
    "IMAGE_MARKER",
    "check_dataset_images",
    "image_problem",
    "load_vargpt_dataset",
    "normalize_example",
    "placeholder_kinds",
    "to_vargpt_dataset",
]
