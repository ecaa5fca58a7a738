"""Side-by-side figures for every variant of a run (teacher, student, each ONNX precision), same inputs and threads:
speed, energy per request (metered by :class:`minnow.core.energy.EnergyMeter`) and, for embedding runs, quality kept."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from statistics import mean

import torch

from minnow.core.energy import EnergyMeter
from minnow.core.errors import MinnowError
from minnow.core.measures import size_on_disk
from minnow.core.report_schema import Report, variant_key
from minnow.core.rundir import RunDir
from minnow.distill.encoder import TorchEncoder
from minnow.distill.metrics import agreement, rouge_l, seq_rep
from minnow.distill.models import local_model_dir

from .embedding import ECOSYSTEM_FILES, OnnxEncoder, throughput
from .generate import final_answers, stream_text
from .generate import throughput as generation_throughput
from .variants import compare_variants


def heldout_prompts(report: Report, limit: int) -> list[str]:
    """The run's held-out prompts, as a user would type them (the distill stage's parity prompts), at most ``limit``."""
    prompts = report.distill.parity_prompts if report.distill else []
    if not prompts:
        raise MinnowError("report.json has no held-out prompts (distill.parity_prompts); finish the distill stage")
    return prompts[:limit]


def measure_embedding(
    run: RunDir, texts: list[str], meter: EnergyMeter, threads: int | None = None, unseen: list[str] | None = None
) -> dict:
    """Agreement with the teacher over ``texts`` and throughput (sentences/s) over the first ``export.timed_texts``
    of them, for the teacher, the student and each ONNX precision; energy of embedding all ``texts`` (one request
    each). With ``unseen`` texts (another domain, never trained on), each variant's agreement on them too."""
    threads = threads or os.cpu_count() or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg, timed = run.recipe.distill, run.recipe.export.timed_texts
    try:
        teacher_dir = local_model_dir(run.recipe.teacher.path, run.recipe.teacher.revision)
        variants = {
            variant_key("teacher"): (TorchEncoder.from_dir(teacher_dir), teacher_dir),
            variant_key("student"): (TorchEncoder.from_dir(run.student), run.student),
        }
        for precision in run.recipe.export.precisions:
            folder = run.onnx / precision
            variants[variant_key("student", precision)] = (
                OnnxEncoder(folder, threads, run.recipe.export.execution_provider),
                folder,
            )
        rows = {}
        for name, (encoder, folder) in variants.items():
            encode = lambda batch, e=encoder: e.encode(batch, cfg.eval_batch_size, cfg.max_seq_len)  # noqa: E731
            sentences_per_s = throughput(encode, texts[:timed])
            with meter.task() as energy:
                embeddings = encode(texts)
            rows[name] = {
                "unseen_embeddings": encode(unseen) if unseen else None,
                "sentences_per_s": sentences_per_s,
                "size_bytes": size_on_disk(folder, exclude=Path(ECOSYSTEM_FILES["fp32"]).parent),  # not the ONNX copies
                "embeddings": embeddings,
                "energy": energy,
            }
    finally:
        torch.set_num_threads(previous)
    teacher = rows[variant_key("teacher")]
    return {
        "threads": threads,
        "batch_size": cfg.eval_batch_size,
        "texts": len(texts),
        "timed_texts": min(timed, len(texts)),
        **({"unseen_texts": len(unseen)} if unseen else {}),
        "variants": {
            name: {
                "sentences_per_s": round(r["sentences_per_s"], 2),
                "speedup_vs_teacher": round(r["sentences_per_s"] / teacher["sentences_per_s"], 3),
                "size_bytes": r["size_bytes"],
                "requests": len(texts),
                "energy": r["energy"],
                **agreement(r["embeddings"], teacher["embeddings"]),
                **({"unseen": agreement(r["unseen_embeddings"], teacher["unseen_embeddings"])} if unseen else {}),
            }
            for name, r in rows.items()
        },
    }


def measure_causal(run: RunDir, meter: EnergyMeter, threads: int | None = None) -> dict:
    """Greedy generation of ``serve.max_new_tokens`` for each of ``serve.benchmark_prompts`` held-out prompts (one
    request each) by the teacher, the student and each ONNX precision, through the demo's own code path: tokens/s,
    time to first token, energy, and ROUGE-L of each variant's answers against the teacher's (the teacher runs
    first)."""
    prompts = heldout_prompts(run.report(), run.recipe.serve.benchmark_prompts)
    threads = threads or os.cpu_count() or 1
    max_new_tokens, penalty = run.recipe.serve.max_new_tokens, run.recipe.serve.repetition_penalty
    rows, teacher_texts = {}, []
    for variant in compare_variants([run]):
        name = variant_key("teacher" if variant.is_teacher else "student", variant.precision)
        deque(stream_text(variant, prompts[0], 1, threads), maxlen=0)  # loads the model, untimed
        with meter.task() as energy:
            finals = final_answers(variant, prompts, max_new_tokens, threads, penalty)
        tokens_per_s, ttft_ms = generation_throughput(finals)
        teacher_texts = teacher_texts or [f.text for f in finals]
        rows[name] = {
            "tokens_per_s": round(tokens_per_s, 2),
            "ttft_ms": round(ttft_ms, 2),
            "size_bytes": variant.size_bytes,
            "requests": len(prompts),
            "tokens": sum(f.tokens for f in finals),
            "energy": energy,
            "rouge_l_vs_teacher": round(mean(rouge_l(f.text, t) for f, t in zip(finals, teacher_texts)), 4),
            "seq_rep_3": round(mean(seq_rep(f.text) for f in finals), 4),
        }
    teacher = rows[variant_key("teacher")]
    for row in rows.values():
        row["speedup_vs_teacher"] = round(row["tokens_per_s"] / teacher["tokens_per_s"], 3)
    return {
        "threads": threads,
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": penalty,
        "prompts": len(prompts),
        "variants": rows,
    }
