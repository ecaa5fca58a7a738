"""The stages of a run, each reading the run directory and adding its section to report.json."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from .core.energy import energy_meter
from .core.report_schema import Report
from .core.rundir import RunDir, jsonl_rows
from .report.cost import cost_section
from .report.markdown import write_markdown
from .report.model_card import write_model_card

console = Console(stderr=True)


@contextmanager
def removed_on_error(run: RunDir, unless: bool = False) -> Iterator[None]:
    """A new run that fails for any reason (input, machine, interruption) before its first checkpoint leaves no
    run directory behind: nothing half-written, and nothing worth resuming."""
    try:
        yield
    except BaseException:
        if not unless and not run.checkpoints.exists():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def distill(run: RunDir) -> None:
    from minnow.distill.preflight import check_run

    check_run(run.recipe)
    if run.recipe.task == "causal-lm":
        from minnow.distill.causal_lm import distill_causal_lm as flow
    else:
        from minnow.distill.embedding import distill_embedding as flow
    console.rule(f"[bold]distill[/] {run.recipe.teacher.path} → student")
    with energy_meter(run.recipe.cost).task() as energy:
        section = flow(run)
    if section:
        run.update_report("distill", section)
        record_energy(run, "distill", energy)


def record_energy(run: RunDir, stage: str, energy: dict) -> None:
    """The stage's energy in report.json (the last attempt's, when a stage was resumed)."""
    run.update_report("energy", run.report().energy | {stage: energy})


def teacher_cache(run: RunDir) -> None:
    """Run the teacher once over train and held-out data and keep its top-k logits in teacher_cache/."""
    from minnow.distill.causal_lm import cache_teacher
    from minnow.distill.preflight import check_run

    check_run(run.recipe)
    console.rule(f"[bold]teacher-cache[/] {run.recipe.teacher.path} → {run.teacher_cache.name}/")
    with energy_meter(run.recipe.cost).task() as energy:
        _, info = cache_teacher(run)
    run.update_report("teacher_cache", info)
    record_energy(run, "teacher cache", energy)


def export(run: RunDir) -> None:
    recipe = run.recipe
    report = run.report()
    prompts = recipe.export.parity_prompts or (report.distill.parity_prompts if report.distill else [])
    prompts = prompts[: recipe.export.parity_examples] if not recipe.export.parity_prompts else prompts
    console.rule(f"[bold]export[/] {', '.join(recipe.export.precisions)}")
    with energy_meter(recipe.cost).task() as energy:
        if recipe.task == "causal-lm":
            from transformers import AutoTokenizer

            from minnow.export.causal_lm import export_causal_lm
            from minnow.export.gate import heldout_sequences

            sequences = heldout_sequences(recipe, AutoTokenizer.from_pretrained(run.student), recipe.export.gate.tokens)
            section = export_causal_lm(
                run.student,
                run.onnx,
                recipe.export.precisions,
                prompts,
                recipe.export.parity_max_new_tokens,
                gate=recipe.export.gate,
                gate_sequences=sequences,
                int4_lm_head=recipe.export.int4_lm_head,
                int4_block_size=recipe.export.int4_block_size,
                targets=recipe.export.targets,
                max_length=recipe.export.max_length,
            )
        else:
            from minnow.export.embedding import export_embedding

            section = export_embedding(
                run.student, run.onnx, recipe.export.precisions, prompts, thresholds=recipe.export.embedding_parity
            )
    if recipe.task == "causal-lm" and recipe.export.measure:
        from minnow.export.figures import artefact_figures

        console.rule("[bold]measure[/] each exported folder, one process each")
        for entry in section.values():
            entry["figures"] = artefact_figures(run.path / entry["path"])
    run.update_report("export", section)
    record_energy(run, "export", energy)
    measure(run)


def measure(run: RunDir) -> None:
    """Every variant on the same held-out inputs and threads: speed, energy per request and (embedding) quality."""

    from minnow.export.measure import measure_causal, measure_embedding

    console.rule("[bold]measure[/] teacher, student and each ONNX precision")
    meter = energy_meter(run.recipe.cost)
    if run.recipe.task == "causal-lm":
        run.update_report("variants", measure_causal(run, meter))
        return
    texts = [row["text"] for row in jsonl_rows(run.heldout)]
    unseen = [row["text"] for row in jsonl_rows(run.unseen)] if run.unseen.is_file() else []
    run.update_report("variants", measure_embedding(run, texts, meter, unseen=unseen))


def report(run: RunDir) -> None:
    costs = cost_section(run.report(), run.recipe.cost)
    if costs:
        run.update_report("cost", costs | {"chart": run.relative(run.cost_chart)})
    write_markdown(run)
    write_model_card(run)
    console.print(f"report: {run.report_md}")


def _distill_gaps(run: RunDir, report: Report) -> list[str]:
    gaps = {
        "no trained student (student/)": not (run.student / "config.json").is_file(),
        "no distill section in report.json": report.distill is None,
    }
    return [text for text, absent in gaps.items() if absent]


def _export_gaps(run: RunDir, report: Report) -> list[str]:
    gaps = {
        "no export section in report.json": report.export is None,
        "no measured variants in report.json": report.variants is None,
    }
    gaps |= {f"no onnx/{p}/": not (run.onnx / p).is_dir() for p in run.recipe.export.precisions}
    if "mobile" in run.recipe.export.targets:
        gaps["no mobile/"] = not run.mobile.is_dir()
    return [text for text, absent in gaps.items() if absent]


def is_distilled(run: RunDir) -> bool:
    return not _distill_gaps(run, run.report())


def is_exported(run: RunDir) -> bool:
    return not _export_gaps(run, run.report())


def missing(run: RunDir) -> list[str]:
    """What a finished run has and this one lacks, in words (empty when the run is complete)."""
    report = run.report()
    return _distill_gaps(run, report) + _export_gaps(run, report)
