"""Students cut from their teacher: fewer layers (by block importance) and, optionally, narrower MLPs.

Layer choice follows Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect" and Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"
(Minitron): a block whose output hidden state points the same way as its input (importance 1 − cos(in, out),
averaged over real tokens of training examples) changes little and is dropped first. The ``block`` rule instead
drops one contiguous run of layers, the run whose input and output hidden states are closest in angle (Gromov et
al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"); the ``kl`` rule searches greedily for the
layers whose removal moves the output distribution least (after SLEB, Song et al. 2024). MLP width follows
Minitron's activation-based importance: the mean magnitude of each hidden unit's activation (the input of the
MLP's down projection) over those tokens; the least active units are removed from the projections into and out
of the MLP. Decoders are Llama, Qwen2 and Mistral-style (``model.layers[i].mlp.{gate,up,down}_proj``); the
embedding flow narrows BERT-style encoders with the same importance and unit removal (``distill/embedding.py``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable

import torch

from minnow.core.errors import MinnowError
from minnow.core.recipe import FromTeacher

from .losses import kl_from_log_probs


def importance_rows(rows: list, count: int, seed: int) -> list:
    """A seeded sample of ``count`` training rows (all of them when fewer), in their order, so layers and units are
    ranked on every source the data mixes rather than on the first file's rows."""
    if len(rows) <= count:
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), count))]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not all(
        hasattr(getattr(layer, "mlp", None), "down_proj") for layer in layers
    ):
        raise MinnowError(
            f"student.from_teacher: {type(model).__name__} is not a Llama/Qwen2-style decoder (model.layers[i].mlp)"
        )
    return layers


@torch.inference_mode()
def block_importance(model: torch.nn.Module, batches: Iterable[dict]) -> list[float]:
    """Per decoder layer, mean over real tokens of 1 − cos(hidden state in, hidden state out)."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    batch: dict = {}

    def hook(index: int):
        def record(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            sums[index] += ((1 - cos) * batch["mask"]).sum().double().item()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    count = _forward_with_hooks(model, batches, handles, batch)
    return (sums / max(count, 1)).tolist()


@torch.inference_mode()
def block_distances(model: torch.nn.Module, batches: Iterable[dict], n: int) -> list[float]:
    """For each start layer l, mean over real tokens of arccos(cos(x_l, x_{l+n})) / π, the angular distance between
    the hidden state entering layer l and the one leaving layer l + n − 1 (Gromov et al. 2024, eq. 7)."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers) - n + 1, dtype=torch.float64)
    entering: dict[int, torch.Tensor] = {}
    batch: dict = {}

    def hook(index: int):
        def record(module, args, kwargs, output):
            entering[index] = args[0] if args else kwargs["hidden_states"]
            start = index + 1 - n
            if start >= 0:
                x_out = output[0] if isinstance(output, tuple) else output
                cos = torch.nn.functional.cosine_similarity(entering.pop(start).float(), x_out.float(), dim=-1)
                angle = torch.arccos(cos.clamp(-1, 1)) / torch.pi
                sums[start] += (angle * batch["mask"]).sum().double().item()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    count = _forward_with_hooks(model, batches, handles, batch)
    return (sums / max(count, 1)).tolist()


@torch.inference_mode()
def kl_greedy_keep(model: torch.nn.Module, batches: list[dict], count: int) -> tuple[list[int], list[float]]:
    """Drop layers one at a time, each time the one whose removal leaves the smallest KL(model‖cut) per real token
    of ``batches``, until ``count`` remain; returns the kept layers and the KL after each drop (Song et al. 2024,
    "SLEB: Streamlining LLMs through Redundancy Verification and Elimination of Transformer Blocks", with the full
    model's distribution in place of the text's perplexity)."""
    layers = list(decoder_layers(model))
    everything = list(range(len(layers)))
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)

    def log_probs(batch: dict, keep: list[int]) -> torch.Tensor:
        model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.log_softmax(logits.float(), -1)[batch["attention_mask"].bool()]

    keep, path = list(everything), []
    try:
        while len(keep) > count:
            kl = dict.fromkeys(keep, 0.0)
            for batch in batches:  # one batch's full distribution in memory at a time, recomputed each round
                target = log_probs(batch, everything)
                for i in keep:
                    cut = log_probs(batch, [j for j in keep if j != i])
                    kl[i] += kl_from_log_probs(target, cut).sum().item() / tokens
            dropped = min(kl, key=kl.__getitem__)
            keep.remove(dropped)
            path.append(kl[dropped])
    finally:
        model.model.layers = torch.nn.ModuleList(layers)
    return keep, path


