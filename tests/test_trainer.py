"""LogitDistillTrainer: exact per-token normalisation whatever the padding and gradient accumulation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe, write_recipe
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainingArguments

from minnow.core.recipe import load_recipe
from minnow.distill.losses import IGNORE_INDEX, divergence, kd_loss_sum
from minnow.distill.trainer import LogitDistillTrainer
from minnow.distill.training import training_arguments


def _rows(tok) -> list[dict]:
    """Four examples whose response lengths differ a lot, so micro-batches hold very different token counts."""
    rows = []
    for prompt, response in [
        ("hi", "ok"),
        ("my router is slow", "restart it " * 12),
        ("help", "yes " * 3),
        ("a", "b " * 25),
    ]:
        p = tok(prompt + "\n")["input_ids"]
        r = tok(response)["input_ids"] + [tok.eos_token_id]
        rows.append(
            {"input_ids": p + r, "attention_mask": [1] * (len(p) + len(r)), "labels": [IGNORE_INDEX] * len(p) + r}
        )
    return rows


def _one_sgd_step(
    pair, tmp_path, batch_size: int, grad_accum: int, loss: str, bf16: bool = False, seen: set | None = None
) -> dict[str, torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(pair["student"])
    student = AutoModelForCausalLM.from_pretrained(pair["student"])
    teacher = AutoModelForCausalLM.from_pretrained(pair["teacher"])
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}"),
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        optim="sgd",
        max_grad_norm=0.0,
        weight_decay=0.0,
        train_sampling_strategy="sequential",
        use_cpu=True,
        bf16=bf16,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
    )
    trainer = LogitDistillTrainer(
        model=student,
        args=args,
        train_dataset=Dataset.from_list(_rows(tok)),
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"),
        teacher=teacher,
        temperature=2.0,
        ce_weight=0.3,
        div=divergence(loss),
    )
    if seen is not None:  # the dtypes the student's linear layers compute in
        for module in student.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    trainer.train()
    return {n: before[n] - p.detach() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("loss", ["jsd"])
def test_grad_accumulation_and_padding_give_the_same_step(tiny_pair, tmp_path, loss):
    whole = _one_sgd_step(tiny_pair, tmp_path, 4, 1, loss)
    accumulated = _one_sgd_step(tiny_pair, tmp_path, 2, 2, loss)
    # reference: one forward over all four rows, loss summed over trained tokens / their number
    tok = AutoTokenizer.from_pretrained(tiny_pair["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny_pair["student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"])
    batch = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")(_rows(tok))
    labels = batch.pop("labels")
    with torch.no_grad():
        t_logits = teacher(**batch).logits
    total, _, _ = kd_loss_sum(student(**batch).logits, t_logits, labels, 2.0, 0.3, divergence(loss))
    (total / labels[:, 1:].ne(IGNORE_INDEX).sum()).backward()
    for name, param in student.named_parameters():
        assert torch.allclose(whole[name], param.grad, atol=1e-6, rtol=1e-4), name
        assert torch.allclose(accumulated[name], param.grad, atol=1e-6, rtol=1e-4), name


def test_bf16_mixed_precision_computes_in_bf16_and_takes_the_fp32_step(tiny_pair, tmp_path):
    """`distill.mixed_precision: bf16`: the student's matmuls run in bfloat16 (autocast) while its weights, update and
    losses stay fp32, so the step is the fp32 step up to bf16 rounding."""
    seen_fp32, seen_bf16 = set(), set()
    fp32 = _one_sgd_step(tiny_pair, tmp_path / "fp32", 4, 1, "forward_kl", seen=seen_fp32)
    bf16 = _one_sgd_step(tiny_pair, tmp_path / "bf16", 4, 1, "forward_kl", bf16=True, seen=seen_bf16)
    assert seen_fp32 == {torch.float32} and seen_bf16 == {torch.bfloat16}
    a, b = torch.cat([v.flatten() for v in fp32.values()]), torch.cat([v.flatten() for v in bf16.values()])
    assert not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert all(v.dtype == torch.float32 for v in bf16.values())


@pytest.mark.parametrize("choice", ["bf16", "fp32"])
def test_the_recipe_sets_the_trainers_mixed_precision(tiny_pair, tmp_path, choice):
    recipe = load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            tiny_recipe(tiny_pair, tmp_path, distill={"steps": 1, "mixed_precision": choice}),
        )
    )
    assert training_arguments(recipe, tmp_path / "out", torch.device("cpu")).bf16 == (choice == "bf16")
