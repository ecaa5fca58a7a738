"""Which int8 graph for the embedding student (issue #15): dynamic quantization of the fused graph (Minnow's export
until 2026-12-06), of the traced graph before fusion (Minnow's export since), and static QDQ quantization of the
traced graph (activation scales calibrated on paragraphs outside the timed ones), against the fused fp32 graph
and the teacher's PyTorch, side by side in one process.

Students are cut from all-MiniLM-L6-v2 untrained, as in embedding_speed.py: speed depends on the shape, and parity
is measured to the same student's fused fp32 graph (mean cosine of the sentence embeddings).

    python benchmarks/embedding_int8.py [--shape '[0,5]' --shape '[0,2,5]'] [--threads 1 2] [--rounds 5]
    # writes benchmarks/results/embedding_int8.{md,json}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from minnow.core.recipe import resolve_model_path
from minnow.distill.data import python_docstrings, python_text
from minnow.distill.embedding import derive_student
from minnow.export.embedding import (
    INPUT_NAMES,
    MODEL_FILE,
    OnnxEncoder,
    TorchEncoder,
    fuse_encoder,
    load_encoder,
    quantize_int8,
    tokenized_batches,
    trace_encoder,
)

sys.path.insert(0, str(Path(__file__).parent))
from embedding_speed import ROOT, TEACHER, arguments, importance_batches, label, shape, side_by_side  # noqa: E402

GRAPHS = ("fp32 fused", "int8 dynamic, fused graph", "int8 dynamic, traced graph", "int8 static QDQ, traced graph")


class Calibration(CalibrationDataReader):
    def __init__(self, tokenizer, texts: list[str]) -> None:
        batches = tokenized_batches(tokenizer, texts, 16, 128, "np")
        self.feeds = iter([{name: batch[name].astype(np.int64) for name in INPUT_NAMES} for batch in batches])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def build(student, tokenizer, folder: Path, calibration: list[str]) -> dict[str, Path]:
    """Each graph of :data:`GRAPHS` in its own folder beside the tokenizer, as OnnxEncoder reads them."""
    folder.mkdir(parents=True)
    traced = folder / "traced.onnx"
    trace_encoder(student, tokenizer, traced)
    paths = {graph: folder / str(i) / MODEL_FILE for i, graph in enumerate(GRAPHS)}
    for path in paths.values():
        tokenizer.save_pretrained(path.parent)
    fuse_encoder(traced, student.encoder.config, paths[GRAPHS[0]])
    quantize_int8(paths[GRAPHS[0]], paths[GRAPHS[1]])
    quantize_int8(traced, paths[GRAPHS[2]])
    projection = [node.name for node in onnx.load(traced).graph.node if "projection" in node.name]
    here = os.getcwd()
    os.chdir(folder)  # the calibrator writes its scratch files to the working directory
    try:
        quantize_static(
            str(traced),
            str(paths[GRAPHS[3]]),
            Calibration(tokenizer, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=projection,
        )
    finally:
        os.chdir(here)
    return paths


def main() -> None:
    parser = arguments(__doc__, 256)
    parser.add_argument("--corpus", choices=["python-docstrings", "python-text"], default="python-docstrings")
    args = parser.parse_args()
    paragraphs = sorted(set(python_docstrings() if args.corpus == "python-docstrings" else python_text()))
    texts, calibration = paragraphs[: args.texts], paragraphs[-256:]
    teacher, tok = load_encoder(Path(resolve_model_path(TEACHER, ROOT)))
    importance = importance_batches(tok, texts)
    parity, results = {}, []
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        for index, spec in enumerate(map(shape, args.shape or ["[0,5]", "[0,2,5]"])):
            student = derive_student(teacher, spec, importance)
            paths = build(student, tok, Path(work) / str(index), calibration)
            folders.update({f"[{label(spec)}] {graph}": path.parent for graph, path in paths.items()})
        for threads in args.threads:
            torch.set_num_threads(threads)
            encoders = {"teacher (PyTorch)": TorchEncoder(teacher, tok)}
            encoders |= {name: OnnxEncoder(folder, threads=threads) for name, folder in folders.items()}
            encode = {n: (lambda batch, e=e: e.encode(batch, 16, 128)) for n, e in encoders.items()}
            embeddings = {n: fn(texts) for n, fn in encode.items()}  # also the warm-up
            for name in folders:
                fp32 = embeddings[name.split("] ")[0] + "] " + GRAPHS[0]]
                parity[name] = float((embeddings[name] * fp32).sum(axis=1).mean())
            results += side_by_side(encode, texts, args.rounds, threads)
    load = os.getloadavg()
    md = [
        "# Embedding int8: which graph to quantize, dynamic or static",
        "",
        f"Command: `python benchmarks/embedding_int8.py {' '.join(sys.argv[1:])}`. {len(texts)} {args.corpus} paragraphs, "
        f"batch 16, max 128 tokens; {args.rounds} rounds alternating every variant in one process; median of "
        f"per-round ratios to the teacher. Static activation scales calibrated on 256 other paragraphs. Parity: mean "
        f"cosine to the same student's fused fp32 graph. Load average when it finished: {load[0]:.1f} on "
        f"{os.cpu_count()} cores.",
        "",
        "| threads | variant | sentences/s (median) | × teacher PyTorch | parity to fp32 |",
        "|---|---|---|---|---|",
        *(
            f"| {r['threads']} | {r['variant']} | {r['sentences_per_s']:.1f} | **{r['speedup_vs_teacher']:.2f}x** | "
            + (f"{parity[r['variant']]:.4f}" if r["variant"] in parity else "—")
            + " |"
            for r in results
        ),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "embedding_int8" + ("" if args.corpus == "python-docstrings" else "_" + args.corpus.replace("-", "_"))
    (args.out / f"{stem}.md").write_text("\n".join(md))
    (args.out / f"{stem}.json").write_text(json.dumps({"parity": parity, "results": results}, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
