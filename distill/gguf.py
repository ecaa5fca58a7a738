"""GGUF files (llama.cpp's single-file format) as ordinary Hugging Face folders.

A recipe may name a teacher or student as a `.gguf` file (a path, or `package:<python package>/<file>.gguf`).
``gguf_folder`` converts such a file once — transformers reads it, dequantizing every tensor to fp32 — into a
folder of safetensors, tokenizer (with its chat template) and generation config, cached under the file's
content hash, so every stage after validation (pre-flight, teacher-cache provenance, export, the demo) sees a
plain folder and a second run reuses the conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import GGUF_SUFFIX, Recipe

from .model_files import file_sha256

CACHE_ENV = "MINNOW_CACHE"


def cache_root() -> Path:
    """Where converted models live: ``$MINNOW_CACHE`` or ``~/.cache/minnow``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minnow")


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX) and Path(path).is_file()


def gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.architecture")
    if field is None:
        raise MinnowError(f"{path}: not a model GGUF (no general.architecture)")
    return bytes(field.parts[field.data[0]]).decode()


def gguf_folder(path: str | Path) -> Path:
    """The Hugging Face folder converted from the GGUF file ``path`` (made on first use, then reused by hash)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise MinnowError(f"{path}: no such GGUF file")
    folder = cache_root() / "gguf" / file_sha256(path)
    if (folder / "config.json").is_file():
        return folder
    with atomic.output_dir(folder) as tmp:
        _convert(path, tmp)
    return folder


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ValueError as e:
        if "not supported" in str(e):
            raise MinnowError(
                f"{path}: transformers cannot read GGUF architecture {gguf_architecture(path)!r}; "
                "convert the model to a Hugging Face folder another way"
            ) from None
        raise MinnowError(f"{path}: cannot read this GGUF: {str(e).splitlines()[0]}") from None
    # A GGUF-loaded model carries a quantization config that save_pretrained refuses; its weights are already fp32.
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def with_gguf_folders(recipe: Recipe, file: str | Path) -> Recipe:
    """``recipe`` with any `.gguf` teacher or student path replaced by its converted folder (``file`` names the recipe
    in errors)."""
    for key, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
        if spec.path is not None and is_gguf(spec.path):
            try:
                spec.path = str(gguf_folder(spec.path))
            except MinnowError as e:
                raise MinnowError(f"{file}: {key}.path: {e}") from None
    return recipe
