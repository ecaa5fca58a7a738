"""Export a sentence-embedding student to ONNX: one graph with two outputs, the token vectors
(``last_hidden_state``, what sentence-transformers' ONNX backend, Optimum and transformers.js read) and the
pooled, projected and normalised ``sentence_embedding`` (what Minnow reads).

The student folder is a sentence-transformers model (see :mod:`minnow.distill.encoder`). The graph is traced by
the TorchScript exporter with eager attention, a form whose attention, LayerNorm and GELU patterns onnxruntime's
transformer optimizer recognises and fuses into fp32; int8 is dynamic per-channel quantization of the traced graph
before fusion, which onnxruntime runs as fast or faster than the quantized fused graph (1.04x at 2 threads, 1.12x at
one) with standard ONNX operators only, so runtimes without Microsoft's contrib operators load it too. Both
files are also placed in the student folder as ``onnx/model.onnx`` and ``onnx/model_quantized.onnx``, the layout
sentence-transformers (``backend="onnx"``), Optimum and transformers.js look for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

from minnow.core.errors import MinnowError
from minnow.core.measures import sentences_per_s
from minnow.distill.encoder import EncoderWithPooling, TorchEncoder, load_encoder, tokenized_batches
from minnow.export.precisions import export_precisions

SUPPORTED_PRECISIONS = ("fp32", "int8")
PARITY_THRESHOLDS = {"fp32": 0.999, "int8": 0.99}
MODEL_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")
ECOSYSTEM_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_quantized.onnx"}  # inside the student folder
FUSED_OPS = (
    "EmbedLayerNormalization",
    "Attention",
    "SkipLayerNormalization",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "LayerNormalization",
)


class OnnxEncoder:
    """onnxruntime embeddings from an exported folder (``model.onnx`` + tokenizer files)."""

    def __init__(self, model_dir: Path, threads: int | None = None, provider: str = "CPUExecutionProvider") -> None:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(Path(model_dir) / MODEL_FILE), options, providers=[provider])
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.dim = {o.name: o.shape[-1] for o in self.session.get_outputs()}[OUTPUT_NAMES[1]]

    def encode(self, texts: list[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """Normalised embeddings, shape [len(texts), dim]."""
        out = [
            self.session.run([OUTPUT_NAMES[1]], {name: batch[name].astype(np.int64) for name in INPUT_NAMES})[0]
            for batch in tokenized_batches(self.tokenizer, texts, batch_size, max_length, "np")
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def throughput(encode: Callable[[list[str]], np.ndarray], texts: list[str], repeats: int = 3) -> float:
    """Sentences per second: one warm-up pass, then the best of ``repeats`` timed passes over ``texts``."""
    encode(texts)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return sentences_per_s(len(texts), best)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's progress prints, warnings and log lines; errors still raise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class _TokensAndSentence(torch.nn.Module):
    """The graph exported: token vectors and the sentence embedding, from one encoder pass."""

    def __init__(self, model: EncoderWithPooling) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, self.model.pool(hidden, attention_mask)


def trace_encoder(model: EncoderWithPooling, tokenizer: PreTrainedTokenizerFast, traced: Path) -> None:
    """Trace to ONNX with the TorchScript exporter on eager attention: the MatMul/Softmax/LayerNorm/Erf patterns the
    optimizer's BERT fusions match (the dynamo exporter's graph matched none, and ran slower than PyTorch)."""
    model.encoder.set_attn_implementation("eager")
    # Two texts of different lengths, so the example has padding and neither axis is specialised to 1.
    texts = ["a short example", "a somewhat longer example sentence to pad against"]
    sample = tokenizer(texts, padding="longest", return_tensors="pt")
    tokens = {0: "batch", 1: "sequence"}
    with _quiet():
        torch.onnx.export(
            _TokensAndSentence(model),
            (sample["input_ids"], sample["attention_mask"]),
            str(traced),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "input_ids": tokens,
                "attention_mask": tokens,
                OUTPUT_NAMES[0]: tokens,
                OUTPUT_NAMES[1]: {0: "batch"},
            },
            opset_version=17,
        )


def fuse_encoder(traced: Path, config: PretrainedConfig, path: Path) -> dict[str, int]:
    """Fuse with onnxruntime's transformer optimizer; the count of each fused operator."""
    with _quiet():
        fused = optimize_model(
            str(traced), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        fused.save_model_to_file(str(path))
    counts = fused.get_fused_operator_statistics()
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 (per-channel weights) of an fp32 graph, leaving the projection in fp32.

    The projection's input is a single pooled vector per sentence; its few outlier dimensions would set the
    per-tensor activation scale and wash out the rest (measured with a random 384 -> 256 projection: mean
    cosine 0.98 instead of 0.996).
    """
    graph = onnx.load(fp32_path, load_external_data=False).graph
    projection = [node.name for node in graph.node if "projection" in node.name]
    # quantize_dynamic first rewrites each Gemm as a MatMul named "<name>_MatMul" plus an Add.
    exclude = projection + [f"{name}_MatMul" for name in projection]
    with _quiet():
        quantize_dynamic(
            fp32_path,
            out_path,
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops carry no inferred types
        )


def _link(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source`` (a hard link; a copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _parity(precision: str, got: np.ndarray, reference: np.ndarray, threshold: float) -> dict[str, float]:
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    cosines = (got * reference).sum(axis=1) / np.maximum(norms, 1e-12)
    mean, low = float(cosines.mean()), float(cosines.min())
    if mean < threshold:
        raise MinnowError(
            f"{precision} ONNX export failed parity: mean cosine to PyTorch {mean:.5f} < threshold {threshold}"
        )
    return {"mean_cosine": mean, "min_cosine": low, "threshold": threshold}


class EmbeddingExport:
    """Encoder export of one student, traced once: fp32 is the fused graph, int8 the dynamic quantization of the
    traced one; the check compares each with PyTorch's embeddings and places the passing file in the student folder
    too."""

    def __init__(
        self,
        student_dir: Path,
        model: EncoderWithPooling,
        tokenizer: PreTrainedTokenizerFast,
        scratch: Path,
        parity_texts: list[str],
        thresholds: dict[str, float],
    ) -> None:
        self.student_dir, self.tokenizer, self.texts, self.thresholds = (
            Path(student_dir),
            tokenizer,
            parity_texts,
            thresholds,
        )
        self.reference = TorchEncoder(model, tokenizer).encode(parity_texts)
        self.traced_path, self.fp32_path = scratch / "traced.onnx", scratch / MODEL_FILE
        trace_encoder(model, tokenizer, self.traced_path)
        self.fused = fuse_encoder(self.traced_path, model.encoder.config, self.fp32_path)

    def write(self, precision: str, folder: Path) -> None:
        if precision == "fp32":
            shutil.copyfile(self.fp32_path, folder / MODEL_FILE)
        else:
            quantize_int8(self.traced_path, folder / MODEL_FILE)
        self.tokenizer.save_pretrained(folder)

    def check(self, precision: str, folder: Path) -> dict:
        got = OnnxEncoder(folder).encode(self.texts)
        parity = _parity(precision, got, self.reference, self.thresholds[precision])
        # A hard link to the file about to be renamed into place: the same file once it is there.
        _link(folder / MODEL_FILE, self.student_dir / ECOSYSTEM_FILES[precision])
        return {
            "parity": parity,
            **({"fused_operators": self.fused} if precision == "fp32" else {}),
            "student_file": f"{self.student_dir.name}/{ECOSYSTEM_FILES[precision]}",
        }


def export_embedding(
    student_dir: Path,
    onnx_root: Path,
    precisions: list[str],
    parity_texts: list[str],
    thresholds: dict[str, float] | None = None,
) -> dict:
    """Write ``onnx_root/<precision>/`` (model.onnx + tokenizer) for each precision, each gated on parity, and
    link each file into the student folder under its :data:`ECOSYSTEM_FILES` name.

    ``thresholds`` overrides entries of :data:`PARITY_THRESHOLDS` (mean cosine to PyTorch on ``parity_texts``).
    Each folder appears whole or not at all. Returned paths are relative to ``onnx_root.parent``.
    """
    unknown = sorted(set(precisions) - set(SUPPORTED_PRECISIONS))
    if unknown or not precisions:
        raise MinnowError(f"precisions must be a non-empty subset of {SUPPORTED_PRECISIONS}; got {precisions}")
    if not parity_texts:
        raise MinnowError("parity_texts is empty: the export cannot be checked against PyTorch")
    model, tokenizer = load_encoder(student_dir)
    with tempfile.TemporaryDirectory() as scratch:
        task = EmbeddingExport(
            student_dir, model, tokenizer, Path(scratch), parity_texts, {**PARITY_THRESHOLDS, **(thresholds or {})}
        )
        return export_precisions(task, Path(onnx_root), precisions)
