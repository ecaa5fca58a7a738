"""Local model folders checked the way loading reads them, before any compute: config, tokenizer, and weights
that are present and whole (each safetensors file's header parses and the file ends where the header says)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe
from minnow.core.text import read_text

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
SHARD_INDEX = "model.safetensors.index.json"
REDOWNLOAD = "download or copy it again (an interrupted download?)"


def check_models(recipe: Recipe) -> None:
    """Every local model folder the recipe names (hub ids are checked when the run downloads them)."""
    folders = {"teacher.path": recipe.teacher.path, "student.path": recipe.student.path}
    for key, ref in folders.items():
        if ref is not None and Path(ref).is_dir():
            check_model_folder(Path(ref), key)
    layers = recipe.student.from_teacher.layers if recipe.student.from_teacher else None
    if layers and Path(recipe.teacher.path).is_dir():
        n = model_config(Path(recipe.teacher.path)).get("num_hidden_layers")
        if isinstance(n, int) and layers[-1] >= n:
            raise MinnowError(
                f"student.from_teacher.layers: {layers[-1]} is not in 0..{n - 1} (the teacher has {n} layers)"
            )


def check_model_folder(folder: Path, key: str) -> None:
    model_config(folder, key)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MinnowError(f"{key}: {folder}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    for file in weight_files(folder, key):
        safetensors_header(file)


def model_config(folder: Path, key: str = "model") -> dict:
    config = folder / "config.json"
    if not config.is_file():
        raise MinnowError(
            f"{key}: {folder}: no config.json; a model folder holds config.json, a tokenizer and *.safetensors"
        )
    try:
        data = json.loads(read_text(config))
    except ValueError as e:
        raise MinnowError(f"{config}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MinnowError(f"{config}: not a model config (a JSON object)")
    return data


def weight_files(folder: Path, key: str) -> list[Path]:
    """The folder's safetensors files: the shards its index names (all present), or every *.safetensors."""
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(read_text(index))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MinnowError(f"{index}: not a safetensors shard index ({e})") from None
        absent = [name for name in shards if not (folder / name).is_file()]
        if absent:
            raise MinnowError(f"{key}: {folder}: shard {absent[0]} named in {SHARD_INDEX} is missing; {REDOWNLOAD}")
        return [folder / name for name in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [f.name for f in folder.glob("*.bin")]
        found = f" (found {', '.join(pickled)}: pickles, which Minnow does not load)" if pickled else ""
        raise MinnowError(f"{key}: {folder}: no *.safetensors weights{found}; Minnow loads safetensors only")
    return files


def safetensors_header(file: Path) -> dict[str, dict]:
    """The tensors a safetensors file declares; MinnowError when the file is empty, truncated or damaged."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or 8 + length > size:
            raise MinnowError(
                f"{file}: {size} bytes, too short for a safetensors file (truncated or empty); {REDOWNLOAD}"
            )
        try:
            header = json.loads(f.read(length))
            end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise MinnowError(f"{file}: not a safetensors file (its header does not parse); {REDOWNLOAD}") from None
    if 8 + length + end != size:
        raise MinnowError(
            f"{file}: {size} bytes, but its header declares {8 + length + end}: truncated or damaged; {REDOWNLOAD}"
        )
    return header


def file_sha256(path: Path) -> str:
    """The SHA-256 of a (possibly multi-GB) file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
