"""A sentence encoder as Minnow distills it: a Hugging Face encoder, attention-masked mean pooling, an optional
projection to the teacher's width and L2 normalisation.

On disk it is a sentence-transformers model folder (``modules.json``: Transformer, Pooling, an optional Dense with
identity activation for the projection, Normalize), so ``SentenceTransformer(folder)`` gives the same embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerFast

from minnow.core import atomic
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


ST_MODULE = "sentence_transformers.models.{}"  # the module names every sentence-transformers release loads (2.x–6.x)
IDENTITY = "torch.nn.modules.linear.Identity"  # the Dense activation, as sentence-transformers names it


def save_sentence_transformer(
    model: EncoderWithPooling, tokenizer: PreTrainedTokenizerFast, folder: Path, max_seq_len: int
) -> None:
    """Write ``model`` into ``folder`` as a sentence-transformers model: the Hugging Face encoder and its tokenizer at
    the top (Transformer), Pooling (mean), Dense (the projection, identity activation) when there is one, Normalize.

    The layout and configs are the classic ones the hub's models use (all-MiniLM-L6-v2's own folder among them),
    which every sentence-transformers release reads: 6.x's own ``save`` writes module paths and configs that 5.x
    cannot load, and 5.x is what Optimum's ONNX backend runs with (it needs transformers < 4.58).
    """
    model.encoder.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    atomic.write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_len, "do_lower_case": False})
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling = {"word_embedding_dimension": model.encoder.config.hidden_size}
    pooling |= {f"pooling_mode_{mode}": mode == "mean_tokens" for mode in modes} | {"include_prompt": True}
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    atomic.write_json(folder / "1_Pooling" / "config.json", pooling)
    if model.projection is not None:
        p = model.projection
        modules.append(("2_Dense", "Dense"))
        dense = {"in_features": p.in_features, "out_features": p.out_features, "bias": p.bias is not None}
        atomic.write_json(folder / "2_Dense" / "config.json", dense | {"activation_function": IDENTITY})
        weights = {f"linear.{name}": t.detach().cpu().contiguous() for name, t in p.named_parameters()}
        save_file(weights, str(folder / "2_Dense" / "model.safetensors"))
    modules.append((f"{len(modules)}_Normalize", "Normalize"))
    atomic.write_json(
        folder / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": ST_MODULE.format(kind)}
            for i, (path, kind) in enumerate(modules)
        ],
    )
    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}  # what wrote the weights
    atomic.write_json(
        folder / "config_sentence_transformers.json",
        {"__version__": versions, "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


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
