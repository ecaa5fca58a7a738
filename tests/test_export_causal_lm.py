"""Causal-LM export: tiny trained Qwen2 and Llama models through the onnxruntime-genai builder, checked against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
import torch
from tiny_models import make_pair, support_tickets
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, T5Config, T5ForConditionalGeneration

from minnow.core.errors import MinnowError
from minnow.core.recipe import Gate
from minnow.export import causal_lm
from minnow.export.causal_lm import check_parity, encode_prompt, export_causal_lm, stream_generate
from minnow.export.genai import load_model
from minnow.export.generate import penalize_repeats, torch_greedy

PROMPTS = ["My printer will not charge. What should I do?", "My router is very slow. What should I do?"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train the tiny models on one thread: two OpenMP threads on a busy 2-core machine run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qwen(tiny_pair, tmp_path_factory) -> dict:
    """The session's trained tiny Qwen2 teacher (standing in for a merged student), exported at fp32, int8 and int4."""
    root = tmp_path_factory.mktemp("qwen")
    results = export_causal_lm(
        tiny_pair["teacher"], root / "onnx", ["fp32", "int8", "int4"], PROMPTS, max_new_tokens=16
    )
    return {**tiny_pair, "onnx": root / "onnx", "results": results}


def test_exports_one_complete_folder_per_precision(qwen):
    assert set(qwen["results"]) == {"fp32", "int8", "int4"}
    assert sorted(p.name for p in qwen["onnx"].iterdir()) == ["fp32", "int4", "int8"]  # no temporary folders left
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


def test_penalize_repeats_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    penalized = penalize_repeats(logits, torch.tensor([0, 1, 1]), 2.0)
    assert penalized.tolist() == [1.0, -4.0, 1.0, 0.5] and logits.tolist() == [2.0, -2.0, 1.0, 0.5]


def test_repetition_penalty_decodes_alike_in_pytorch_transformers_and_onnxruntime_genai(qwen):
    tokenizer = AutoTokenizer.from_pretrained(qwen["teacher"])
    model = AutoModelForCausalLM.from_pretrained(qwen["teacher"]).eval()
    ids, stop = encode_prompt(tokenizer, PROMPTS[0]), {tokenizer.eos_token_id}
    plain = list(torch_greedy(model, ids, 24, stop))
    ours = list(torch_greedy(model, ids, 24, stop, repetition_penalty=2.0))
    assert ours != plain
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        expected = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=24, do_sample=False, repetition_penalty=2.0
        )
    assert ours == expected[0, len(ids) :].tolist()
    assert list(stream_generate(qwen["onnx"] / "fp32", ids, 24, repetition_penalty=2.0)) == ours


def test_int8_and_int4_are_weight_only_matmulnbits_with_an_8bit_lm_head(qwen):
    int8, int4 = matmul_bits(qwen["onnx"] / "int8"), matmul_bits(qwen["onnx"] / "int4")
    assert set(int8) == {8} and len(int8) == len(int4) == 5 * 4 + 1  # qkv, o, gate, up, down in 4 layers; lm_head
    assert set(int4[:-1]) == {4} and int4[-1] == 8
    assert (
        qwen["results"]["int4"]["size_bytes"]
        < qwen["results"]["int8"]["size_bytes"]
        < qwen["results"]["fp32"]["size_bytes"]
    )


