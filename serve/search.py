"""Semantic search over a run's corpus with one embedding variant; corpus embeddings are computed once and kept.

Index embeddings stay in memory and are also saved under ``RUN_DIR/serve_cache/`` (keyed by the model files'
sizes and times and the corpus content), so a restarted demo does not embed the corpus again.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.rundir import jsonl_rows
from minnow.distill.encoder import TorchEncoder
from minnow.distill.models import local_model_dir
from minnow.export.embedding import OnnxEncoder
from minnow.export.variants import SearchGroup, Variant, cached, corpus_digest


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float


@dataclass(frozen=True)
class Result:
    hits: list[Hit]
    latency_ms: float


def load_corpus(file: Path) -> list[dict[str, str]]:
    """The demo corpus rows ({"id", "text"}), read once per content."""
    return cached(("corpus", str(file), corpus_digest(file)), lambda: jsonl_rows(file))


def encoder(variant: Variant, threads: int) -> TorchEncoder | OnnxEncoder:
    """The variant's encoder (ONNX sessions are made per thread count; PyTorch takes ``threads`` globally)."""
    if variant.precision:
        model_file = Path(variant.path) / "model.onnx"
        if not model_file.is_file():
            raise MinnowError(f"{model_file} is missing; export it again with `minnow export RUN_DIR`")
        provider = variant.run.recipe.export.execution_provider
        return cached(
            ("onnx-encoder", variant.key, threads), lambda: OnnxEncoder(Path(variant.path), threads, provider)
        )
    torch.set_num_threads(threads)
    revision = variant.spec.revision if variant.spec else None
    return cached(
        ("torch-encoder", variant.key), lambda: TorchEncoder.from_dir(local_model_dir(variant.path, revision))
    )


def search(variant: Variant, corpus_file: Path, query: str, k: int, threads: int) -> Result:
    """Top-``k`` corpus rows by cosine similarity; the latency covers embedding the query and ranking."""
    rows = load_corpus(corpus_file)
    model = encoder(variant, threads)
    index = corpus_index(variant, model, rows, corpus_file)
    start = time.perf_counter()
    scores = index @ model.encode([query], max_length=variant.run.recipe.distill.max_seq_len)[0]
    top = np.argsort(-scores, kind="stable")[:k]
    latency_ms = (time.perf_counter() - start) * 1000
    return Result([Hit(rows[i]["id"], rows[i]["text"], float(scores[i])) for i in top], latency_ms)


def corpus_index(
    variant: Variant, model: TorchEncoder | OnnxEncoder, rows: list[dict[str, str]], corpus_file: Path
) -> np.ndarray:
    """Normalised corpus embeddings [len(rows), dim]: from memory, else from the saved file, else computed."""
    file = variant.run.serve_cache / f"{variant.slug}-{_fingerprint(variant, corpus_file)}.npy"

    def load_or_embed() -> np.ndarray:
        if file.is_file():
            return np.load(file)
        index = model.encode([row["text"] for row in rows], max_length=variant.run.recipe.distill.max_seq_len)
        _save(file, index)
        return index

    return cached(("index", str(file)), load_or_embed)


def warm_indexes(groups: list[SearchGroup], threads: int) -> None:
    """Index every group's corpus with every variant now (saved under serve_cache/), so the first query is fast.

    A variant that cannot load is left for its first query to report in the page.
    """
    for group in groups:
        rows = load_corpus(group.corpus)
        for variant in group.variants:
            print(f"indexing {len(rows)} corpus texts with {variant.label}", flush=True)
            try:
                corpus_index(variant, encoder(variant, threads), rows, group.corpus)
            except Exception as e:  # noqa: BLE001 — any broken artefact; the page shows it on use
                print(f"  {variant.label} could not index: {e}", flush=True)


def _fingerprint(variant: Variant, corpus_file: Path) -> str:
    digest = hashlib.sha256(corpus_digest(corpus_file).encode())
    folder = Path(variant.path)
    for f in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _save(file: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic.write_bytes(file, buffer.getvalue())
