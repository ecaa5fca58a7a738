"""GGUF models in a recipe: converted once to a Hugging Face folder that gives the GGUF-loaded model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import minnow_here, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.distill.gguf import gguf_folder

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64


def byte_vocab() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: one token per byte."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """A random 2-layer Llama as llama.cpp writes it: fp32 tensors, a byte-level BPE tokenizer, a chat template."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = byte_vocab() + ["he", "ll", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 3) + [3, 3, 3])
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 3)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, *shape: int) -> None:
        data = (
            np.ones(shape, np.float32) if name.endswith("norm.weight") else rng.normal(0, 0.2, shape).astype(np.float32)
        )
        writer.add_tensor(name, data)

    kv = HIDDEN // HEADS * KV_HEADS
    tensor("token_embd.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", HIDDEN)
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", kv, HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", kv, HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_norm.weight", HIDDEN)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    tensor("output_norm.weight", HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MINNOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_converts_to_a_folder_with_the_same_logits(tmp_path, cache):
    file = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = gguf_folder(file)
    assert folder.parent == cache / "gguf" and (folder / "model.safetensors").is_file()
    assert gguf_folder(file) == folder  # cached by content hash: the second call converts nothing

    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello there"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>user\nhello there<|im_end|>")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert (
        ids.tolist()
        == AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)(text, return_tensors="pt").input_ids.tolist()
    )
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert converted.generation_config.eos_token_id == tokenizer.eos_token_id


def test_unsupported_architecture_is_one_error_naming_it(tmp_path, cache):
    file = write_tiny_gguf(tmp_path / "odd.gguf", architecture="notamodel")
    with pytest.raises(MinnowError, match="architecture 'notamodel'"):
        gguf_folder(file)
    assert not list((cache / "gguf").glob("*/config.json"))


def test_recipe_with_a_gguf_teacher_resolves_to_the_converted_folder(tmp_path, cache):
    file = write_tiny_gguf(tmp_path / "teacher.gguf")
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "gguf",
        "task": "causal-lm",
        "teacher": {"path": "teacher.gguf"},
        "student": {"path": "teacher.gguf"},
        "data": {"path": "data.jsonl", "prompt_field": "prompt", "response_field": "response", "heldout": 2},
    }
    done = minnow_here("validate", str(write_recipe(tmp_path / "r.yaml", recipe)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["teacher"]["path"] == resolved["student"]["path"] == str(gguf_folder(file))

    recipe["teacher"] = {"path": "missing.gguf"}
    done = minnow_here("validate", str(write_recipe(tmp_path / "bad.yaml", recipe)), cwd=tmp_path)
    assert done.returncode == 2 and "teacher.path: no such GGUF file" in done.stderr
