"""Sequence-level KD (the teacher's own responses) and on-policy steps (the student's continuations)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_minnow, tiny_recipe, write_recipe
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

from minnow.distill.causal_lm import tokenize
from minnow.distill.data import stable_id
from minnow.distill.generate import PROMPT_TOKENS, generate, self_written_prompts
from minnow.distill.losses import IGNORE_INDEX
from minnow.distill.trainer import LogitDistillTrainer


@pytest.mark.slow
def test_sequence_mode_trains_on_cached_teacher_responses_with_on_policy_steps(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["data"]["max_examples"] = 20
    recipe["distill"] |= {
        "steps": 4,
        "save_steps": 100,
        "mode": "sequence",
        "max_new_tokens": 24,
        "on_policy_fraction": 0.5,
    }
    result = run_minnow("distill", str(write_recipe(tmp_path / "seq.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())["distill"]
    responses = [json.loads(line) for line in (run_dir / "data/teacher_responses.jsonl").read_text().splitlines()]
    assert len(responses) == report["examples"]["train"] == 20
    assert report["loss"]["mode"] == "sequence" and report["loss"]["on_policy_fraction"] == 0.5
    # the cached response is the teacher's greedy answer to that prompt
    data = {json.loads(line)["prompt"] for line in tiny_pair["data"].read_text().splitlines()}
    tok = AutoTokenizer.from_pretrained(tiny_pair["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"])
    from minnow.core.recipe import load_recipe
    from minnow.distill.data import load_examples

    by_id = {ex["id"]: ex for ex in load_examples(load_recipe(run_dir / "recipe.resolved.yaml").data)}
    prompts = [by_id[r["id"]]["prompt"] for r in responses[:16]]  # the first batch, generated as in the run
    assert set(prompts) <= data
    assert generate(teacher, tok, prompts, True, 24, 0.0, 16, torch.device("cpu")) == [
        r["response"] for r in responses[:16]
    ]
    assert any(r["response"] != by_id[r["id"]]["response"] for r in responses)  # not the data's answers


def test_student_continuations_train_only_generated_tokens(tiny_pair, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_pair["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny_pair["student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"])
    rows = [
        tokenize({"id": str(i), "prompt": p, "response": "Restart it."}, tok, True, 128)
        for i, p in enumerate(["My phone is slow.", "My router does not turn on at all. What should I do?"])
    ]
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=3,
    )
    trainer = LogitDistillTrainer(
        model=student,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
        processing_class=tok,
        teacher=teacher,
        temperature=1.0,
        ce_weight=0.0,
        on_policy_fraction=1.0,
        max_new_tokens=8,
    )
    batch = collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
    torch.manual_seed(0)
    out = trainer.student_continuations(student, batch)
    prompt_lens = [r["labels"].index(next(x for x in r["labels"] if x != IGNORE_INDEX)) for r in rows]
    width = max(prompt_lens)
    for row, (r, n) in enumerate(zip(rows, prompt_lens)):
        assert out["input_ids"][row, width - n : width].tolist() == r["input_ids"][:n]  # left-padded prompt kept
        assert (out["labels"][row, :width] == IGNORE_INDEX).all()
        trained = out["labels"][row, width:] != IGNORE_INDEX
        assert trained.any() and torch.equal(
            out["labels"][row, width:][trained], out["input_ids"][row, width:][trained]
        )
        assert out["position_ids"][row, width] == n  # the first new token follows the prompt
    steps = [trainer.on_policy_step() for trainer.state.global_step in range(200)]
    assert all(steps)  # λ = 1
    trainer.on_policy_fraction = 0.3
    draws = [trainer.on_policy_step() for trainer.state.global_step in range(400)]
    assert draws == [trainer.on_policy_step() for trainer.state.global_step in range(400)]  # resumable: seeded by step
    assert 0.2 < sum(draws) / len(draws) < 0.4
    trainer.state.global_step = 0
    trainer.on_policy_fraction = 1.0
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


@pytest.mark.slow
def test_self_written_prompts_join_the_training_data_with_the_teachers_answers(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["data"] |= {"max_examples": 12, "self_written_prompts": 6}
    recipe["distill"] |= {"steps": 2, "save_steps": 100, "max_new_tokens": 16, "eval_batch_size": 4}
    result = run_minnow("distill", str(write_recipe(tmp_path / "magpie.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    prompts = json.loads((run_dir / "data/self_written_prompts.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())["distill"]
    assert 0 < len(prompts) <= 6 and len(set(prompts)) == len(prompts)
    assert report["examples"]["self_written_prompts"] == len(prompts)
    assert report["examples"]["train"] == 12 + len(prompts)
    # each prompt is what the teacher samples after its chat template's opening, seeded: writing again repeats them
    tok = AutoTokenizer.from_pretrained(tiny_pair["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"])
    cpu = torch.device("cpu")
    assert self_written_prompts(teacher, tok, 6, PROMPT_TOKENS, 4, 0, cpu) == prompts
    # and each is answered by the teacher's greedy response, kept with the other teacher responses
    rows = map(json.loads, (run_dir / "data/teacher_responses.jsonl").read_text().splitlines())
    answers = {r["id"]: r["response"] for r in rows}
    expected = generate(teacher, tok, prompts, True, 16, 0.0, 4, cpu)
    assert [answers[stable_id({"prompt": p})] for p in prompts] == expected
