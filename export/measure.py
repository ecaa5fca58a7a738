"""Side-by-side figures for every variant of a run (teacher, student, each ONNX precision), same inputs and threads:
speed, energy per request (metered by :class:`minnow.core.energy.EnergyMeter`) and, for embedding runs, quality kept."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from minnow.distill.metrics import agreement
from minnow.core.energy import EnergyMeter
from minnow.core.errors import MinnowError
from minnow.core.rundir import RunDir

from .embedding import OnnxEncoder, TorchEncoder, throughput

MAX_PROMPTS = 8  # held-out prompts each variant answers when measured (and in the demo's benchmark)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure_embedding(
    run: RunDir, texts: list[str], meter: EnergyMeter, timed: int = 256, threads: int | None = None
) -> dict:
    """Agreement with the teacher over ``texts`` and throughput (sentences/s) over the first ``timed`` of them,
    for the teacher, the student and each ONNX precision; energy of embedding all ``texts`` (one request each)."""
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
            sentences_per_s = throughput(encode, texts[:timed])
            with meter.task() as energy:
                embeddings = encode(texts)
            rows[name] = {
                "sentences_per_s": sentences_per_s,
                "size_bytes": folder_bytes(folder),
                "embeddings": embeddings,
                "energy": energy,
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
                "requests": len(texts),
                "energy": r["energy"],
                **agreement(r["embeddings"], teacher["embeddings"]),
            }
            for name, r in rows.items()
        },
    }


def causal_prompts(report: dict[str, Any]) -> list[str]:
    """The run's held-out prompts, as a user would type them (the export's parity prompts), at most MAX_PROMPTS."""
    prompts = report.get("distill", {}).get("parity_prompts", [])
    if not prompts:
        raise MinnowError("report.json has no held-out prompts (distill.parity_prompts); finish the distill stage")
    return prompts[:MAX_PROMPTS]


def measure_causal(run: RunDir, meter: EnergyMeter, threads: int | None = None) -> dict:
    """Greedy generation of ``serve.max_new_tokens`` for each of the demo benchmark's held-out prompts (one request
    each) by the teacher, the student and each ONNX precision, through the demo's own code path: tokens/s, time to
    first token and energy."""
    from .generate import stream_text
    from .variants import compare_variants

    prompts = causal_prompts(run.report())
    threads = threads or os.cpu_count() or 1
    max_new_tokens = run.recipe.serve.max_new_tokens
    rows = {}
    for variant in compare_variants([run]):
        name = "teacher (PyTorch)" if variant.is_teacher else f"student ONNX {variant.precision}" if variant.precision else "student (PyTorch)"
        deque(stream_text(variant, prompts[0], 1, threads), maxlen=0)  # loads the model, untimed
        with meter.task() as energy:
            finals = [deque(stream_text(variant, prompt, max_new_tokens, threads), maxlen=1)[0] for prompt in prompts]
        rows[name] = {
            "tokens_per_s": round(sum(f.tokens for f in finals) / energy["seconds"], 2),
            "ttft_ms": round(mean(f.ttft_ms for f in finals), 2),
            "size_bytes": folder_bytes(Path(variant.path)) if Path(variant.path).is_dir() else None,
            "requests": len(prompts),
            "tokens": sum(f.tokens for f in finals),
            "energy": energy,
        }
    teacher = rows["teacher (PyTorch)"]
    for row in rows.values():
        row["speedup_vs_teacher"] = round(row["tokens_per_s"] / teacher["tokens_per_s"], 3)
    return {"threads": threads, "max_new_tokens": max_new_tokens, "prompts": len(prompts), "variants": rows}
