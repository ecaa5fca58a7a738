"""Causal-LM export: a merged Hugging Face student folder to ONNX with a KV cache, one folder per precision.

The onnxruntime-genai model builder does the conversion (and int8/int4 weight-only quantization) for the
architectures it knows; other decoders go through ``torch.onnx`` (:mod:`export.torch_decoder`). Each folder
written (model.onnx + model.onnx.data, genai_config.json, tokenizer files) is checked against PyTorch greedy decoding
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime_genai as og
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from minnow.core import children
from minnow.core.atomic import TMP_SUFFIX, output_dir
from minnow.core.errors import MinnowError
from minnow.core.measures import size_on_disk
from minnow.core.recipe import Gate

from . import gate as quality_gate
from .genai import greedy_generator, load_model
from .mobile import DEFAULT_MAX_LENGTH, write_mobile
from .precisions import export_precisions
from .torch_decoder import BLOCK_SIZE, export_torch_decoder, torch_architectures

SUPPORTED_PRECISIONS = ("fp32", "int8", "int4")
BUILDER_MODULE = "onnxruntime_genai.models.builder"
# Weight-only (MatMulNBits) quantization: int8 activations in the MatMul (accuracy level 4); int8 in blocks of
# BLOCK_SIZE weights, int4 in blocks of export.int4_block_size. onnxruntime-genai >= 0.18 names these
# block_size/accuracy_level; it silently ignores the old int4_-prefixed names.
ACCURACY_OPTION = "accuracy_level=4"
# int4 keeps the output projection, the most quantization-sensitive MatMul, at 8 bits (measured on the trained tiny
# Qwen2: top-1 agreement with PyTorch 0.996 with an 8-bit lm_head, 0.974 with a 4-bit one, over 3408 tokens).
INT8_LM_HEAD_OPTION = "matmul_mixed_precision=last_matmul:int8"
BUILDER_OUTPUT_LINES = 15


@dataclass(frozen=True)
class Reference:
    """PyTorch's greedy continuation of one prompt."""

    prompt: str
    prompt_ids: list[int]
    tokens: list[int]


class CausalExport:
    """Decoder export of one student: the builder (or torch.onnx) writes a precision; the check compares its greedy
    tokens with PyTorch's and, given held-out sequences, measures it against the quality gate."""

    def __init__(
        self,
        student_dir: Path,
        architecture: str,
        scratch: Path,
        parity_prompts: list[str],
        max_new_tokens: int,
        gate: Gate,
        gate_sequences: Sequence[Sequence[int]],
        int4_lm_head: str,
        max_length: int | None,
        int4_block_size: int = BLOCK_SIZE,
    ) -> None:
        self.student_dir, self.scratch, self.prompts, self.max_new_tokens = (
            student_dir,
            scratch,
            parity_prompts,
            max_new_tokens,
        )
        self.gate, self.gate_sequences, self.int4_lm_head, self.max_length = (
            gate,
            gate_sequences,
            int4_lm_head,
            max_length,
        )
        self.architecture, self.int4_block_size = architecture, int4_block_size
        self.references: list[Reference] | None = None
        self.reference_model: torch.nn.Module | None = None

    def write(self, precision: str, folder: Path) -> None:
        block_size = self.int4_block_size if precision == "int4" else BLOCK_SIZE
        if self.architecture in builder_architectures():
            _build(self.student_dir, folder, precision, self.architecture, self.int4_lm_head, block_size)
        else:
            export_torch_decoder(self.student_dir, folder, precision, self.scratch, self.int4_lm_head, block_size)
        if self.max_length is not None:
            _cap_length(folder, self.max_length)

    def check(self, precision: str, folder: Path, artefact: str | None = None) -> dict:
        if self.references is None:
            # The builder settles the stop tokens (it adds the tokenizer's end-of-turn token), so PyTorch's
            # reference decoding is computed once the first folder exists, with that folder's stop tokens.
            stop = _eos_token_ids(folder)
            self.references = greedy_references(self.student_dir, self.prompts, self.max_new_tokens, stop)
        result = {"parity": compare_to_references(folder, self.references, self.max_new_tokens, precision)}
        if self.gate_sequences:
            self.reference_model = self.reference_model or load_reference(self.student_dir)
            figures = quality_gate.measure(self.reference_model, folder, self.gate_sequences)
            result["gate"] = quality_gate.check(figures, self.gate, precision, artefact=artefact)
        return result