@pytest.mark.parametrize("block_size", [32, 64])
def test_tied_embeddings_are_stored_once_at_int4(qwen, tmp_path, block_size):
    tokenizer = AutoTokenizer.from_pretrained(qwen["teacher"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    sequences = chat_sequences(tmp_path / "tied")
    results = export_causal_lm(
        tmp_path / "tied",
        tmp_path / "onnx",
        ["int4"],
        PROMPTS,
        8,
        gate=Gate(),
        gate_sequences=sequences,
        int4_block_size=block_size,
    )
    graph = onnx.load(tmp_path / "onnx" / "int4" / "model.onnx", load_external_data=False).graph
    quantized = [n for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")]
    assert {a.i for n in quantized for a in n.attribute if a.name == "block_size"} == {block_size}
    vocab_sized = [t.name for t in graph.initializer if t.dims and t.dims[0] == len(tokenizer)]
    assert vocab_sized == ["lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales"]  # one 8-bit table, no fp32 copy
    (lookup,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert {"lm_head.MatMul.weight_scales"} <= set(lookup.input)
    assert results["int4"]["gate"]["top1_agreement"] >= 0.9


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


def chat_sequences(model_dir, n: int = 6) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = support_tickets(n, seed=7)
    chats = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in rows]
    return [list(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in chats]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> dict:
    """A trained tiny GPT-2 (not known to the builder: exported through torch.onnx) at fp32, int8 and int4."""
    root = tmp_path_factory.mktemp("gpt2")
    pair = make_pair(root / "models", arch="gpt2", teacher_steps=40)
    sequences = chat_sequences(pair["teacher"])
    results = export_causal_lm(
        pair["teacher"], root / "onnx", ["fp32", "int8", "int4"], PROMPTS, 12, gate=Gate(), gate_sequences=sequences
    )
    return {**pair, "onnx": root / "onnx", "results": results, "sequences": sequences}


@pytest.mark.slow
def test_llama_fp32_matches_pytorch_tokens_and_logits(tmp_path):
    pair = make_pair(tmp_path / "models", arch="llama", teacher_steps=40)
    sequences = chat_sequences(pair["teacher"])
    results = export_causal_lm(
        pair["teacher"], tmp_path / "onnx", ["fp32"], PROMPTS, 12, gate=Gate(), gate_sequences=sequences
    )
    assert_fp32_parity(results["fp32"], sequences)


def assert_fp32_parity(result: dict, sequences: list[list[int]]) -> None:
    """Same greedy tokens as PyTorch on every prompt, logits within 1e-3 at every held-out position."""
    assert result["parity"]["exact_matches"] == len(PROMPTS)
    assert result["gate"]["max_abs_logit_diff"] <= 1e-3
    assert result["gate"]["top1_agreement"] == 1.0
    assert result["gate"]["tokens"] == sum(len(s) - 1 for s in sequences)


def test_gpt2_fp32_matches_pytorch_through_genai_decoder_config(gpt2):
    assert_fp32_parity(gpt2["results"]["fp32"], gpt2["sequences"])
    config = json.loads((gpt2["onnx"] / "fp32" / "genai_config.json").read_text())
    assert config["model"]["type"] == "decoder" and config["model"]["decoder"]["num_hidden_layers"] == 4
    names = [i.name for i in onnx.load(gpt2["onnx"] / "fp32" / "model.onnx", load_external_data=False).graph.input]
    assert names == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(4) for kv in ("key", "value")
    ]


def test_gpt2_quantized_through_matmulnbits(gpt2):
    int8, int4 = matmul_bits(gpt2["onnx"] / "int8"), matmul_bits(gpt2["onnx"] / "int4")
    assert set(int8) == {8} and set(int4) == {4} and len(int8) == len(int4) == 4 * 4  # 4 MatMuls in each of 4 blocks
    graph = onnx.load(gpt2["onnx"] / "int4" / "model.onnx", load_external_data=False).graph
    (head,) = [n for n in graph.node if "logits" in n.output]
    (transpose,) = [n for n in graph.node if head.input[1] in n.output]
    vocab = len(AutoTokenizer.from_pretrained(gpt2["teacher"]))
    (table,) = [t for t in graph.initializer if t.dims and t.dims[0] == vocab]
    assert transpose.input[0] == table.name  # GPT-2's tied lm_head reads the embedding table: stored once, in fp32
    results = gpt2["results"]
    assert results["int4"]["size_bytes"] < results["int8"]["size_bytes"] < results["fp32"]["size_bytes"]
    assert results["int8"]["gate"]["top1_agreement"] >= 0.98 and results["int4"]["gate"]["top1_agreement"] >= 0.9
    ids = encode_prompt(AutoTokenizer.from_pretrained(gpt2["teacher"]), PROMPTS[0])
    assert len(list(stream_generate(gpt2["onnx"] / "int4", ids, 4))) >= 1


def matmul_bits(folder) -> list[int]:
    """Bits of each MatMulNBits node in graph order, after checking block size 32 and accuracy level 4."""
    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    bits = []
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["block_size"] == 32 and attrs["accuracy_level"] == 4, node.name
            bits.append(attrs["bits"])
    assert not [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in {t.name for t in graph.initializer}
    ]
    return bits


def test_unsupported_architecture_is_named(tmp_path):
    T5ForConditionalGeneration(
        T5Config(num_layers=1, d_model=32, d_kv=8, num_heads=2, d_ff=64, vocab_size=64)
    ).save_pretrained(tmp_path / "t5")
    with pytest.raises(
        MinnowError, match="T5ForConditionalGeneration.*not a decoder-only.*supported:.*Qwen2ForCausalLM.*GPT2"
    ):
        export_causal_lm(tmp_path / "t5", tmp_path / "onnx", ["fp32"], PROMPTS)
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("block_size", [32, 128])
def test_tied_head_repair_renames_the_lookups_missing_inputs(tmp_path, block_size):
    """Builder 0.18's tied int4 + 8-bit head graph reads the table as ``..._Q8G<block>`` and ``..._scale``."""
    weights, scales = "lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales"
    initializers = [onnx.numpy_helper.from_array(np.zeros((4, 1, 8), np.uint8), weights)]
    initializers.append(onnx.numpy_helper.from_array(np.ones((4, 1), np.float32), scales))
    nodes = [
        onnx.helper.make_node("Identity", [f"{weights}G{block_size}"], ["table"]),
        onnx.helper.make_node("Identity", ["lm_head.MatMul.weight_scale"], ["table_scales"]),
    ]
    outputs = [
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in ("table", "table_scales")
    ]
    model_file = tmp_path / "model.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], outputs, initializers)), model_file)
    causal_lm.repair_shared_int8_head(model_file)
    assert [list(n.input) for n in onnx.load(model_file).graph.node] == [[weights], [scales]]


def test_unknown_precision_is_rejected(qwen, tmp_path):
    with pytest.raises(MinnowError, match="fp16"):
        export_causal_lm(qwen["teacher"], tmp_path / "onnx", ["fp16"], PROMPTS)


def test_builder_failure_reports_its_output(qwen, tmp_path, monkeypatch):
    monkeypatch.setattr(causal_lm, "BUILDER_MODULE", "minnow_no_such_builder")
    with pytest.raises(MinnowError, match=r"(?s)Qwen2ForCausalLM.*fp32.*No module named minnow_no_such_builder"):
        export_causal_lm(qwen["teacher"], tmp_path / "onnx", ["fp32"], PROMPTS)
    assert not (tmp_path / "onnx" / "fp32").exists()
