"""The stages of a run, each reading the run directory and adding its section to report.json."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

from .errors import MinnowError

from .report import write_markdown
from .rundir import RunDir

console = Console(stderr=True)


@contextmanager
def removed_on_error(run: RunDir, unless: bool = False) -> Iterator[None]:
    """A run that fails on the user's input before training leaves nothing half-written behind."""
    try:
        yield
    except MinnowError:
        if not unless and not run.checkpoints.exists():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def distill(run: RunDir) -> None:
    if run.recipe.task == "causal-lm":
        from distill.causal_lm import distill_causal_lm as flow
    else:
        from distill.embedding import distill_embedding as flow
    console.rule(f"[bold]distill[/] {run.recipe.teacher.path} → student")
    section = flow(run)
    if section:
        run.update_report("distill", section)


def teacher_cache(run: RunDir) -> None:
    """Run the teacher once over train and held-out data and keep its top-k logits in teacher_cache/."""
    from distill.causal_lm import cache_teacher

    console.rule(f"[bold]teacher-cache[/] {run.recipe.teacher.path} → {run.teacher_cache.name}/")
    _, info = cache_teacher(run)
    run.update_report("teacher_cache", info)


def export(run: RunDir) -> None:
    recipe = run.recipe
    report = run.report()
    prompts = recipe.export.parity_prompts or report.get("distill", {}).get("parity_prompts", [])
    prompts = prompts[: recipe.export.parity_examples] if not recipe.export.parity_prompts else prompts
    console.rule(f"[bold]export[/] {', '.join(recipe.export.precisions)}")
    if recipe.task == "causal-lm":
        from export.causal_lm import export_causal_lm

        section = export_causal_lm(
            run.student, run.onnx, recipe.export.precisions, prompts, recipe.export.parity_max_new_tokens
        )
    else:
        from export.embedding import export_embedding

        section = export_embedding(run.student, run.onnx, recipe.export.precisions, prompts)
    run.update_report("export", section)
    if recipe.task == "embedding":
        measure(run)


def measure(run: RunDir) -> None:
    """Every variant on the same held-out texts, batch and threads: quality kept and sentences/s."""
    import json

    from distill.embedding import HELDOUT_FILE
    from export.measure import measure_embedding

    console.rule("[bold]measure[/] teacher, student and each ONNX precision")
    texts = [json.loads(line)["text"] for line in (run.path / HELDOUT_FILE).read_text().splitlines()]
    run.update_report("variants", measure_embedding(run, texts))


def report(run: RunDir) -> None:
    write_markdown(run)
    console.print(f"report: {run.path / 'report.md'}")


def is_distilled(run: RunDir) -> bool:
    return (run.student / "config.json").is_file() and "distill" in run.report()


def is_exported(run: RunDir) -> bool:
    report = run.report()
    measured = run.recipe.task != "embedding" or "variants" in report
    return "export" in report and measured and all((run.onnx / p).is_dir() for p in run.recipe.export.precisions)