def export_causal_lm(
    student_dir: Path,
    onnx_root: Path,
    precisions: list[str],
    parity_prompts: list[str],
    max_new_tokens: int = 16,
    gate: Gate | None = None,
    gate_sequences: Sequence[Sequence[int]] = (),
    int4_lm_head: str = "int8",
    targets: Sequence[str] = ("cpu",),
    max_length: int | None = None,
    int4_block_size: int = BLOCK_SIZE,
) -> dict:
    """Write ``onnx_root/<precision>/`` for each precision and return, per precision, its path, size, parity and gate.

    fp32 must reproduce PyTorch's greedy tokens exactly (MinnowError otherwise, and the folder is not written);
    for int8/int4 the fraction of agreeing token positions is recorded. With ``gate_sequences`` (held-out token
    ids), each precision must also pass ``gate`` (see :mod:`export.gate`) or its folder is not written.
    ``max_length`` caps prompt + output in every folder's genai_config.json. The ``mobile`` target adds
    ``onnx_root.parent/mobile`` (see :mod:`export.mobile`), checked like int4; it needs int4 in ``precisions``.
    """
    unknown = [p for p in precisions if p not in SUPPORTED_PRECISIONS]
    if unknown:
        raise MinnowError(f"unknown export precision {unknown[0]!r}; choose from {', '.join(SUPPORTED_PRECISIONS)}")
    architecture = check_architecture(student_dir)
    # Scratch space inside the run directory, so that a resume removes what a killed export left.
    onnx_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=onnx_root, prefix=".scratch.", suffix=TMP_SUFFIX) as scratch:
        task = CausalExport(
            student_dir,
            architecture,
            Path(scratch),
            parity_prompts,
            max_new_tokens,
            gate or Gate(),
            gate_sequences,
            int4_lm_head,
            max_length,
            int4_block_size,
        )
        results = export_precisions(task, onnx_root, precisions)
    if "mobile" in targets:
        if "int4" not in results:
            raise MinnowError("the mobile target is made from the int4 export; add int4 to export.precisions")
        mobile = onnx_root.parent / "mobile"
        with output_dir(mobile) as folder:
            info = write_mobile(onnx_root / "int4", folder, max_length or DEFAULT_MAX_LENGTH)
            result = task.check("int4", folder, artefact="mobile (int4)")
        results["mobile"] = {
            "path": mobile.name,
            "size_bytes": size_on_disk(mobile),
            **result,
            **info,
        }
    return results


def _cap_length(folder: Path, max_length: int) -> None:
    """Bound prompt + output (and so the KV cache onnxruntime-genai allocates) at ``max_length`` tokens."""
    config = _genai_config(folder)
    length = min(max_length, config["model"]["context_length"])
    config["model"]["context_length"] = config["search"]["max_length"] = length
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def load_reference(model_dir: Path) -> torch.nn.Module:
    """The PyTorch student in float32, safetensors only, as the export is checked against it."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()


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
    if architecture not in builder_architectures() and architecture not in torch_architectures():
        raise MinnowError(
            f"{config}: architecture {architecture} cannot be exported: it is not a decoder-only causal LM. "
            f"supported: {', '.join(builder_architectures())} (onnxruntime-genai model builder), and other "
            "decoder-only causal LMs with a KV cache such as GPT2LMHeadModel (torch.onnx)"
        )
    return architecture


def _build(
    student_dir: Path,
    out_dir: Path,
    precision: str,
    architecture: str,
    int4_lm_head: str,
    block_size: int,
) -> None:
    """Run the model builder in a subprocess, offline, writing one precision into the existing ``out_dir``
    (``block_size``: this precision's quantization block)."""
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".builder.", suffix=TMP_SUFFIX) as work:
        command = [sys.executable, "-m", BUILDER_MODULE, "-i", str(student_dir.resolve()), "-o", str(out_dir.resolve())]
        command += ["-p", precision, "-e", "cpu", "-c", str(Path(work) / "cache")]
        if precision != "fp32":
            command += ["--extra_options", f"block_size={block_size}", ACCURACY_OPTION]
        if precision == "int4" and int4_lm_head == "int8":
            command.append(INT8_LM_HEAD_OPTION)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        # `python -m` puts the working directory first on sys.path; an empty one cannot shadow the builder's modules.
        run = children.run(
            command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    if run.returncode != 0 or not (out_dir / "model.onnx").is_file():
        lines = [line for line in run.stdout.replace("\r", "\n").splitlines() if line.strip()]
        tail = "\n".join(lines[-BUILDER_OUTPUT_LINES:])
        raise MinnowError(
            f"the onnxruntime-genai model builder failed to export {student_dir} ({architecture}) "
            f"at {precision} (exit code {run.returncode}):\n{tail}"
        )
    repair_shared_int8_head(out_dir / "model.onnx")


def repair_shared_int8_head(model_file: Path) -> None:
    """Point a tied model's 8-bit embedding lookup at the 8-bit lm_head weights it shares.

    With tied embeddings, an int4 body and an 8-bit lm_head, builder 0.18 reads the shared table under the names
    its k-quant path uses (``..._Q8G<block size>``, and at block 32 ``..._scale``) while writing the default path's
    (``..._Q8``, ``..._scales``); the model then fails to load. Same tensors, so renaming the references repairs it.
    """
    model = onnx.load(model_file, load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    weights, scales = "lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales"
    changed = False
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in initializers:
                continue
            if re.fullmatch(re.escape(weights) + r"G\d+", name) and weights in initializers:
                node.input[i] = weights
                changed = True
            elif name == "lm_head.MatMul.weight_scale" and scales in initializers:
                node.input[i] = scales
                changed = True
    if changed:
        onnx.save(model, model_file)


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


def compare_to_references(onnx_dir: Path, references: Sequence[Reference], max_new_tokens: int, precision: str) -> dict:
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


def stream_generate(
    model_dir: Path,
    prompt_ids: list[int],
    max_new_tokens: int,
    threads: int | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    """Greedy decode with onnxruntime-genai, yielding token ids one by one (stops early at a stop token)."""
    model_dir = Path(model_dir).resolve()
    context_length = _genai_config(model_dir)["model"]["context_length"]
    yield from _greedy(load_model(model_dir, threads), context_length, prompt_ids, max_new_tokens, repetition_penalty)


def _greedy(
    model: og.Model,
    context_length: int,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    if len(prompt_ids) >= context_length:
        raise MinnowError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {context_length}")
    if max_new_tokens < 1:
        return
    generator = greedy_generator(
        model, min(len(prompt_ids) + max_new_tokens, context_length), repetition_penalty=repetition_penalty
    )
    generator.append_tokens(list(prompt_ids))
    while not generator.is_done():
        generator.generate_next_token()
        yield int(generator.get_next_tokens()[0])
