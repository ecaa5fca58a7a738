"""Decoders the onnxruntime-genai builder does not know (GPT-2 and others), exported with ``torch.onnx`` (dynamo).

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and the KV cache flattened into
``past_key_values.<layer>.key/value`` and returns ``logits`` and ``present.<layer>.key/value``: the names and
[batch, kv_heads, sequence, head_size] layout onnxruntime-genai's generic ``decoder`` model type reads. A generated
``genai_config.json`` and the tokenizer files complete the folder, so the same runtime loads and generates with it.
int8/int4 are weight-only MatMulNBits (accuracy level 4; int8 in blocks of 32 weights, int4 in blocks of
``export.int4_block_size``) applied to the fp32 graph by onnxruntime's ``MatMulNBitsQuantizer``; at int4 an untied
output projection stays at 8 bits like the builder's exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from minnow.core.errors import MinnowError

from .embedding import _quiet

MODEL_FILE = "model.onnx"
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4


def torch_architectures() -> set[str]:
    """Decoder-only causal-LM classes transformers can build (the candidates for this export path)."""
    return {name for name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() if isinstance(name, str)}


class FlatCacheDecoder(torch.nn.Module):
    """A causal LM whose KV cache enters and leaves as flat tensors: two per layer, key then value."""

    def __init__(self, model: PreTrainedModel, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _linear(conv: Conv1D) -> torch.nn.Linear:
    """GPT-2's Conv1D as the equivalent Linear, so the graph holds MatMul (which MatMulNBits quantizes), not Gemm."""
    linear = torch.nn.Linear(conv.weight.shape[0], conv.weight.shape[1])
    linear.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous())
    linear.bias = torch.nn.Parameter(conv.bias.detach().clone())
    return linear


def load_decoder(model_dir: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                setattr(module, child_name, _linear(child))
    return model


def cache_shape(model: PreTrainedModel) -> tuple[int, int, int]:
    """(layers, kv heads, head size), read from the cache one forward pass fills."""
    with torch.inference_mode():
        cache = model(torch.tensor([[0, 1]]), use_cache=True).cache
    if not isinstance(cache, DynamicCache) or not cache.layers:
        raise MinnowError(f"{type(model).__name__} does not return a per-layer KV cache; it cannot be exported")
    keys = cache.layers[0].keys
    return len(cache.layers), keys.shape[1], keys.shape[3]


def export_fp32(model: PreTrainedModel, path: Path) -> None:
    """Trace ``model`` with batch, sequence and past lengths dynamic; weights go to ``<path>.data``."""
    layers, heads, head_size = cache_shape(model)
    batch, seq, past_len = 2, 3, 4
    dim = torch.export.Dim
    b, s, p, total = dim("batch"), dim("sequence"), dim("past_sequence"), dim("total_sequence")
    args = (
        torch.randint(0, model.config.vocab_size, (batch, seq)),
        torch.ones(batch, past_len + seq, dtype=torch.int64),
        torch.arange(past_len, past_len + seq).expand(batch, seq),
        [torch.randn(batch, heads, past_len, head_size) for _ in range(2 * layers)],
    )
    past = [f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    present = [f"present.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    shapes = {
        "input_ids": {0: b, 1: s},
        "attention_mask": {0: b, 1: total},
        "position_ids": {0: b, 1: s},
        "past": [{0: b, 2: p}] * (2 * layers),
    }
    with _quiet():
        torch.onnx.export(
            FlatCacheDecoder(model, layers),
            args,
            str(path),
            dynamo=True,
            verbose=False,
            external_data=True,
            input_names=["input_ids", "attention_mask", "position_ids", *past],
            output_names=["logits", *present],
            dynamic_shapes=shapes,
        )


def quantize(fp32_path: Path, out_path: Path, bits: int, lm_head_bits: int, block_size: int = BLOCK_SIZE) -> None:
    """Weight-only MatMulNBits: every MatMul with a constant weight at ``bits``, the one computing ``logits`` at
    ``lm_head_bits``. A tied lm_head (GPT-2) reads the embedding table through a Transpose and stays fp32, so the
    table is stored once."""
    model = onnx.load(fp32_path)
    initializers = {t.name for t in model.graph.initializer}
    head = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and "logits" in n.output and n.input[1] in initializers
    ]
    last = head if lm_head_bits != bits else []
    with _quiet():
        for pass_bits, exclude in ((bits, last), (lm_head_bits, [])) if last else ((bits, []),):
            config = DefaultWeightOnlyQuantConfig(
                block_size=block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=pass_bits
            )
            quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
            quantizer.process()
            model = quantizer.model.model
    onnx.save(model, out_path, save_as_external_data=True, location=out_path.name + ".data")


def _eos_ids(model: PreTrainedModel, tokenizer) -> list[int]:
    ids: list[int] = []
    for value in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def genai_config(model: PreTrainedModel, tokenizer, context_length: int) -> dict:
    """onnxruntime-genai's config for the generic ``decoder`` type, with a growing (unshared) KV cache."""
    layers, heads, head_size = cache_shape(model)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    bos = model.config.bos_token_id if model.config.bos_token_id is not None else eos[0]
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": head_size,
                "hidden_size": model.config.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": model.config.num_attention_heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad,
            "type": "decoder",
            "vocab_size": model.config.vocab_size,
        },
        "search": {
            "do_sample": False,
            "max_length": context_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }


def export_torch_decoder(
    student_dir: Path,
    out_dir: Path,
    precision: str,
    scratch: Path,
    int4_lm_head: str,
    block_size: int,
) -> None:
    """Write one precision of ``student_dir`` into the existing ``out_dir`` (``block_size``: this precision's
    quantization block); the fp32 graph is traced once into ``scratch`` and reused by the other precisions."""
    fp32_path = scratch / MODEL_FILE
    model = load_decoder(student_dir)
    architecture = model.config.architectures[0] if model.config.architectures else type(model).__name__
    if not fp32_path.is_file():
        try:
            export_fp32(model, fp32_path)
        except MinnowError:
            raise
        except Exception as e:  # the exporter raises many types; the user needs the architecture and the cause
            raise MinnowError(
                f"torch.onnx could not export {student_dir} ({architecture}) with a KV cache: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
    if precision == "fp32":
        shutil.copyfile(fp32_path, out_dir / MODEL_FILE)
        shutil.copyfile(fp32_path.with_name(MODEL_FILE + ".data"), out_dir / (MODEL_FILE + ".data"))
    else:
        bits = 4 if precision == "int4" else 8
        quantize(fp32_path, out_dir / MODEL_FILE, bits, 8 if int4_lm_head == "int8" else bits, block_size)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    config = genai_config(model, tokenizer, int(context))
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out_dir)