@torch.inference_mode()
def unit_importance(
    model: torch.nn.Module, down_projections: list[torch.nn.Linear], batches: Iterable[dict]
) -> list[torch.Tensor]:
    """Per MLP, each hidden unit's mean |activation| over real tokens: the input of its ``down_projections`` entry
    (Minitron's activation-based neuron importance)."""
    sums = [torch.zeros(down.in_features, dtype=torch.float64) for down in down_projections]
    batch: dict = {}

    def hook(index: int):
        def record(module, args):
            sums[index] += (args[0].abs().float() * batch["mask"].unsqueeze(-1)).sum((0, 1)).double().cpu()

        return record

    handles = [down.register_forward_pre_hook(hook(i)) for i, down in enumerate(down_projections)]
    count = _forward_with_hooks(model, batches, handles, batch)
    return [s / max(count, 1) for s in sums]


def _forward_with_hooks(model: torch.nn.Module, batches: Iterable[dict], handles: list, current: dict) -> int:
    """Run ``model`` over ``batches`` with the hooks of ``handles`` (removed afterwards), ``current["mask"]`` holding
    the real-token mask of the batch the hooks see; returns the number of real tokens."""
    count = 0
    try:
        for batch in batches:
            current["mask"] = batch["attention_mask"].float()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            count += int(current["mask"].sum())
    finally:
        for h in handles:
            h.remove()
    return count


def keep_layers(model: torch.nn.Module, keep: list[int]) -> None:
    """Keep only the decoder layers ``keep`` (in order); the config and each attention's cache index follow."""
    layers = decoder_layers(model)
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn"):
            layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    layer = torch.nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device
    )
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer


def top_units(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The indices, ascending, of the ``fraction`` highest ``scores`` (at least one)."""
    return scores.topk(max(1, round(fraction * scores.numel()))).indices.sort().values


def keep_rows(layer: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    """``layer`` with only the output units ``keep``."""
    keep = keep.to(layer.weight.device)
    return _linear(layer.weight[keep], layer.bias[keep] if layer.bias is not None else None)


def keep_columns(layer: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    """``layer`` reading only the input features ``keep``."""
    return _linear(layer.weight[:, keep.to(layer.weight.device)], layer.bias)


def prune_mlp(model: torch.nn.Module, importance: list[torch.Tensor], fraction: float) -> int:
    """Keep each layer's ``fraction`` most important MLP units; returns the new intermediate size."""
    for layer, scores in zip(decoder_layers(model), importance):
        mlp = layer.mlp
        keep = top_units(scores, fraction)
        width = len(keep)
        mlp.gate_proj, mlp.up_proj = keep_rows(mlp.gate_proj, keep), keep_rows(mlp.up_proj, keep)
        mlp.down_proj = keep_columns(mlp.down_proj, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    model.config.intermediate_size = width
    return width


def derive_causal_student(
    teacher: torch.nn.Module, spec: FromTeacher, batches: list[dict]
) -> tuple[torch.nn.Module, dict]:
    """A pruned copy of ``teacher`` as ``spec`` asks, and what was kept (for the report)."""
    n = len(decoder_layers(teacher))
    student = copy.deepcopy(teacher)
    info: dict = {"teacher_layers": n}
    drop = n - max(1, round(spec.keep_fraction * n)) if spec.keep_fraction is not None else 0
    if spec.layers is not None:
        bad = [i for i in spec.layers if not 0 <= i < n]
        if bad or not spec.layers:
            raise MinnowError(
                f"student.from_teacher.layers: {bad or spec.layers} not in 0..{n - 1} (the teacher has {n} layers)"
            )
        keep = list(spec.layers)
    elif spec.rule == "block":
        distances = block_distances(student, batches, drop) if drop else [0.0]
        start = min(range(len(distances)), key=distances.__getitem__)
        keep = [i for i in range(n) if not start <= i < start + drop]
        info["block_distances"] = [round(x, 6) for x in distances]
    elif spec.rule == "kl":
        keep, path = kl_greedy_keep(student, batches, n - drop)
        info["kl_after_each_drop"] = [round(x, 6) for x in path]
    else:
        importance = block_importance(student, batches)
        keep = sorted(sorted(range(n), key=lambda i: -importance[i])[: n - drop])
        info["block_importance"] = [round(x, 6) for x in importance]
    keep_layers(student, keep)
    info["layers"] = keep
    if spec.mlp_fraction is not None:
        mlp = decoder_layers(student)[0].mlp
        if not (hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj")):
            raise MinnowError(
                f"student.from_teacher.mlp_fraction: {type(mlp).__name__} has no separate gate_proj and up_proj "
                "(Llama/Qwen2-style MLP); cut this model by layers only"
            )
        info["teacher_mlp_width"] = mlp.down_proj.in_features
        down = [layer.mlp.down_proj for layer in decoder_layers(student)]
        info["mlp_width"] = prune_mlp(student, unit_importance(student, down, batches), spec.mlp_fraction)
    return student, info
