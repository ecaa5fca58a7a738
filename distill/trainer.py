"""Thin ``transformers.Trainer`` subclasses: the library runs the loop, checkpoints and multi-process; we add the loss."""

from __future__ import annotations

import torch
from transformers import Trainer

from .losses import Divergence, embedding_cosine, embedding_mse, forward_kl_from_log_probs, kd_loss_sum, sparse_kd_loss_sum

CACHED_TEACHER = ("teacher_ids", "teacher_log_probs", "teacher_tail")


class LogitDistillTrainer(Trainer):
    """Causal-LM student trained on the teacher's softened logits mixed with cross-entropy, per response token.

    The teacher is either a model run on each batch, or absent: then each batch carries the teacher's cached
    top-k log-probabilities and tail mass for its trained positions (``teacher_ids``, ``teacher_log_probs``,
    ``teacher_tail``, see :mod:`distill.teacher_cache`) and the sparse loss is used.

    The loss is summed over the trained tokens of the micro-batch and divided by the number of trained tokens
    in the whole optimizer step (``num_items_in_batch``, counted by the Trainer across gradient accumulation
    and processes), so every token weighs the same.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        teacher: torch.nn.Module | None,
        temperature: float,
        ce_weight: float,
        div: Divergence = forward_kl_from_log_probs,
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        cached = [inputs.pop(k) for k in CACHED_TEACHER if k in inputs]
        outputs = model(**inputs)
        if cached:
            loss_sum, _, _ = sparse_kd_loss_sum(
                outputs.logits, labels, *cached, self.temperature, self.ce_weight, self.div
            )
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            loss_sum, _, _ = kd_loss_sum(outputs.logits, teacher_logits, labels, self.temperature, self.ce_weight, self.div)
        local_tokens = labels[:, 1:].ne(-100).sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else local_tokens.clamp(min=1)
        loss = loss_sum / denominator
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and num_items_in_batch is not None:
            loss = loss * self.args.world_size  # DDP averages gradients over processes; the denominator is global
        return (loss, outputs) if return_outputs else loss


class EmbeddingDistillTrainer(Trainer):
    """Sentence-embedding student regressed onto cached teacher embeddings (MSE and/or cosine).

    The teacher never runs during training: its embeddings are computed once and travel in the batch as
    ``teacher_embedding``.
    """

    def __init__(self, *args, loss: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_terms = loss.split("+")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        target = inputs.pop("teacher_embedding")
        student = model(inputs["input_ids"], inputs["attention_mask"])
        terms = {"mse": embedding_mse, "cosine": embedding_cosine}
        loss = sum(terms[name](student, target) for name in self.loss_terms)
        return (loss, student) if return_outputs else loss
