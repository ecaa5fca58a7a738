"""What both task flows share: device choice, Trainer arguments from the recipe, resume, atomic save."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from minnow import atomic
from minnow.recipe import Recipe


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def training_arguments(recipe: Recipe, output_dir: Path, device: torch.device, **overrides) -> TrainingArguments:
    cfg = recipe.distill
    args = dict(
        output_dir=str(output_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=int(cfg.warmup_ratio * cfg.steps),
        lr_scheduler_type="linear",
        weight_decay=cfg.weight_decay,
        logging_steps=max(1, cfg.steps // 20),
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="sequential",
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        report_to="none",
        dataloader_num_workers=0,
    )
    return TrainingArguments(**(args | overrides))


def train_resuming(trainer: Trainer, checkpoints: Path) -> None:
    """Train, continuing from the newest checkpoint when an earlier attempt left one."""
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        Console(stderr=True).print(f"resuming from {Path(last).name}")
    trainer.train(resume_from_checkpoint=last)


def save_pretrained(model, tokenizer, folder: Path) -> None:
    """Weights (safetensors) and tokenizer written to a temporary folder, then renamed into place."""
    with atomic.output_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
