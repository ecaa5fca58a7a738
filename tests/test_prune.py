"""Decoder students cut from the teacher: block importance, kept layers, MLP width, a normal HF model after."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import run_minnow, tiny_recipe, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.core.recipe import FromTeacher
from minnow.distill.losses import IGNORE_INDEX, hidden_state_loss_sum
from minnow.distill.prune import (
    block_distances,
    block_importance,
    derive_causal_student,
    keep_layers,
    kl_greedy_keep,
    prune_mlp,
    unit_importance,
)
from minnow.distill.trainer import LogitDistillTrainer


def _batch(pair):
    tok = AutoTokenizer.from_pretrained(pair["teacher"])
    texts = [json.loads(line)["response"] for line in pair["data"].read_text().splitlines()[:6]]
    return dict(tok(texts, return_tensors="pt", padding=True))


def test_block_importance_is_one_minus_cosine_of_hidden_states(tiny_pair):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"]).eval()
    batch = _batch(tiny_pair)
    scores = block_importance(teacher, [batch])
    with torch.no_grad():
        hidden = teacher(**batch, output_hidden_states=True).hidden_states  # the last one is after the final norm
    mask = batch["attention_mask"].bool()
    for i in range(len(scores) - 1):
        cos = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)[mask]
        assert abs(scores[i] - (1 - cos).mean().item()) < 1e-5
    assert all(0 <= s <= 2 for s in scores)


def test_block_rule_drops_the_contiguous_run_whose_ends_are_closest_in_angle(tiny_pair):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"]).eval()
    batch = _batch(tiny_pair)
    distances = block_distances(teacher, [batch], 2)
    leaving_last = []
    hook = teacher.model.layers[-1].register_forward_hook(lambda m, args, out: leaving_last.append(out))
    with torch.no_grad():  # hidden_states[i] enters layer i; the last entry is after the final norm, so hook instead
        hidden = [*teacher(**batch, output_hidden_states=True).hidden_states[:-1], *leaving_last]
    hook.remove()
    mask = batch["attention_mask"].bool()
    assert len(distances) == 3
    for start, d in enumerate(distances):
        cos = torch.nn.functional.cosine_similarity(hidden[start], hidden[start + 2], dim=-1)[mask]
        assert abs(d - (torch.arccos(cos.clamp(-1, 1)) / torch.pi).mean().item()) < 1e-5
    student, info = derive_causal_student(teacher, FromTeacher(keep_fraction=0.5, rule="block"), [batch])
    start = min(range(3), key=distances.__getitem__)
    assert info["layers"] == [i for i in range(4) if not start <= i < start + 2]
    assert student.config.num_hidden_layers == 2


def _kl_of_cut(teacher, keep, batch):
    cut = copy.deepcopy(teacher)
    keep_layers(cut, keep)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        p = torch.log_softmax(teacher(**batch).logits, -1)[mask]
        q = torch.log_softmax(cut(**batch).logits, -1)[mask]
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_kl_rule_drops_one_layer_at_a_time_the_one_that_moves_the_output_least(tiny_pair):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"]).eval()
    batch = _batch(tiny_pair)
    keep, path = kl_greedy_keep(teacher, [batch], 2)
    assert len(path) == 2 and len(teacher.model.layers) == 4  # the model given is left whole
    first = {i: _kl_of_cut(teacher, [j for j in range(4) if j != i], batch) for i in range(4)}
    assert path[0] == pytest.approx(min(first.values()), rel=1e-4)
    assert path[1] == pytest.approx(_kl_of_cut(teacher, keep, batch), rel=1e-4)
    dropped_first = min(first, key=first.__getitem__)
    assert dropped_first not in keep and all(
        path[1] <= _kl_of_cut(teacher, [j for j in range(4) if j not in (dropped_first, i)], batch) + 1e-6
        for i in range(4)
        if i != dropped_first
    )
    student, info = derive_causal_student(teacher, FromTeacher(keep_fraction=0.5, rule="kl"), [batch])
    assert info["layers"] == keep and student.config.num_hidden_layers == 2


def test_kept_layers_and_pruned_mlp_compute_what_they_should(tiny_pair, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"]).eval()
    batch = _batch(tiny_pair)
    whole = copy.deepcopy(teacher)
    keep_layers(whole, [0, 1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(whole(**batch).logits, teacher(**batch).logits, atol=1e-5)
    importance = unit_importance(teacher, [layer.mlp.down_proj for layer in teacher.model.layers], [batch])
    # dropping MLP units equals zeroing their columns of down_proj in the unpruned model
    zeroed = copy.deepcopy(teacher)
    for layer, scores in zip(zeroed.model.layers, importance):
        drop = scores.topk(scores.numel() // 2, largest=False).indices
        layer.mlp.down_proj.weight.data[:, drop] = 0
    pruned = copy.deepcopy(teacher)
    assert prune_mlp(pruned, importance, 0.5) == teacher.config.intermediate_size // 2
    with torch.no_grad():
        assert torch.allclose(pruned(**batch).logits, zeroed(**batch).logits, atol=1e-5)
    student, info = derive_causal_student(teacher, FromTeacher(keep_fraction=0.5, mlp_fraction=0.5), [batch])
    order = sorted(range(4), key=lambda i: -info["block_importance"][i])
    assert info["layers"] == sorted(order[:2]) and student.config.num_hidden_layers == 2
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    assert reloaded.config.intermediate_size == teacher.config.intermediate_size // 2
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, student.eval()(**batch).logits, atol=1e-5)


@pytest.mark.slow
def test_run_with_a_student_cut_from_the_teacher(tiny_pair, tmp_path):
    recipe = tiny_recipe(
        tiny_pair, tmp_path / "runs", student={"from_teacher": {"keep_fraction": 0.5, "mlp_fraction": 0.5}}
    )
    recipe["distill"] |= {"steps": 4, "save_steps": 100}
    result = run_minnow("distill", str(write_recipe(tmp_path / "p.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "student/config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 128
    d = json.loads((run_dir / "report.json").read_text())["distill"]
    assert d["student_from_teacher"]["layers"] == sorted(d["student_from_teacher"]["layers"])
    assert len(d["student_from_teacher"]["block_importance"]) == 4
    assert d["parameters"]["student"] < d["parameters"]["teacher"]
    # a better start than random: the pruned teacher already agrees with it on some held-out tokens
    assert d["eval_before"]["student"]["top1_agreement"] > 0.2


def test_sft_baseline_trains_the_same_cut_on_the_same_schedule(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs", student={"from_teacher": {"keep_fraction": 0.5}})
    recipe["distill"] |= {"steps": 4, "save_steps": 100, "teacher_cache": True, "baseline": "sft", "hidden_weight": 1.0}
    result = run_minnow("distill", str(write_recipe(tmp_path / "b.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    d = json.loads((run_dir / "report.json").read_text())["distill"]
    assert d["baseline"]["kind"] == "sft" and d["baseline"]["path"] == "student_sft"
    assert d["loss"]["hidden_weight"] == 1.0
    kd, sft = (json.loads((run_dir / f / "config.json").read_text()) for f in ("student", "student_sft"))
    assert kd["num_hidden_layers"] == sft["num_hidden_layers"] == 2
    assert set(d["baseline"]["eval"]["student"]) == set(d["eval"]["student"])
    assert d["baseline"]["eval"]["student"]["kl_to_teacher"] != d["eval"]["student"]["kl_to_teacher"]


def test_a_phi3_cuts_by_layers_and_refuses_an_mlp_cut_clearly():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, pad_token_id=0
    )
    teacher = Phi3ForCausalLM(config).eval()
    batch = {"input_ids": torch.randint(1, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    student, info = derive_causal_student(teacher, FromTeacher(keep_fraction=0.5), [batch])
    assert len(info["layers"]) == 2 and student(**batch).logits.shape == (2, 8, 64)
    with pytest.raises(MinnowError, match="mlp_fraction: Phi3MLP has no separate gate_proj"):
        derive_causal_student(teacher, FromTeacher(keep_fraction=0.5, mlp_fraction=0.5), [batch])


def test_hidden_state_loss_pairs_each_kept_layer_with_the_teacher_layer_it_copies(tiny_pair, tmp_path):
    from transformers import TrainingArguments

    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"]).eval()
    student, info = derive_causal_student(teacher, FromTeacher(layers=[0, 2, 3]), [])
    batch = _batch(tiny_pair)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"].eq(0), IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX

    def layer_outputs(model) -> list[torch.Tensor]:
        """Each decoder layer's output, caught by hooks; the last one through the final norm, as the head reads it."""
        caught = []
        hooks = [
            layer.register_forward_hook(lambda m, i, out: caught.append(out[0] if isinstance(out, tuple) else out))
            for layer in model.model.layers
        ]
        with torch.no_grad():
            model(**batch)
        for hook in hooks:
            hook.remove()
        return caught[:-1] + [model.model.norm(caught[-1])]

    s, t = layer_outputs(student), layer_outputs(teacher)
    mask = batch["attention_mask"].bool()  # every real token, prompt included
    expected = 0.0
    for a, b in [(s[0], t[0]), (s[1], t[2]), (s[2], t[3])]:
        a, b = a[mask], b[mask]
        expected += (((a - b) ** 2).sum(-1) / (b**2).sum(-1)).sum() / 3
    # the first kept layer sees the same input as in the teacher: its pair contributes nothing
    assert torch.allclose(s[0], t[0], atol=1e-6)
    assert expected > 0

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    losses = {}
    for weight in (0.0, 2.5):
        trainer = LogitDistillTrainer(
            model=student,
            args=args,
            teacher=teacher,
            temperature=1.0,
            ce_weight=0.0,
            hidden_weight=weight,
            teacher_layers=info["layers"],
        )
        with torch.no_grad():
            losses[weight] = float(
                trainer.compute_loss(student, {**batch, "labels": labels.clone()}, num_items_in_batch=1)
            )
    assert losses[2.5] - losses[0.0] == pytest.approx(2.5 * float(expected), rel=1e-4)
    with torch.no_grad():
        direct = hidden_state_loss_sum([s[0], s[1], s[2]], [t[0], t[2], t[3]], batch["attention_mask"])
    assert float(direct) == pytest.approx(float(expected), rel=1e-5)
