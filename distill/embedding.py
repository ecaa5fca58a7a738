"""Embedding recipe flow: teacher encoder → student cut from it → cached teacher embeddings → MSE/cosine KD.

The teacher runs once over the data; its embeddings are the regression targets, so training never holds
the teacher in memory next to the student.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from rich.progress import track
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import FromTeacher, Recipe
from minnow.core.rundir import RunDir

from .curriculum import Scorer, embedding_learnability, plan_curriculum
from .data import sentence_splits, split_examples, unseen_examples
from .encoder import EncoderWithPooling, TorchEncoder, load_encoder, save_sentence_transformer, tokenized_batches
from .metrics import agreement
from .models import check_mean_pooling, local_model_dir
from .prune import importance_rows, keep_columns, keep_rows, top_units, unit_importance
from .scorers import ScoreCache
from .trainer import ScheduledEmbeddingDistillTrainer
from .training import merged, parameter_count, pick_device, train_timed, training_arguments, with_lora


def derive_student(teacher: EncoderWithPooling, spec: FromTeacher, batches: list[dict]) -> EncoderWithPooling:
    """A copy of the teacher keeping only ``spec.layers`` of its transformer stack (Sanh et al. 2019, DistilBERT
    init) and, with ``spec.mlp_fraction``, that share of each kept layer's FFN units, the most active over
    ``batches`` (tokenized training texts; Muralidharan et al. 2024, Minitron)."""
    n = teacher.encoder.config.num_hidden_layers
    layers = spec.layers or []
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise MinnowError(
            f"student.from_teacher.layers: {bad or layers} not in 0..{n - 1} (the teacher has {n} layers)"
        )
    encoder = copy.deepcopy(teacher.encoder)
    encoder.encoder.layer = torch.nn.ModuleList(encoder.encoder.layer[i] for i in layers)
    encoder.config.num_hidden_layers = len(layers)
    student = EncoderWithPooling(encoder)
    if spec.mlp_fraction is not None:
        narrow_ffn(student, spec.mlp_fraction, batches)
    return student


def narrow_ffn(student: EncoderWithPooling, fraction: float, batches: list[dict]) -> None:
    """Keep ``fraction`` of every layer's FFN units, ranked by mean |activation| over ``batches`` (Minitron); the
    config's ``intermediate_size`` follows, so the saved folder reloads with plain transformers."""
    layers = student.encoder.encoder.layer
    if not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise MinnowError(
            f"student.from_teacher.mlp_fraction: {type(student.encoder).__name__} is not a BERT-style encoder "
            "(layer.intermediate.dense → layer.output.dense)"
        )
    importance = unit_importance(student, [layer.output.dense for layer in layers], batches)
    for layer, scores in zip(layers, importance):
        keep = top_units(scores, fraction)
        layer.intermediate.dense = keep_rows(layer.intermediate.dense, keep)
        layer.output.dense = keep_columns(layer.output.dense, keep)
    student.encoder.config.intermediate_size = len(keep)


