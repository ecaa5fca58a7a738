"""Checks `minnow validate` makes beyond types and data: do the teacher and student share a vocabulary, and
does the training plan likely fit in this machine's memory.

Both need the models on disk; hub ids are not downloaded by validate, so for them each check says it was
skipped. The memory figure is a rough estimate of weights, gradients, optimizer state and KD logits;
activations come on top.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe

from .model_files import check_models, safetensors_header, weight_files

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_STATE_PER_WEIGHT = 4  # the weight, its gradient and AdamW's two moments, each in the weight's dtype
LOGIT_COPIES = 4  # teacher and student logits plus their temperature-softened distributions
FITS = 0.8  # share of RAM the estimate may take before the plan "likely does not fit"
GB = 1024**3
SCHEDULE_BYTES_PER_SLOT = 64  # one example index per slot while the schedule is built, and its id in schedule.jsonl
BATCH_BYTES_PER_TOKEN = 24  # input ids, attention mask and labels, int64 each


class Finding(NamedTuple):
    text: str
    warning: bool = False


def check_run(recipe: Recipe, ram: int | None = None) -> None:
    """What would stop a run before it finished: damaged local model folders, a plan this machine cannot hold."""
    check_models(recipe)
    check_plan(recipe, ram or machine_ram())


def check_plan(recipe: Recipe, ram: int) -> None:
    """Sizes that cannot fit in this machine's RAM whatever the models: the schedule, and one batch's token tensors."""
    cfg = recipe.distill
    slots = cfg.steps * cfg.batch_size * cfg.grad_accum
    sizes = {
        f"distill.steps × batch_size × grad_accum = {slots:,} example slots: the schedule alone": slots
        * SCHEDULE_BYTES_PER_SLOT,
        f"distill.batch_size × max_seq_len = {cfg.batch_size * cfg.max_seq_len:,} tokens per batch: its input tensors alone": cfg.batch_size
        * cfg.max_seq_len
        * BATCH_BYTES_PER_TOKEN,
        f"distill.eval_batch_size × max_seq_len = {cfg.eval_batch_size * cfg.max_seq_len:,} tokens per batch: its input tensors alone": cfg.eval_batch_size
        * cfg.max_seq_len
        * BATCH_BYTES_PER_TOKEN,
    }
    for what, size in sizes.items():
        if size > FITS * ram:
            raise MinnowError(
                f"{what} would take about {_gb(size)}, more than this machine's {_gb(ram)} RAM can hold; lower them"
            )


def preflight(recipe: Recipe, ram: int | None = None) -> list[Finding]:
    """Checks :func:`check_run`, then tokenizer and memory findings for a causal-lm recipe (embedding: none);
    ``ram`` (default: this machine's) is what the memory estimate is compared with."""
    check_run(recipe)
    if recipe.task != "causal-lm":
        return []
    local = [p for p in (recipe.teacher.path, student_path(recipe)) if Path(p).is_dir()]
    if len(local) < 2:
        skipped = "skipped for hub models (validate downloads nothing); compared when the run starts"
        return [Finding(f"tokenizers and memory: {skipped}")]
    return [*_tokenizers(recipe), _memory(recipe, ram or machine_ram())]


def _tokenizers(recipe: Recipe) -> list[Finding]:
    from transformers import AutoTokenizer

    from .tokenizers import chat_template_difference, cross_method

    student = AutoTokenizer.from_pretrained(student_path(recipe))
    teacher = (
        student if student_path(recipe) == recipe.teacher.path else AutoTokenizer.from_pretrained(recipe.teacher.path)
    )
    method, why = cross_method(recipe, student, teacher)
    if method != "same":
        name = {"uld": "ULD (Boizard et al. 2024)", "hybrid": "hybrid (GOLD: KL on same-text tokens, ULD on the rest)"}
        return [Finding(f"tokenizers: cross-tokenizer distillation with {name[method]}: {why}")]
    findings = [Finding(f"tokenizers: teacher and student share one vocabulary ({len(student)} tokens)")]
    tables = [
        json.loads((Path(p) / "config.json").read_text()).get("vocab_size")
        for p in (recipe.teacher.path, student_path(recipe))
    ]
    if None not in tables and tables[0] != tables[1]:
        findings.append(
            Finding(
                f"vocabulary padding: teacher logits {tables[0]}, student logits {tables[1]}; "
                f"KD compares the first {min(tables)} (the rest is embedding-table padding)"
            )
        )
    template = chat_template_difference(teacher, student)
    if template:
        findings.append(Finding(template, warning=recipe.data.chat_template))
    return findings


def _memory(recipe: Recipe, ram: int) -> Finding:
    parts = training_memory(recipe)
    total = sum(parts.values())
    detail = ", ".join(f"{name} {_gb(size)}" for name, size in parts.items())
    text = f"memory: about {_gb(total)} to train ({detail}; activations extra); this machine has {_gb(ram)} RAM"
    if total > FITS * ram:
        return Finding(f"{text} — the plan likely does not fit (on a GPU, compare with its memory instead)", True)
    return Finding(text)


def training_memory(recipe: Recipe) -> dict[str, int]:
    """Rough bytes held while training a causal-lm recipe whose teacher and student are local folders."""
    teacher = tensor_shapes(Path(recipe.teacher.path))
    student = tensor_shapes(Path(student_path(recipe)))
    student_bytes = DTYPE_BYTES[recipe.student.dtype]
    n_student = sum(map(math.prod, student.values()))
    if recipe.lora is None:
        training = n_student * student_bytes * ADAM_STATE_PER_WEIGHT
    else:
        adapters = recipe.lora.r * sum(sum(shape) for name, shape in student.items() if _adapted(name, shape, recipe))
        training = n_student * student_bytes + adapters * 4 * ADAM_STATE_PER_WEIGHT
    config = json.loads((Path(student_path(recipe)) / "config.json").read_text())
    cfg = recipe.distill
    logits = cfg.batch_size * cfg.max_seq_len * config.get("vocab_size", 0) * 4 * LOGIT_COPIES
    return {
        "teacher weights": sum(map(math.prod, teacher.values())) * DTYPE_BYTES[recipe.teacher.dtype],
        "student training state": training,
        "logits": logits,
    }


def student_path(recipe: Recipe) -> str:
    """The student's folder, or the teacher's for a student cut from it (its sizes are an upper bound then)."""
    return recipe.student.path or recipe.teacher.path


def _adapted(name: str, shape: list[int], recipe: Recipe) -> bool:
    """Whether LoRA puts an adapter on this weight: a 2-D linear weight named by target_modules."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    module = name.removesuffix(".weight").rsplit(".", 1)[-1]
    if recipe.lora.target_modules == "all-linear":
        return "embed" not in name and module != "lm_head"
    return module in recipe.lora.target_modules


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape from the headers of the folder's safetensors files (nothing is loaded)."""
    shapes: dict[str, list[int]] = {}
    for file in weight_files(folder, "model"):
        header = safetensors_header(file)
        shapes.update({name: info["shape"] for name, info in header.items() if name != "__metadata__"})
    return shapes


def machine_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(size: int) -> str:
    return f"{size / GB:.1f} GB"
