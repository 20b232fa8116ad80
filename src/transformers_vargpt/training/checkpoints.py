"""Checkpoints to resume from: which files of a `checkpoint-N` directory are broken, and the newest intact one.

A job killed while writing a checkpoint (or a full disk) leaves truncated files; transformers then fails deep inside
`torch.load` / safetensors with a message that names no file, or resumes from the broken directory again. Each file
is checked cheaply here, without loading it: a safetensors file must be as long as its header says, a torch file
(`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, `training_args.bin`, ...) must be a complete zip archive, and JSON
files (`trainer_state.json`, ...) must parse. Only the checkpoint directory's own files are checked, not the
subdirectories of DeepSpeed / FSDP sharded states.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, no safetensors header)"
        (header_length,) = struct.unpack("<Q", head)
        if 8 + header_length > size:
            return f"truncated ({size} bytes, the header alone needs {8 + header_length})"
        try:
            header = json.loads(file.read(header_length))
        except ValueError as error:
            return f"corrupt safetensors header ({error})"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_length + end != size:
        return f"truncated ({size} bytes, its header describes {8 + header_length + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # the start of torch's zip format, without its end
                return f"truncated ({path.stat().st_size} bytes, a zip archive without its central directory)"
        try:  # a file saved with the legacy (non-zip) torch format
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            return f"not a readable torch file ({type(error).__name__}: {str(error)[:200]})"
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            for member in archive.infolist():
                if member.header_offset + member.compress_size > size:
                    return f"truncated (member {member.filename} ends past the end of the file)"
    except (zipfile.BadZipFile, OSError) as error:
        return f"truncated or corrupt ({error})"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"truncated or corrupt JSON ({error})"
    return None


def checkpoint_problems(checkpoint: str | os.PathLike) -> list[str]:
    """What is wrong with a checkpoint directory, one line per broken or missing file (`[]`: it is intact)."""
    directory = Path(checkpoint)
    if not directory.is_dir():
        return [f"{directory} is not a directory"]
    problems = []
    if not (directory / "trainer_state.json").is_file():
        problems.append(f"{directory / 'trainer_state.json'}: missing")
    sharded_state = any(path.is_dir() for path in directory.iterdir())  # DeepSpeed `global_step*/`, FSDP shards
    if not sharded_state and not any((directory / name).is_file() for name in WEIGHT_FILES + _WEIGHT_INDEXES):
        problems.append(f"{directory}: no model weights ({', '.join(WEIGHT_FILES)})")
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(path)
        elif path.suffix == ".json":
            problem = _json_problem(path)
        else:
            continue
        if problem is not None:
            problems.append(f"{path}: {problem}")
    return problems


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` directories of `output_dir`, newest (largest N) first."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in directory.iterdir()
             if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))]  # fmt: skip
    return [path for _, path in sorted(found, reverse=True)]


def newest_intact_checkpoint(output_dir: str | os.PathLike) -> tuple[Path, dict[Path, list[str]]]:
    """The newest checkpoint of `output_dir` with no broken file, and the problems of the newer ones it skipped.

    Raises `ValueError` when there is no checkpoint, or none intact (naming every broken file).
    """
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise ValueError(f"no checkpoint-N directory in {str(output_dir)!r} to resume from")
    skipped: dict[Path, list[str]] = {}
    for checkpoint in checkpoints:
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint, skipped
        skipped[checkpoint] = problems
    details = "\n  ".join(problem for problems in skipped.values() for problem in problems)
    raise ValueError(f"no intact checkpoint in {str(output_dir)!r}:\n  {details}")


__all__ = ["checkpoint_problems", "list_checkpoints", "newest_intact_checkpoint"]
