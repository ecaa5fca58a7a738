"""Loading the models a recipe names, without the training stack: causal LMs and sentence-encoder folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from minnow.core.errors import MinnowError
from minnow.core.recipe import Student, Teacher

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(spec: Teacher | Student, device: torch.device) -> torch.nn.Module:
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.path,
            dtype=DTYPES[spec.dtype],
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as e:
        raise MinnowError(f"cannot load model {spec.path!r}: {str(e).splitlines()[0]}") from None
    return model.to(device)


def local_model_dir(ref: str, revision: str | None) -> Path:
    """An existing folder as is; a hub id downloaded (weights as safetensors only) into the hub cache."""
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                ref, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]
            )
        )
    except Exception as e:
        raise MinnowError(f"cannot fetch {ref!r} from the model hub: {str(e).splitlines()[0]}") from None


def check_mean_pooling(model_dir: Path) -> None:
    """Stop unless the sentence-transformers folder pools by the mean alone (classic config, or 6.x's ``pooling_mode``)."""
    pooling = model_dir / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return
    config = json.loads(pooling.read_text())
    mean = (
        config["pooling_mode_mean_tokens"]
        if "pooling_mode_mean_tokens" in config
        else config.get("pooling_mode", "mean")
    )
    if mean not in (True, "mean", ["mean"]):
        raise MinnowError(f"{pooling}: only mean-pooling sentence encoders are supported (like all-MiniLM-L6-v2)")
