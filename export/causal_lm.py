"""Causal-LM export: a merged Hugging Face student folder to ONNX with a KV cache, one folder per precision.

The onnxruntime-genai model builder does the conversion (and int8/int4 weight-only quantization); each folder it
writes (model.onnx + model.onnx.data, genai_config.json, tokenizer files) is checked against PyTorch greedy decoding
before it replaces the previous one. ``stream_generate`` decodes from such a folder token by token for the demo.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import onnxruntime_genai as og
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from minnow.atomic import output_dir
from minnow.errors import MinnowError

SUPPORTED_PRECISIONS = ("fp32", "int8", "int4")
BUILDER_MODULE = "onnxruntime_genai.models.builder"
# Weight-only (MatMulNBits) quantization: blocks of 32 weights, int8 activations in the MatMul (accuracy level 4).
# onnxruntime-genai >= 0.18 names these block_size/accuracy_level; it silently ignores the old int4_-prefixed names.
QUANTIZATION_OPTIONS = ("block_size=32", "accuracy_level=4")
BUILDER_OUTPUT_LINES = 15


@dataclass(frozen=True)
class Reference:
    """PyTorch's greedy continuation of one prompt."""

    prompt: str
    prompt_ids: list[int]
    tokens: list[int]


def export_causal_lm(
    student_dir: Path,
    onnx_root: Path,
    precisions: list[str],
    parity_prompts: list[str],
    max_new_tokens: int = 16,
) -> dict:
    """Write ``onnx_root/<precision>/`` for each precision and return, per precision, its path, size and parity.

    fp32 must reproduce PyTorch's greedy tokens exactly (MinnowError otherwise, and the folder is not written);
    for int8/int4 the fraction of agreeing token positions is recorded.
    """
    unknown = [p for p in precisions if p not in SUPPORTED_PRECISIONS]
    if unknown:
        raise MinnowError(f"unknown export precision {unknown[0]!r}; choose from {', '.join(SUPPORTED_PRECISIONS)}")
    architecture = check_architecture(student_dir)
    results: dict[str, dict] = {}
    references: list[Reference] | None = None
    for precision in dict.fromkeys(precisions):
        with output_dir(onnx_root / precision) as folder:
            _build(student_dir, folder, precision, architecture)
            if references is None:
                # The builder settles the stop tokens (it adds the tokenizer's end-of-turn token), so PyTorch's
                # reference decoding is computed once the first folder exists, with that folder's stop tokens.
                references = greedy_references(student_dir, parity_prompts, max_new_tokens, _eos_token_ids(folder))
            parity = compare_to_references(folder, references, max_new_tokens, precision)
        results[precision] = {
            "path": f"{onnx_root.name}/{precision}",
            "size_bytes": sum(f.stat().st_size for f in (onnx_root / precision).rglob("*") if f.is_file()),
            "parity": parity,
        }
    return results


@functools.cache
def builder_architectures() -> tuple[str, ...]:
    """Architectures the installed model builder exports; it keeps no list, so read the dispatch in create_model."""
    source = (Path(og.__file__).parent / "models" / "builder.py").read_text(encoding="utf-8")
    return tuple(sorted(set(re.findall(r'config\.architectures\[0\] == "(\w+)"', source))))


