"""Causal-LM export: tiny trained Qwen2 and Llama models through the onnxruntime-genai builder, checked against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime_genai as og
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from export import causal_lm
from export.causal_lm import check_parity, encode_prompt, export_causal_lm, load_model, stream_generate
from minnow.errors import MinnowError
from tiny_models import make_pair

PROMPTS = ["My printer will not charge. What should I do?", "My router is very slow. What should I do?"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train the tiny models on one thread: two OpenMP threads on a busy 2-core machine run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> dict:
    """The trained tiny Qwen2 teacher (standing in for a merged student), exported at fp32 and int4."""
    root = tmp_path_factory.mktemp("qwen")
    pair = make_pair(root / "models")
    results = export_causal_lm(pair["teacher"], root / "onnx", ["fp32", "int4"], PROMPTS, max_new_tokens=16)
    return {**pair, "onnx": root / "onnx", "results": results}


def test_exports_one_complete_folder_per_precision(qwen):
    assert set(qwen["results"]) == {"fp32", "int4"}
    assert sorted(p.name for p in qwen["onnx"].iterdir()) == ["fp32", "int4"]  # no temporary folders left
    for precision, result in qwen["results"].items():
        folder = qwen["onnx"] / precision
        assert result["path"] == f"onnx/{precision}"
        for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"):
            assert (folder / name).is_file(), name
        assert result["size_bytes"] == sum(f.stat().st_size for f in folder.iterdir())
    student_config = json.loads((qwen["teacher"] / "config.json").read_text())
    genai_config = json.loads((qwen["onnx"] / "fp32" / "genai_config.json").read_text())
    assert genai_config["search"]["max_length"] <= student_config["max_position_embeddings"]


def test_fp32_greedy_tokens_and_logits_match_pytorch(qwen):
    parity = qwen["results"]["fp32"]["parity"]
    assert parity == {"prompts": len(PROMPTS), "exact_matches": len(PROMPTS), "token_agreement": 1.0}

    tokenizer = AutoTokenizer.from_pretrained(qwen["teacher"])
    model = AutoModelForCausalLM.from_pretrained(qwen["teacher"]).eval()
    ids = encode_prompt(tokenizer, PROMPTS[0])
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        expected = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=16, do_sample=False)
        torch_logits = model(inputs).logits[0, -1].numpy()
    assert list(stream_generate(qwen["onnx"] / "fp32", ids, 16)) == expected[0, len(ids) :].tolist()

    onnx_model = og.Model(str(qwen["onnx"] / "fp32"))
    params = og.GeneratorParams(onnx_model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(onnx_model, params)
    generator.append_tokens(ids)
    onnx_logits = generator.get_output("logits")[0, -1]
    assert np.abs(onnx_logits - torch_logits).max() <= 1e-3


def test_int4_is_smaller_and_reports_agreement(qwen):
    int4, fp32 = qwen["results"]["int4"], qwen["results"]["fp32"]
    assert int4["size_bytes"] < fp32["size_bytes"]
    assert 0.0 <= int4["parity"]["token_agreement"] <= 1.0
    assert 0 <= int4["parity"]["exact_matches"] <= len(PROMPTS)


def test_stream_generate_streams_ints_and_caches_the_model(qwen):
    folder = qwen["onnx"] / "fp32"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = encode_prompt(tokenizer, PROMPTS[1])
    stream = stream_generate(folder, ids, max_new_tokens=4, threads=1)
    assert all(isinstance(token, int) for token in stream)
    assert list(stream_generate(folder, ids, 8, threads=1))[:4] == list(stream_generate(folder, ids, 4))
    assert load_model(folder.resolve(), 1) is load_model(folder.resolve(), 1)
    assert list(stream_generate(folder, ids, 0)) == []


def test_onnx_folder_tokenizes_like_the_student(qwen):
    text = "My camera 404 shows an error code!  Café, naïve"
    onnx_ids = og.Tokenizer(load_model((qwen["onnx"] / "fp32").resolve())).encode(text)
    assert onnx_ids.tolist() == AutoTokenizer.from_pretrained(qwen["teacher"])(text)["input_ids"]


def test_parity_against_another_model_raises(qwen):
    with pytest.raises(MinnowError, match=r"fp32.*My printer will not charge.*position \d+"):
        check_parity(qwen["onnx"] / "fp32", qwen["student"], PROMPTS[:1], max_new_tokens=8)


def test_llama_fp32_matches_pytorch(tmp_path):
    pair = make_pair(tmp_path / "models", arch="llama", teacher_steps=40)
    results = export_causal_lm(pair["teacher"], tmp_path / "onnx", ["fp32"], PROMPTS[:1], max_new_tokens=12)
    assert results["fp32"]["parity"]["exact_matches"] == 1


def test_unsupported_architecture_is_named(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(MinnowError, match="GPT2LMHeadModel.*supported:.*Qwen2ForCausalLM"):
        export_causal_lm(tmp_path / "gpt2", tmp_path / "onnx", ["fp32"], PROMPTS)
    assert not (tmp_path / "onnx").exists()


def test_unknown_precision_is_rejected(qwen, tmp_path):
    with pytest.raises(MinnowError, match="fp16"):
        export_causal_lm(qwen["teacher"], tmp_path / "onnx", ["fp16"], PROMPTS)


def test_builder_failure_reports_its_output(qwen, tmp_path, monkeypatch):
    monkeypatch.setattr(causal_lm, "BUILDER_MODULE", "minnow_no_such_builder")
    with pytest.raises(MinnowError, match=r"(?s)Qwen2ForCausalLM.*fp32.*No module named minnow_no_such_builder"):
        export_causal_lm(qwen["teacher"], tmp_path / "onnx", ["fp32"], PROMPTS)
    assert not (tmp_path / "onnx" / "fp32").exists()
