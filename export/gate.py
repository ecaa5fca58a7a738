"""The quality gate of a causal-LM export, measured in the runtime that ships it.

Each held-out example is fed whole (teacher forcing, empty KV cache) to the PyTorch student and to the exported
folder through onnxruntime-genai; at every next-token position the two distributions are compared. A precision
whose figures break the recipe's thresholds fails the export.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from minnow.core.errors import MinnowError
from minnow.core.recipe import Gate, Recipe

from .genai import greedy_generator, open_model


def heldout_sequences(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[list[int]]:
    """The run's held-out examples tokenized as training saw them (chat template included), up to ``max_tokens``."""
    from minnow.distill.causal_lm import tokenize
    from minnow.distill.data import split_examples

    _, heldout, _ = split_examples(recipe)
    sequences, total = [], 0
    for example in heldout:
        ids = tokenize(example, tokenizer, recipe.data.chat_template, recipe.distill.max_seq_len)["input_ids"]
        if len(ids) < 2 or total >= max_tokens:
            continue
        ids = ids[: max_tokens - total + 1]
        sequences.append(ids)
        total += len(ids) - 1
    return sequences


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_kl(reference_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(reference‖model) per position, the divergence of Hinton et al. (2015) with the exported model as student."""
    return (np.exp(reference_logp) * (reference_logp - logp)).sum(axis=-1)


def onnx_logits(model: og.Model, ids: Sequence[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of onnxruntime-genai for a whole sequence fed at once to an empty KV cache."""
    generator = greedy_generator(model, len(ids) + 1)
    generator.append_tokens(list(ids))
    return np.asarray(generator.get_output("logits"))[0].astype(np.float32)


@torch.inference_mode()
def torch_logits(model: PreTrainedModel, ids: Sequence[int]) -> np.ndarray:
    return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def measure(
    model: PreTrainedModel, onnx_dir: Path, sequences: Sequence[Sequence[int]], threads: int | None = None
) -> dict:
    """Top-1 agreement, mean KL(PyTorch‖ONNX), both perplexities and max |Δlogit| over every next-token position.

    Sequences longer than the folder's context are cut to it. ``threads``: onnxruntime's intra-op threads.
    """
    onnx_model = open_model(onnx_dir, threads)
    context = json.loads((Path(onnx_dir) / "genai_config.json").read_text(encoding="utf-8"))["model"]["context_length"]
    positions = agree = 0
    kl = torch_nll = onnx_nll = max_diff = 0.0
    for ids in (list(s)[: context - 1] for s in sequences):
        reference, got = torch_logits(model, ids)[:-1], onnx_logits(onnx_model, ids)[:-1]
        vocab = min(reference.shape[-1], got.shape[-1])
        reference, got = reference[:, :vocab], got[:, :vocab]
        targets = np.asarray(ids[1:])
        ref_logp, logp = log_softmax(reference), log_softmax(got)
        rows = np.arange(len(targets))
        positions += len(targets)
        agree += int((reference.argmax(-1) == got.argmax(-1)).sum())
        kl += float(token_kl(ref_logp, logp).sum())
        torch_nll -= float(ref_logp[rows, targets].sum())
        onnx_nll -= float(logp[rows, targets].sum())
        max_diff = max(max_diff, float(np.abs(reference - got).max()))
    if positions == 0:
        raise MinnowError("the export quality gate has no held-out tokens to measure (every example is too short)")
    torch_ppl, onnx_ppl = math.exp(torch_nll / positions), math.exp(onnx_nll / positions)
    return {
        "tokens": positions,
        "top1_agreement": agree / positions,
        "kl": max(kl / positions, 0.0),
        "perplexity_pytorch": torch_ppl,
        "perplexity_onnx": onnx_ppl,
        "perplexity_increase": onnx_ppl / torch_ppl - 1,
        "max_abs_logit_diff": max_diff,
    }


def limits(gate: Gate, precision: str) -> dict[str, tuple[str, float]]:
    """For each gated figure: ("min" or "max", threshold) at this precision."""
    if precision == "fp32":
        return {"max_abs_logit_diff": ("max", gate.fp32_max_abs_logit_diff)}
    thresholds = getattr(gate, precision)
    return {
        "top1_agreement": ("min", thresholds.min_top1_agreement),
        "kl": ("max", thresholds.max_kl),
        "perplexity_increase": ("max", thresholds.max_perplexity_increase),
    }


def check(figures: dict, gate: Gate, precision: str, artefact: str | None = None) -> dict:
    """``figures`` with the thresholds of ``precision`` applied; MinnowError naming the artefact (default: the
    precision), figure, value and threshold on a miss."""
    applied = limits(gate, precision)
    for name, (kind, threshold) in applied.items():
        value = figures[name]
        if (value < threshold) if kind == "min" else (value > threshold):
            sign = "<" if kind == "min" else ">"
            raise MinnowError(
                f"the {artefact or precision} ONNX export failed its quality gate: {name} {value:.6g} {sign} threshold "
                f"{threshold:g} (export.gate, measured over {figures['tokens']} held-out tokens against PyTorch)"
            )
    return figures | {"thresholds": {name: {kind: threshold} for name, (kind, threshold) in applied.items()}}
