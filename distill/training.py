"""What both task flows share: device choice, Trainer arguments from the recipe, resume, atomic save."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from minnow.core import atomic
from minnow.core.recipe import Lora, Recipe


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def bf16_training(choice: str, device: torch.device) -> bool:
    """Whether training runs its matmuls in bfloat16: asked for, or `auto` on a chip with bf16 units (on a CPU without
    them bf16 is emulated, slower than fp32)."""
    if choice != "auto":
        return choice == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def training_arguments(recipe: Recipe, output_dir: Path, device: torch.device, **overrides) -> TrainingArguments:
    cfg = recipe.distill
    args = dict(
        output_dir=str(output_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=int(cfg.warmup_ratio * cfg.steps),
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        logging_steps=max(1, cfg.steps // 20),
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="sequential",
        use_cpu=device.type == "cpu",
        bf16=bf16_training(cfg.mixed_precision, device),
        report_to="none",
        dataloader_num_workers=0,
    )
    return TrainingArguments(**(args | overrides))


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing: its trainer_state.json, written last, reads back.

    A process killed while saving leaves a checkpoint folder without it; the one before is used instead.
    """
    found = sorted(checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for folder in reversed(found):
        try:
            json.loads((folder / TRAINER_STATE_NAME).read_text())
        except (OSError, ValueError):
            continue
        return folder
    return None


def train_resuming(trainer: Trainer, checkpoints: Path) -> None:
    """Train, continuing from the newest complete checkpoint when an earlier attempt left one."""
    last = last_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
    if last:
        Console(stderr=True).print(f"resuming from {last.name}")
    trainer.train(resume_from_checkpoint=str(last) if last else None)


def save_pretrained(model, tokenizer, folder: Path) -> None:
    """Weights (safetensors) and tokenizer written to a temporary folder, then renamed into place."""
    with atomic.output_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def with_lora(model: torch.nn.Module, lora: Lora | None, task_type: str | None = None) -> torch.nn.Module:
    """``model`` with LoRA adapters (peft) on ``lora.target_modules``; as it is when the recipe trains every weight."""
    if lora is None:
        return model
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def merged(model: torch.nn.Module, lora: Lora | None) -> torch.nn.Module:
    """The LoRA adapters folded into plain weights (what is saved and exported)."""
    return model.merge_and_unload() if lora is not None else model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Trained:
    """What every distill flow reports of its training run."""

    seconds: float
    steps: int
    loss_log: list[dict[str, float]]
    main_process: bool
    bf16: bool

    def report(self, device: torch.device, teacher: int, student: int) -> dict:
        """The fields report.json#distill has for every task."""
        return {
            "device": str(device),
            "mixed_precision": "bf16" if self.bf16 else "fp32",
            "train_seconds": round(self.seconds, 2),
            "steps": self.steps,
            "loss_log": self.loss_log,
            "parameters": {"teacher": teacher, "student": student},
        }


def train_timed(trainer: Trainer, checkpoints: Path) -> Trained:
    """Train (resuming from the newest complete checkpoint), timed; only the main process goes on to save."""
    started = time.perf_counter()
    train_resuming(trainer, checkpoints)
    log = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e and "step" in e]
    seconds = time.perf_counter() - started
    return Trained(seconds, trainer.state.global_step, log, trainer.is_world_process_zero(), trainer.args.bf16)
