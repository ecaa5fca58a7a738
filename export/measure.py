"""Side-by-side figures for every variant of an embedding run: quality kept and throughput, same texts and threads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from distill.metrics import agreement
from minnow.rundir import RunDir

from .embedding import OnnxEncoder, TorchEncoder, throughput


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure_embedding(run: RunDir, texts: list[str], timed: int = 256, threads: int | None = None) -> dict:
    """Agreement with the teacher over ``texts`` and throughput (sentences/s) over the first ``timed`` of them,
    for the teacher, the student and each ONNX precision."""
    threads = threads or os.cpu_count() or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = run.recipe.distill
        variants = {
            "teacher (PyTorch)": (TorchEncoder.from_dir(Path(run.recipe.teacher.path)), Path(run.recipe.teacher.path)),
            "student (PyTorch)": (TorchEncoder.from_dir(run.student), run.student),
        }
        for precision in run.recipe.export.precisions:
            variants[f"student ONNX {precision}"] = (OnnxEncoder(run.onnx / precision, threads=threads), run.onnx / precision)
        rows = {}
        for name, (encoder, folder) in variants.items():
            encode = lambda batch, e=encoder: e.encode(batch, cfg.eval_batch_size, cfg.max_seq_len)  # noqa: E731
            rows[name] = {
                "sentences_per_s": throughput(encode, texts[:timed]),
                "size_bytes": folder_bytes(folder),
                "embeddings": encode(texts),
            }
    finally:
        torch.set_num_threads(previous)
    teacher = rows["teacher (PyTorch)"]
    return {
        "threads": threads,
        "batch_size": cfg.eval_batch_size,
        "texts": len(texts),
        "timed_texts": min(timed, len(texts)),
        "variants": {
            name: {
                "sentences_per_s": round(r["sentences_per_s"], 2),
                "speedup_vs_teacher": round(r["sentences_per_s"] / teacher["sentences_per_s"], 3),
                "size_bytes": r["size_bytes"],
                **agreement(r["embeddings"], teacher["embeddings"]),
            }
            for name, r in rows.items()
        },
    }
