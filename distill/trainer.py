"""Thin ``transformers.Trainer`` subclasses: the library runs the loop, checkpoints and multi-process; we add the loss."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch
from transformers import Trainer

from .encoder import EncoderWithPooling
from .losses import (
    IGNORE_INDEX,
    Divergence,
    attention_relation_kl,
    embedding_cosine,
    embedding_mse,
    forward_kl_from_log_probs,
    hidden_state_loss_sum,
    kd_loss_sum,
    mapped_token_mse,
    similarity_matrix_mse,
    sparse_kd_loss_sum,
    token_mse,
)
from .schedules import ScheduledTrainerMixin

CACHED_TEACHER = ("teacher_ids", "teacher_log_probs", "teacher_tail")


class LogitDistillTrainer(Trainer):
    """Causal-LM student trained on the teacher's softened logits mixed with cross-entropy, per response token.

    The teacher is either a model run on each batch, or absent: then each batch carries the teacher's cached
    top-k log-probabilities and tail mass for its trained positions (``teacher_ids``, ``teacher_log_probs``,
    ``teacher_tail``, see :mod:`distill.teacher_cache`) and the sparse loss is used.

    The loss is summed over the trained tokens of the micro-batch and divided by the number of trained tokens
    in the whole optimizer step (``num_items_in_batch``, counted by the Trainer across gradient accumulation
    and processes), so every token weighs the same.

    With ``on_policy_fraction`` λ > 0, a seeded share λ of the optimizer steps replaces each batch's responses
    by the student's own sampled continuations of the prompts, scored by the teacher (on-policy KD, GKD:
    Agarwal et al. 2024); those steps are normalised by their own generated-token count.

    With ``hidden_weight`` > 0 the student was cut from the teacher, keeping its layers ``teacher_layers``, and
    each kept layer's output is also pulled toward the output of the teacher layer it was copied from
    (:func:`hidden_state_loss_sum`; the teacher runs on each batch for its hidden states). The student's final,
    normalised state is paired with the teacher's, which the language-model head reads in both. That term covers
    every real token, prompt included (how the student reads the prompt is what it answers from), and is divided
    like the rest by the trained tokens of the step.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        teacher: torch.nn.Module | None,
        temperature: float,
        ce_weight: float,
        div: Divergence = forward_kl_from_log_probs,
        on_policy_fraction: float = 0.0,
        max_new_tokens: int = 128,
        hidden_weight: float = 0.0,
        teacher_layers: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # makes the Trainer count response tokens per optimizer step
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval()
            self.teacher.requires_grad_(False)
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.div = div
        self.on_policy_fraction = on_policy_fraction
        self.max_new_tokens = max_new_tokens
        if on_policy_fraction > 0 and teacher is None:
            raise ValueError("on-policy steps need the teacher model to score the student's continuations")
        self.hidden_weight = hidden_weight
        if hidden_weight > 0:
            if teacher is None or not teacher_layers:
                raise ValueError(
                    "the hidden-state loss needs the teacher model and the teacher layer of each student layer"
                )
            # index 0 of ``hidden_states`` is the embeddings, l + 1 the output of layer l, the last one normalised
            self.teacher_states = [layer + 1 for layer in teacher_layers[:-1]] + [teacher.config.num_hidden_layers]

    def on_policy_step(self) -> bool:
        """Whether this optimizer step trains on the student's own continuations (seeded by step: resumable)."""
        draw = random.Random(self.args.seed * 1_000_003 + self.state.global_step).random()
        return draw < self.on_policy_fraction

    @torch.no_grad()
    def student_continuations(self, model, inputs: dict) -> dict:
        """The batch's prompts continued by the student (sampled at T = 1, as in GKD); only those tokens are trained.

        A row's prompt is everything before its first trained token. Prompts are left-padded for generation,
        so positions are given explicitly to both models.
        """
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        trained = labels.ne(IGNORE_INDEX) & mask.bool()
        starts = torch.where(trained.any(-1), trained.float().argmax(-1), mask.sum(-1))
        width = int(starts.max())
        pad = self.processing_class.pad_token_id
        prompts = torch.full((ids.size(0), width), pad, dtype=ids.dtype, device=ids.device)
        prompt_mask = torch.zeros_like(prompts)
        for row, start in enumerate(starts.tolist()):
            prompts[row, width - start :] = ids[row, :start]
            prompt_mask[row, width - start :] = 1
        student = self.accelerator.unwrap_model(model)
        was_training = student.training
        student.eval()
        out = student.generate(
            input_ids=prompts,
            attention_mask=prompt_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            pad_token_id=pad,
            eos_token_id=self.processing_class.eos_token_id,
        )
        student.train(was_training)
        new = out[:, width:]
        ended = new.eq(self.processing_class.eos_token_id).long().cumsum(-1)
        keep = (ended == 0) | ((ended == 1) & new.eq(self.processing_class.eos_token_id))  # up to the first end
        full_mask = torch.cat([prompt_mask, keep.long()], -1)
        new_labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX), new.masked_fill(~keep, IGNORE_INDEX)], -1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": out, "attention_mask": full_mask, "position_ids": positions, "labels": new_labels}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        on_policy = self.on_policy_fraction > 0 and model.training and self.on_policy_step()
        if on_policy:
            inputs = self.student_continuations(model, inputs)
            num_items_in_batch = None  # normalised by this micro-batch's own generated tokens
        labels = inputs.pop("labels")
        cached = [inputs.pop(k) for k in CACHED_TEACHER if k in inputs]
        cached = [] if on_policy else cached
        hidden = self.hidden_weight > 0
        outputs = model(**inputs, output_hidden_states=hidden)
        teacher_out = None
        if hidden or not cached:
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, output_hidden_states=hidden)
        if cached:
            loss_sum, _, _ = sparse_kd_loss_sum(
                outputs.logits, labels, *cached, self.temperature, self.ce_weight, self.div
            )
        else:
            loss_sum, _, _ = kd_loss_sum(
                outputs.logits, teacher_out.logits, labels, self.temperature, self.ce_weight, self.div
            )
        if hidden:
            paired = [teacher_out.hidden_states[i] for i in self.teacher_states]
            states = hidden_state_loss_sum(outputs.hidden_states[1:], paired, inputs["attention_mask"])
            loss_sum = loss_sum + self.hidden_weight * states
        loss = self.per_token(loss_sum, labels, num_items_in_batch)
        if on_policy:
            loss = loss / self.args.gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def per_token(self, loss_sum: torch.Tensor, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """The summed loss over the trained tokens of the optimizer step (this micro-batch's when not counted)."""
        local_tokens = labels[:, 1:].ne(IGNORE_INDEX).sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else local_tokens.clamp(min=1)
        loss = loss_sum / denominator
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and num_items_in_batch is not None:
            loss = loss * self.args.world_size  # DDP averages gradients over processes; the denominator is global
        return loss


TEACHER_RUN_TERMS = ("tokens", "layers", "attention")  # need the teacher's token vectors or attention inputs


@contextlib.contextmanager
def last_layer_qkv(encoder: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the query, key and value projections [batch, seq, hidden] of a BERT-like encoder's last layer."""
    attention = [m for name, m in encoder.named_modules() if name.endswith("attention.self")][-1]
    captured: list[torch.Tensor] = []
    hooks = [
        getattr(attention, name).register_forward_hook(lambda m, i, out: captured.append(out))
        for name in ("query", "key", "value")
    ]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


class EmbeddingDistillTrainer(Trainer):
    """Sentence-embedding student trained on the teacher's embeddings; the loss is a sum of named terms.

    Terms on sentence embeddings use the cached teacher embeddings that travel in the batch as
    ``teacher_embedding``: ``mse``, ``cosine``, ``similarity`` (in-batch similarity matrices). Terms on token
    vectors run the teacher on the batch (it must share the student's tokenizer): ``tokens`` (last-layer hidden
    states, TinyBERT), ``layers`` (every student layer's hidden states against the teacher layer ``teacher_layers``
    maps it to, TinyBERT) and ``attention`` (last-layer query/key/value self-relations, MiniLMv2).
    """

    def __init__(
        self,
        *args,
        loss: str,
        teacher: EncoderWithPooling | None = None,
        relation_heads: int = 12,
        teacher_layers: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loss_terms = loss.split("+")
        self.relation_heads = relation_heads
        if "layers" in self.loss_terms and not teacher_layers:
            raise ValueError("the `layers` term needs the teacher layer each student layer was copied from")
        self.teacher_layers = teacher_layers or []
        self.teacher = None
        if set(self.loss_terms) & set(TEACHER_RUN_TERMS):
            if teacher is None:
                raise ValueError(f"loss terms {TEACHER_RUN_TERMS} need the teacher model")
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        target = inputs.pop("teacher_embedding")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        relations = "attention" in self.loss_terms
        with last_layer_qkv(model) if relations else contextlib.nullcontext([]) as student_qkv:
            student, states = model(ids, mask, return_states=True)
        losses = {
            "mse": lambda: embedding_mse(student, target),
            "cosine": lambda: embedding_cosine(student, target),
            "similarity": lambda: similarity_matrix_mse(student, target),
        }
        if self.teacher is not None:
            with (
                torch.no_grad(),
                last_layer_qkv(self.teacher) if relations else contextlib.nullcontext([]) as teacher_qkv,
            ):
                teacher_states = self.teacher.encoder(
                    input_ids=ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states
            losses["tokens"] = lambda: token_mse(states[-1], teacher_states[-1], mask)
            paired = [teacher_states[layer + 1] for layer in self.teacher_layers]
            losses["layers"] = lambda: mapped_token_mse(states[1:], paired, mask)
            losses["attention"] = lambda: attention_relation_kl(student_qkv, teacher_qkv, mask, self.relation_heads)
        loss = sum(losses[name]() for name in self.loss_terms)
        return (loss, student) if return_outputs else loss


class ScheduledLogitDistillTrainer(ScheduledTrainerMixin, LogitDistillTrainer):
    """The causal-LM trainer drawing its examples from the curriculum's sampler."""


class ScheduledEmbeddingDistillTrainer(ScheduledTrainerMixin, EmbeddingDistillTrainer):
    """The embedding trainer drawing its examples from the curriculum's sampler."""
