"""A sentence encoder as Minnow distills it: a Hugging Face encoder, attention-masked mean pooling, an optional
projection to the teacher's width (``projection.safetensors``) and L2 normalisation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerFast

from minnow.core.errors import MinnowError

PROJECTION_FILE = "projection.safetensors"


class EncoderWithPooling(torch.nn.Module):
    """Encoder + attention-masked mean pooling (+ optional projection) + L2 normalisation."""

    def __init__(self, encoder: PreTrainedModel, projection: torch.nn.Linear | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    @property
    def dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.encoder.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled, p=2, dim=-1)


def _load_projection(path: Path, in_features: int) -> torch.nn.Linear:
    tensors = load_file(path)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise MinnowError(f"{path} must hold 'weight' [out, in] and 'bias' [out]; found {sorted(tensors)}")
    if weight.shape[1] != in_features:
        raise MinnowError(f"{path}: weight takes {weight.shape[1]} inputs but the encoder outputs {in_features}")
    projection = torch.nn.Linear(weight.shape[1], weight.shape[0])
    projection.load_state_dict({"weight": weight, "bias": bias})
    return projection


def load_encoder(model_dir: Path) -> tuple[EncoderWithPooling, PreTrainedTokenizerFast]:
    """Load the encoder (safetensors only, no remote code), its tokenizer and optional projection, in eval mode."""
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise MinnowError(f"{model_dir} has no model.safetensors: expected a folder written by save_pretrained")
    encoder = AutoModel.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    projection_path = model_dir / PROJECTION_FILE
    projection = _load_projection(projection_path, encoder.config.hidden_size) if projection_path.exists() else None
    return EncoderWithPooling(encoder, projection).eval(), tokenizer


def tokenized_batches(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], batch_size: int, max_length: int, tensors: str
) -> Iterator[BatchEncoding]:
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            texts[start : start + batch_size],
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors=tensors,
        )


class TorchEncoder:
    """PyTorch embeddings with the same ``encode`` interface as :class:`OnnxEncoder`."""

    def __init__(self, model: EncoderWithPooling, tokenizer: PreTrainedTokenizerFast) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.dim = model.dim

    @classmethod
    def from_dir(cls, model_dir: Path) -> TorchEncoder:
        return cls(*load_encoder(model_dir))

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """Normalised embeddings, shape [len(texts), dim], computed on whichever device the model is on."""
        device = next(self.model.parameters()).device
        out = [
            self.model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().numpy()
            for batch in tokenized_batches(self.tokenizer, texts, batch_size, max_length, "pt")
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