@torch.inference_mode()
def teacher_pass(
    teacher: EncoderWithPooling, tok: PreTrainedTokenizerBase, texts: list[str], batch_size: int, max_len: int, device
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher embeddings, and each text's incoherence: 1 - mean cosine of its token vectors to its sentence vector.

    Tokens of a coherent paragraph point the same way as the paragraph's embedding; boilerplate, lists of
    symbols and mixed-up text scatter. A free by-product of the pass that computes the training targets.
    """
    embeddings, scores = [], []
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length pad little
    for i in track(range(0, len(texts), batch_size), description="Teacher embeddings"):
        chunk = [texts[j] for j in by_length[i : i + batch_size]]
        batch = tok(chunk, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
        hidden = teacher.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        sentence = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        token_cos = torch.nn.functional.cosine_similarity(hidden, sentence.unsqueeze(1), dim=-1)
        coherence = (token_cos * mask.squeeze(-1)).sum(1) / mask.squeeze(-1).sum(1)
        embeddings.append(sentence.float().cpu().numpy())
        scores += (1 - coherence).tolist()
    restore = np.argsort(by_length)
    return np.concatenate(embeddings)[restore], np.array(scores)[restore]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _cached_teacher(run: RunDir, teacher, tok, texts, ids, cfg, device) -> tuple[np.ndarray, dict[str, float]]:
    """Teacher embeddings and scores, cached in the run directory (a resumed run does not recompute them)."""
    cache = run.teacher_embeddings
    if cache.is_file():
        stored = load_file(cache)
        cached_ids = json.loads((cache.with_suffix(".ids.json")).read_text())
        if cached_ids == ids:
            return stored["embeddings"].numpy(), {i: float(s) for i, s in zip(ids, stored["scores"].tolist())}
    emb, scores = teacher_pass(teacher, tok, texts, cfg.eval_batch_size, cfg.max_seq_len, device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": torch.from_numpy(emb), "scores": torch.from_numpy(scores)}, str(cache) + ".tmp")
    Path(str(cache) + ".tmp").replace(cache)
    atomic.write_text(cache.with_suffix(".ids.json"), json.dumps(ids))
    return emb, dict(zip(ids, scores.tolist()))


def distill_embedding(run: RunDir) -> dict:
    recipe: Recipe = run.recipe
    cfg = recipe.distill
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    teacher_dir = local_model_dir(recipe.teacher.path, recipe.teacher.revision)
    check_mean_pooling(teacher_dir)
    teacher, tok = load_encoder(teacher_dir)
    teacher.to(device)
    train, heldout, counts = split_examples(recipe)
    spec = recipe.student.from_teacher
    if spec is not None:
        texts = [ex["text"] for ex in importance_rows(train, spec.importance_examples, recipe.distill.seed)]
        batches = [b.to(device) for b in tokenized_batches(tok, texts, cfg.eval_batch_size, cfg.max_seq_len, "pt")]
        student = derive_student(teacher, spec, batches)
    else:
        student, _ = load_encoder(local_model_dir(recipe.student.path, recipe.student.revision))
        if student.dim != teacher.dim:
            student.projection = torch.nn.Linear(student.dim, teacher.dim)
    if (
        "tokens" in cfg.embedding_loss.split("+")
        and student.encoder.config.hidden_size != teacher.encoder.config.hidden_size
    ):
        raise MinnowError("distill.embedding_loss: `tokens` needs a student as wide as the teacher; use `attention`")

    _write_jsonl(run.heldout, heldout)
    _write_jsonl(run.corpus, heldout + train[: max(0, recipe.serve.search_corpus - len(heldout))])
    if recipe.data.sentence_splits:
        known = {ex["id"] for ex in train + heldout}
        train += list({ex["id"]: ex for ex in sentence_splits(train) if ex["id"] not in known}.values())
        counts["train_with_sentences"] = len(train)
    seen = {ex["text"] for ex in train + heldout}
    unseen = unseen_examples(recipe.data.unseen, recipe.data.unseen_examples, seen) if recipe.data.unseen else []
    _write_jsonl(run.unseen, unseen)

    everything = train + heldout + unseen
    ids = [ex["id"] for ex in everything]
    emb, scores = _cached_teacher(run, teacher, tok, [ex["text"] for ex in everything], ids, cfg, device)
    ScoreCache(run.scores, run.scorer_costs).set_column(
        "incoherence", {i: scores[i] for i in ids[: len(train) + len(heldout)]}
    )
    train_emb, held_emb = emb[: len(train)], emb[len(train) : len(train) + len(heldout)]
    unseen_emb = emb[len(train) + len(heldout) :]
    train_ids = ids[: len(train)]
    free = Scorer("free", ("incoherence",), lambda pos: [{"incoherence": scores[train_ids[i]]} for i in pos])
    plan = plan_curriculum(
        recipe.curriculum,
        recipe.task,
        recipe.data,
        run,
        train_ids,
        [ex["text"] for ex in train],
        {"teacher pass (targets)": free},
    )

    held_texts = [ex["text"] for ex in heldout]

    def evaluate() -> dict:
        """Agreement with the teacher on the held-out texts, and on the unseen domain when the recipe has one."""
        encoder = TorchEncoder(student.to(device), tok)
        out = {
            "eval": {
                "student": agreement(encoder.encode(held_texts, cfg.eval_batch_size, cfg.max_seq_len), held_emb),
                "texts": len(heldout),
            }
        }
        if unseen:
            got = encoder.encode([ex["text"] for ex in unseen], cfg.eval_batch_size, cfg.max_seq_len)
            out["eval_unseen"] = {
                "student": agreement(got, unseen_emb),
                "texts": len(unseen),
                "source": recipe.data.unseen,
            }
        return out

    before = evaluate()

    if cfg.freeze_embeddings:
        student.encoder.get_input_embeddings().requires_grad_(False)
    student.encoder = with_lora(student.encoder, recipe.lora)
    rows = [
        {**tok(ex["text"], truncation=True, max_length=cfg.max_seq_len), "teacher_embedding": train_emb[i].tolist()}
        for i, ex in enumerate(train)
    ]

    def collate(features: list[dict]) -> dict:
        target = torch.tensor([f.pop("teacher_embedding") for f in features])
        return dict(tok.pad(features, return_tensors="pt")) | {"teacher_embedding": target}

    args = training_arguments(recipe, run.checkpoints, device, remove_unused_columns=False)
    learnable = embedding_learnability(lambda: trainer.model, tok, [ex["text"] for ex in train], train_emb, cfg)
    trainer = ScheduledEmbeddingDistillTrainer(
        sampler=plan.sampler(cfg.steps, args.train_batch_size * cfg.grad_accum * args.world_size, cfg.seed, learnable),
        model=student.train(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
        loss=cfg.embedding_loss,
        teacher=teacher,
        relation_heads=cfg.relation_heads,
        teacher_layers=spec.layers if spec is not None else None,
    )
    trained = train_timed(trainer, run.checkpoints)
    if not trained.main_process:
        return {}
    student.encoder = merged(student.encoder, recipe.lora)
    student.eval()
    save_encoder(student, tok, run.student, cfg.max_seq_len)
    after = evaluate()
    return trained.report(device, parameter_count(teacher), parameter_count(student)) | {
        "examples": counts,
        "layers": {
            "teacher": teacher.encoder.config.num_hidden_layers,
            "student": student.encoder.config.num_hidden_layers,
        },
        "mlp_width": {
            "teacher": teacher.encoder.config.intermediate_size,
            "student": student.encoder.config.intermediate_size,
        },
        "curriculum": plan.report(),
        "eval_before": before["eval"],
        **({"eval_unseen_before": before["eval_unseen"]} if unseen else {}),
        **after,
        "parity_prompts": held_texts,
    }


def save_encoder(model: EncoderWithPooling, tok: PreTrainedTokenizerBase, folder: Path, max_seq_len: int) -> None:
    """The student as a sentence-transformers model folder, appearing whole or not at all."""
    with atomic.output_dir(folder) as tmp:
        save_sentence_transformer(model, tok, tmp, max_seq_len)
