"""Embedding recipe flow: teacher encoder → (layer-subset) student → cached teacher embeddings → MSE/cosine KD.

The teacher runs once over the data; its embeddings are the regression targets, so training never holds
the teacher in memory next to the student.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from rich.progress import track
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe
from minnow.core.rundir import RunDir

from .curriculum import Scorer, embedding_learnability, plan_curriculum
from .data import split_examples
from .encoder import PROJECTION_FILE, EncoderWithPooling, TorchEncoder, load_encoder
from .metrics import agreement
from .models import check_mean_pooling, local_model_dir
from .schedules import scheduled
from .scorers import ScoreCache
from .trainer import EmbeddingDistillTrainer
from .training import pick_device, train_resuming, training_arguments


def derive_student(teacher: EncoderWithPooling, layers: list[int]) -> EncoderWithPooling:
    """A copy of the teacher keeping only ``layers`` of its transformer stack (Sanh et al. 2019, DistilBERT init)."""
    n = teacher.encoder.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise MinnowError(f"student.from_teacher.layers: {bad or layers} not in 0..{n - 1} (the teacher has {n} layers)")
    encoder = copy.deepcopy(teacher.encoder)
    encoder.encoder.layer = torch.nn.ModuleList(encoder.encoder.layer[i] for i in layers)
    encoder.config.num_hidden_layers = len(layers)
    return EncoderWithPooling(encoder)


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
    if recipe.student.from_teacher is not None:
        student = derive_student(teacher, recipe.student.from_teacher.layers)
    else:
        student, _ = load_encoder(local_model_dir(recipe.student.path, recipe.student.revision))
        if student.dim != teacher.dim:
            student.projection = torch.nn.Linear(student.dim, teacher.dim)

    train, heldout, counts = split_examples(recipe)
    _write_jsonl(run.heldout, heldout)
    _write_jsonl(run.corpus, heldout + train[: max(0, recipe.serve.search_corpus - len(heldout))])

    everything = train + heldout
    ids = [ex["id"] for ex in everything]
    emb, scores = _cached_teacher(run, teacher, tok, [ex["text"] for ex in everything], ids, cfg, device)
    ScoreCache(run.scores, run.scorer_costs).set_column("incoherence", scores)
    train_emb, held_emb = emb[: len(train)], emb[len(train) :]
    train_ids = ids[: len(train)]
    free = Scorer("free", ("incoherence",), lambda pos: [{"incoherence": scores[train_ids[i]]} for i in pos])
    plan = plan_curriculum(recipe.curriculum, recipe.task, recipe.data, run, train_ids,
                           [ex["text"] for ex in train], {"teacher pass (targets)": free})

    held_texts = [ex["text"] for ex in heldout]
    before = agreement(TorchEncoder(student.to(device), tok).encode(held_texts, cfg.eval_batch_size, cfg.max_seq_len), held_emb)

    if cfg.freeze_embeddings:
        student.encoder.get_input_embeddings().requires_grad_(False)
    if recipe.lora is not None:
        lora = recipe.lora
        student.encoder = get_peft_model(
            student.encoder, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
        )
    rows = [
        {**tok(ex["text"], truncation=True, max_length=cfg.max_seq_len), "teacher_embedding": train_emb[i].tolist()}
        for i, ex in enumerate(train)
    ]

    def collate(features: list[dict]) -> dict:
        target = torch.tensor([f.pop("teacher_embedding") for f in features])
        return dict(tok.pad(features, return_tensors="pt")) | {"teacher_embedding": target}

    args = training_arguments(recipe, run.checkpoints, device, remove_unused_columns=False)
    learnable = embedding_learnability(lambda: trainer.model, tok, [ex["text"] for ex in train], train_emb, cfg)
    trainer = scheduled(EmbeddingDistillTrainer)(
        sampler=plan.sampler(cfg.steps, args.train_batch_size * cfg.grad_accum * args.world_size, cfg.seed, learnable),
        model=student.train(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
        loss=cfg.embedding_loss,
    )
    started = time.perf_counter()
    train_resuming(trainer, run.checkpoints)
    train_seconds = time.perf_counter() - started
    if not trainer.is_world_process_zero():
        return {}
    if recipe.lora is not None:
        student.encoder = student.encoder.merge_and_unload()
    student.eval()
    save_encoder(student, tok, run.student)
    after = agreement(TorchEncoder(student, tok).encode(held_texts, cfg.eval_batch_size, cfg.max_seq_len), held_emb)
    return {
        "device": str(device),
        "examples": counts,
        "train_seconds": round(train_seconds, 2),
        "steps": trainer.state.global_step,
        "loss_log": [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e],
        "parameters": {"teacher": _count(teacher), "student": _count(student)},
        "layers": {"teacher": teacher.encoder.config.num_hidden_layers, "student": student.encoder.config.num_hidden_layers},
        "curriculum": plan.report(),
        "eval_before": {"student": before, "texts": len(heldout)},
        "eval": {"student": after, "texts": len(heldout)},
        "parity_prompts": held_texts,
    }


def save_encoder(model: EncoderWithPooling, tok: PreTrainedTokenizerBase, folder: Path) -> None:
    with atomic.output_dir(folder) as tmp:
        model.encoder.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if model.projection is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.projection.state_dict().items()}, str(tmp / PROJECTION_FILE))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
