"""Causal-LM flow when teacher and student tokenize differently: rows of both tokenizers over one text → the teacher
cached once (its top-k and token spans) → the student trained on ULD or the hybrid, aligned at training time.

Held-out figures: each model's loss per its own token and per character of the trained text (the fair comparison
across tokenizers; ``text_loss_per_char`` leaves out the EOS each side appends, which a base teacher never
predicts), the student's ULD distance to the teacher, and on exactly aligned tokens the KL over same-text
tokens and the top-1 agreement.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe
from minnow.core.rundir import RunDir

from .cross_losses import GROUP_KEYS, cross_kd_loss_sum, matched_kl, span_log_scale, uld
from .cross_tokenizer import (
    CrossTokenizerCollator,
    alignment_shares,
    cross_rows,
    trained_spans,
    vocabulary_match,
)
from .curriculum import causal_learnability, causal_scorers, example_text, plan_curriculum
from .data import split_examples
from .losses import IGNORE_INDEX, shift_for_next_token, token_cross_entropy
from .models import load_causal_lm
from .schedules import ScheduledTrainerMixin
from .teacher_cache import TeacherCache, ensure_cache
from .tokenizers import cross_method, tokenizers
from .trainer import LogitDistillTrainer
from .training import merged, parameter_count, pick_device, save_pretrained, train_timed, training_arguments, with_lora


class CrossTokenizerTrainer(LogitDistillTrainer):
    """:class:`LogitDistillTrainer` with the teacher's cached rows in its own vocabulary, aligned by text span."""

    def __init__(self, *args, teacher_to_student: torch.Tensor | None, **kwargs):
        super().__init__(*args, teacher=None, **kwargs)
        self.teacher_to_student = teacher_to_student

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        teacher = {k: inputs.pop(k) for k in GROUP_KEYS if k in inputs}
        outputs = model(**inputs)
        loss_sum, _, _ = cross_kd_loss_sum(
            outputs.logits, labels, teacher, self.temperature, self.ce_weight, self.teacher_to_student
        )
        loss = self.per_token(loss_sum, labels, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


@torch.inference_mode()
def evaluate_cross(
    student: torch.nn.Module,
    rows: list[dict],
    collate: CrossTokenizerCollator,
    table: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> dict:
    """Held-out figures across tokenizers (``collate`` at T = 1), see the module docstring."""
    student.eval()
    sums = dict.fromkeys(
        ("student_nll", "teacher_nll", "student_text_nll", "teacher_text_nll", "uld", "kl", "agree"), 0.0
    )
    counts = dict.fromkeys(("tokens", "teacher_tokens", "chars", "groups", "exact"), 0)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        labels = batch.pop("labels")
        t = {k: batch.pop(k) for k in GROUP_KEYS}
        s, targets = shift_for_next_token(student(**batch).logits, labels)
        mask = targets.ne(IGNORE_INDEX)
        log_s = s[mask].float().log_softmax(-1)
        groups = t["group_student"].numel()
        later = t["span_student"]
        s_scale = span_log_scale(
            log_s[later].gather(-1, targets[mask][later].unsqueeze(-1)).squeeze(-1), t["span_student_group"], groups
        )
        t_scale = span_log_scale(t["teacher_target_log_probs"][t["span_teacher"]], t["span_teacher_group"], groups)
        first_s, first_t = log_s[t["group_student"]], t["group_teacher"]
        sums["uld"] += (
            uld(first_s, t["teacher_log_probs"][first_t], t["teacher_tail"][first_t], s_scale, t_scale).sum().item()
        )
        exact = torch.ones(groups, dtype=torch.bool, device=device)
        exact[t["span_student_group"]] = False
        exact[t["span_teacher_group"]] = False
        ids = t["teacher_ids"][first_t][exact]
        zero = torch.zeros(int(exact.sum()), device=device)
        sums["kl"] += (
            matched_kl(first_s[exact], ids, t["teacher_log_probs"][first_t][exact], zero, zero, table.to(device))
            .sum()
            .item()
        )
        sums["agree"] += table.to(device)[ids[:, 0]].eq(first_s[exact].argmax(-1)).sum().item()
        student_nll, teacher_lp = token_cross_entropy(s, targets)[mask], t["teacher_target_log_probs"]
        sums["student_nll"] += student_nll.sum().item()
        sums["teacher_nll"] -= teacher_lp.sum().item()
        spans = [span for r in chunk for span in trained_spans(r)]
        s_text = torch.tensor([e > b for b, e in spans], device=device)
        t_text = torch.cat([collate.cache.offsets(r["id"]).diff(dim=-1).squeeze(-1).gt(0) for r in chunk])
        sums["student_text_nll"] += student_nll[s_text].sum().item()
        sums["teacher_text_nll"] -= teacher_lp[t_text.to(device)].sum().item()
        counts["tokens"] += int(mask.sum())
        counts["teacher_tokens"] += t["teacher_target_log_probs"].numel()
        counts["chars"] += sum(e - b for b, e in spans)
        counts["groups"] += groups
        counts["exact"] += int(exact.sum())
    n, chars = max(counts["tokens"], 1), max(counts["chars"], 1)
    teacher_loss = sums["teacher_nll"] / max(counts["teacher_tokens"], 1)
    return {
        "teacher": {
            "loss": teacher_loss,
            "perplexity": math.exp(teacher_loss),
            "loss_per_char": sums["teacher_nll"] / chars,
            "text_loss_per_char": sums["teacher_text_nll"] / chars,
        },
        "student": {
            "loss": sums["student_nll"] / n,
            "perplexity": math.exp(sums["student_nll"] / n),
            "loss_per_char": sums["student_nll"] / chars,
            "text_loss_per_char": sums["student_text_nll"] / chars,
            "uld_to_teacher": sums["uld"] / max(counts["groups"], 1),
            "kl_to_teacher": sums["kl"] / max(counts["exact"], 1),
            "top1_agreement": sums["agree"] / max(counts["exact"], 1),
        },
        "tokens": counts["tokens"],
        "teacher_tokens": counts["teacher_tokens"],
        "teacher_from": "cache, another tokenizer: losses per own token and per character of the trained text (text_: "
        "without the EOS each side appends); "
        "ULD per aligned group; KL over same-text top-k tokens and top-1 agreement on exactly aligned tokens",
    }


class ScheduledCrossTokenizerTrainer(ScheduledTrainerMixin, CrossTokenizerTrainer):
    """The cross-tokenizer trainer drawing its examples from the curriculum's sampler."""


def prepare_cross(recipe: Recipe) -> dict:
    """Both tokenizers, the method, and the student and teacher rows of train and held-out examples."""
    student_tok, teacher_tok = tokenizers(recipe)
    method, why = cross_method(recipe, student_tok, teacher_tok)
    train, heldout, counts = split_examples(recipe)
    chat, max_len = recipe.data.chat_template, recipe.distill.max_seq_len

    def rows(examples: list) -> tuple[list[dict], list[dict]]:
        pairs = [cross_rows(ex, student_tok, teacher_tok, chat, max_len) for ex in examples]
        kept = [(s, t) for s, t in pairs if trained_spans(s) and t["target_offsets"]]
        return [s for s, _ in kept], [t for _, t in kept]

    (train_s, train_t), (eval_s, eval_t) = rows(train), rows(heldout)
    if not train_s or not eval_s:
        raise MinnowError("data: no example has response tokens left after truncation to distill.max_seq_len")
    return {
        "student_tok": student_tok,
        "teacher_tok": teacher_tok,
        "method": method,
        "why": why,
        "train": train,
        "heldout": heldout,
        "counts": counts,
        "train_rows": train_s,
        "eval_rows": eval_s,
        "teacher_rows": train_t + eval_t,
        "alignment": alignment_shares(train_s, train_t),
    }


def cache_teacher_cross(run: RunDir, p: dict, device: torch.device) -> tuple[TeacherCache, dict]:
    """The teacher cache over the teacher's rows, with their token spans; the teacher is loaded only to build it."""
    recipe = run.recipe
    collate = DataCollatorForSeq2Seq(
        p["teacher_tok"], padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
    )
    teacher = functools.cache(lambda: load_causal_lm(recipe.teacher, device).eval())
    return ensure_cache(
        run.teacher_cache, recipe, p["teacher_tok"], p["teacher_rows"], teacher, collate, device, p["student_tok"]
    )


def distill_cross_tokenizer(run: RunDir, prompt_text: Callable) -> dict:
    """Train the student across tokenizers; returns report.json#distill (``prompt_text`` from the causal-lm flow)."""
    recipe, cfg = run.recipe, run.recipe.distill
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    args = training_arguments(recipe, run.checkpoints, device, remove_unused_columns=False)
    with args.main_process_first(local=False, desc="teacher cache and scores"):
        p = prepare_cross(recipe)
        cache, cache_info = cache_teacher_cross(run, p, device)
        tok, train_rows, eval_rows = p["student_tok"], p["train_rows"], p["eval_rows"]
        collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
        table, matched = vocabulary_match(tok, p["teacher_tok"])
        student = load_causal_lm(recipe.student, device)
        ids = [r["id"] for r in train_rows]
        texts = {ex["id"]: example_text(ex) for ex in p["train"]}
        scorers = causal_scorers(cache, student, train_rows, collate, cfg.eval_batch_size, device)
        plan = plan_curriculum(recipe.curriculum, recipe.task, recipe.data, run, ids, [texts[i] for i in ids], scorers)
    eval_collate = CrossTokenizerCollator(collate, cache, 1.0, cfg.eos_kd)
    evaluate = lambda model: evaluate_cross(model, eval_rows, eval_collate, table, cfg.eval_batch_size, device)  # noqa: E731
    before = evaluate(student)
    student = with_lora(student, recipe.lora, task_type="CAUSAL_LM")
    learnable = causal_learnability(plan, lambda: trainer.model, train_rows, collate, cfg.eval_batch_size, device)
    trainer = ScheduledCrossTokenizerTrainer(
        sampler=plan.sampler(cfg.steps, args.train_batch_size * cfg.grad_accum * args.world_size, cfg.seed, learnable),
        model=student,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        data_collator=CrossTokenizerCollator(collate, cache, cfg.temperature, cfg.eos_kd),
        processing_class=tok,
        temperature=cfg.temperature,
        ce_weight=cfg.ce_weight,
        teacher_to_student=table if p["method"] == "hybrid" else None,
    )
    trained = train_timed(trainer, run.checkpoints)
    student = merged(trainer.model, recipe.lora)
    if not trained.main_process:
        return {}
    save_pretrained(student, tok, run.student)
    return trained.report(device, cache_info["teacher_parameters"], parameter_count(student)) | {
        "examples": p["counts"] | {"train": len(train_rows), "heldout": len(eval_rows)},
        "loss": {
            "kd": p["method"],
            "temperature": cfg.temperature,
            "ce_weight": cfg.ce_weight,
            "mode": cfg.mode,
            "on_policy_fraction": 0.0,
        },
        "teacher_cache": cache_info,
        "tokenizer": {
            "tokens": len(tok),
            "teacher_tokens": len(p["teacher_tok"]),
            "chat_template": "the student's renders the text both tokenizers read"
            if recipe.data.chat_template
            else "none",
            "cross_tokenizer": {
                "method": p["method"],
                "why": p["why"],
                "same_text_tokens": matched,
                "alignment": p["alignment"],
            },
        },
        "curriculum": plan.report(),
        "eval_before": before,
        "eval": evaluate(student),
        "parity_prompts": [prompt_text(ex, tok, recipe.data.chat_template) for ex in p["heldout"]],
    }