def check_architecture(model_dir: Path) -> str:
    """The model's architecture from its config.json; MinnowError if the builder cannot export it."""
    config = model_dir / "config.json"
    try:
        architecture = json.loads(config.read_text(encoding="utf-8"))["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise MinnowError(f"{config}: cannot read the model architecture ({e})") from e
    if architecture not in builder_architectures():
        raise MinnowError(
            f"{config}: architecture {architecture} cannot be exported by the onnxruntime-genai model builder; "
            f"supported: {', '.join(builder_architectures())}"
        )
    return architecture


def _build(student_dir: Path, out_dir: Path, precision: str, architecture: str) -> None:
    """Run the model builder in a subprocess, offline, writing one precision into the existing ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="minnow-builder-") as work:
        command = [sys.executable, "-m", BUILDER_MODULE, "-i", str(student_dir.resolve()), "-o", str(out_dir.resolve())]
        command += ["-p", precision, "-e", "cpu", "-c", str(Path(work) / "cache")]
        if precision != "fp32":
            command += ["--extra_options", *QUANTIZATION_OPTIONS]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        # `python -m` puts the working directory first on sys.path; an empty one cannot shadow the builder's modules.
        run = subprocess.run(
            command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    if run.returncode != 0 or not (out_dir / "model.onnx").is_file():
        lines = [line for line in run.stdout.replace("\r", "\n").splitlines() if line.strip()]
        tail = "\n".join(lines[-BUILDER_OUTPUT_LINES:])
        raise MinnowError(
            f"the onnxruntime-genai model builder failed to export {student_dir} ({architecture}) "
            f"at {precision} (exit code {run.returncode}):\n{tail}"
        )


def _genai_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))


def _eos_token_ids(model_dir: Path) -> list[int]:
    eos = _genai_config(model_dir)["model"]["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids for a user prompt: through the chat template, up to the assistant's turn, when there is one."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def greedy_references(
    torch_dir: Path, prompts: Sequence[str], max_new_tokens: int, eos_token_ids: list[int]
) -> list[Reference]:
    """PyTorch fp32 greedy decoding of each prompt, stopping at ``eos_token_ids`` or after ``max_new_tokens``."""
    tokenizer = AutoTokenizer.from_pretrained(torch_dir)
    model = AutoModelForCausalLM.from_pretrained(torch_dir, dtype=torch.float32).eval()
    # Plain greedy: drop the checkpoint's own generation defaults (sampling, repetition penalty, ...).
    model.generation_config = GenerationConfig(eos_token_id=eos_token_ids, pad_token_id=eos_token_ids[0])
    references = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            output = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=False
            )
        references.append(Reference(prompt, ids, output[0, len(ids) :].tolist()))
    return references


def compare_to_references(
    onnx_dir: Path, references: Sequence[Reference], max_new_tokens: int, precision: str
) -> dict:
    """Greedy-decode each reference prompt with the ONNX model and measure agreement with PyTorch.

    For fp32 any difference raises MinnowError naming the prompt and the first differing position.
    """
    model = og.Model(str(onnx_dir))
    context_length = _genai_config(onnx_dir)["model"]["context_length"]
    equal = positions = exact = 0
    for ref in references:
        tokens = list(_greedy(model, context_length, ref.prompt_ids, max_new_tokens))
        if precision == "fp32" and tokens != ref.tokens:
            i = _first_difference(tokens, ref.tokens)
            raise MinnowError(
                f"the {precision} ONNX export does not reproduce PyTorch greedy decoding for prompt {ref.prompt!r}: "
                f"generated tokens first differ at position {i} "
                f"(ONNX {tokens[i] if i < len(tokens) else 'stopped'}, "
                f"PyTorch {ref.tokens[i] if i < len(ref.tokens) else 'stopped'})"
            )
        equal += sum(a == b for a, b in zip(tokens, ref.tokens))
        positions += max(len(tokens), len(ref.tokens))
        exact += tokens == ref.tokens
    return {
        "prompts": len(references),
        "exact_matches": exact,
        "token_agreement": equal / positions if positions else None,
    }


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first position where two different token sequences differ (the shorter's length if it is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_parity(
    onnx_dir: Path, torch_dir: Path, prompts: Sequence[str], max_new_tokens: int, precision: str = "fp32"
) -> dict:
    """Compare the ONNX folder's greedy tokens with those of the PyTorch model in ``torch_dir`` (see export)."""
    references = greedy_references(torch_dir, prompts, max_new_tokens, _eos_token_ids(onnx_dir))
    return compare_to_references(onnx_dir, references, max_new_tokens, precision)


@functools.lru_cache(maxsize=8)
def load_model(model_dir: Path, threads: int | None = None) -> og.Model:
    """The onnxruntime-genai model in ``model_dir``, loaded once per (folder, threads)."""
    config = og.Config(str(model_dir))
    if threads is not None:
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(overlay))
    return og.Model(config)


def stream_generate(
    model_dir: Path, prompt_ids: list[int], max_new_tokens: int, threads: int | None = None
) -> Iterator[int]:
    """Greedy decode with onnxruntime-genai, yielding token ids one by one (stops early at a stop token)."""
    model_dir = Path(model_dir).resolve()
    context_length = _genai_config(model_dir)["model"]["context_length"]
    yield from _greedy(load_model(model_dir, threads), context_length, prompt_ids, max_new_tokens)


def _greedy(model: og.Model, context_length: int, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
    if len(prompt_ids) >= context_length:
        raise MinnowError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {context_length}")
    if max_new_tokens < 1:
        return
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=min(len(prompt_ids) + max_new_tokens, context_length))
    generator = og.Generator(model, params)
    generator.append_tokens(list(prompt_ids))
    while not generator.is_done():
        generator.generate_next_token()
        yield int(generator.get_next_tokens()[0])
