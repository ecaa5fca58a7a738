"""A sentence encoder as Minnow distills it: a Hugging Face encoder, attention-masked mean pooling, an optional
projection to the teacher's width and L2 normalisation.

On disk it is a sentence-transformers model folder (``modules.json``: Transformer, Pooling, an optional Dense with
identity activation for the projection, Normalize), so ``SentenceTransformer(folder)`` gives the same embeddings.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerFast

from minnow.core.errors import MinnowError


class EncoderWithPooling(torch.nn.Module):
    """Encoder + attention-masked mean pooling (+ optional projection) + L2 normalisation."""

    def __init__(self, encoder: PreTrainedModel, projection: torch.nn.Linear | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    @property
    def dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.encoder.config.hidden_size

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token vectors [batch, seq, hidden] → normalised sentence embeddings [batch, dim]."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled, p=2, dim=-1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_states: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Sentence embeddings; with ``return_states``, also the token vectors [batch, seq, hidden] entering the first
        layer and leaving each layer (the last are the pooled ones)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=return_states)
        pooled = self.pool(out.last_hidden_state, attention_mask)
        return (pooled, out.hidden_states) if return_states else pooled


def _load_projection(model_dir: Path, in_features: int) -> torch.nn.Linear | None:
    """The Dense module of a sentence-transformers folder as a Linear layer (identity activation only), or None."""
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    dense = [m for m in modules if m["type"].rsplit(".", 1)[-1] == "Dense"]
    if not dense:
        return None
    from sentence_transformers.sentence_transformer.modules import Dense

    layer = Dense.load(str(model_dir / dense[0]["path"]))
    where = model_dir / dense[0]["path"]
    if len(dense) > 1 or not isinstance(layer.activation_function, torch.nn.Identity):
        raise MinnowError(f"{where}: Minnow supports one Dense module with identity activation after pooling")
    if layer.in_features != in_features:
        raise MinnowError(f"{where}: Dense takes {layer.in_features} inputs but the encoder outputs {in_features}")
    return layer.linear


def load_encoder(model_dir: Path) -> tuple[EncoderWithPooling, PreTrainedTokenizerFast]:
    """Load the encoder (safetensors only, no remote code), its tokenizer and optional Dense projection, in eval mode."""
    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise MinnowError(f"{model_dir} has no model.safetensors: expected a folder written by save_pretrained")
    encoder = AutoModel.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    projection = _load_projection(model_dir, encoder.config.hidden_size)
    return EncoderWithPooling(encoder, projection).eval(), tokenizer


def save_sentence_transformer(
    model: EncoderWithPooling, tokenizer: PreTrainedTokenizerFast, folder: Path, max_seq_len: int
) -> None:
    """Write ``model`` into ``folder`` as a sentence-transformers model: Transformer, Pooling (mean), Dense (the
    projection, identity activation) when there is one, Normalize; written by the library's own ``save``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    with tempfile.TemporaryDirectory() as hf:
        model.encoder.save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        modules: list[torch.nn.Module] = [Transformer(hf, max_seq_length=max_seq_len)]
        modules.append(Pooling(model.encoder.config.hidden_size, pooling_mode="mean"))
        if model.projection is not None:
            p = model.projection
            modules.append(
                Dense(
                    p.in_features,
                    p.out_features,
                    activation_function=None,
                    init_weight=p.weight.detach().cpu(),
                    init_bias=p.bias.detach().cpu(),
                )
            )
        modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(folder), create_model_card=False)


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
