"""The `minnow` command: validate a recipe, run it end to end, or run one stage on a run directory.

Exit codes: 0 done, 1 a bug in Minnow, 2 your input (recipe, data, models, run directory), 3 the machine (disk full,
read-only or forbidden path, port in use, out of memory), 130 interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from . import boundary
from .boundary import guard
from .core.errors import MinnowError
from .core.recipe import Recipe
from .core.rundir import RunDir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
err = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
RunArg = Annotated[Path, typer.Argument(help="Run directory made by `minnow run`.", show_default=False)]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show a failure's traceback on screen too.")] = False,
) -> None:
    boundary.State.debug, boundary.State.log = debug, None


def _logged(run: RunDir) -> RunDir:
    """The run directory, now receiving the tracebacks of this command (its minnow.log)."""
    boundary.log_to(run.log)
    return run


def _load(recipe: Path) -> Recipe:
    """The recipe, validated, with any `.gguf` model converted (once, cached) to the folder every stage reads."""
    from minnow.distill.gguf import with_gguf_folders

    from .core.recipe import load_recipe

    return with_gguf_folders(load_recipe(recipe), recipe)


@app.command()
@guard
def validate(recipe: RecipeArg) -> None:
    """Check a recipe, its data, and its models when they are local; print it with every default filled in."""
    from minnow.distill.data import check_data
    from minnow.distill.preflight import preflight

    from .core.recipe import to_yaml

    loaded = _load(recipe)
    summary = check_data(loaded)
    findings = preflight(loaded)
    typer.echo(to_yaml(loaded), nl=False)
    err.print(f"[green]ok:[/] {escape(str(recipe))} ({escape(summary)})", highlight=False, soft_wrap=True)
    for finding in findings:
        level = "[yellow]warning:[/] " if finding.warning else "  "
        err.print(f"{level}{escape(finding.text)}", highlight=False, soft_wrap=True)


@app.command()
@guard
def init(
    data_file: Annotated[Path, typer.Argument(help="Data file: .jsonl .json .csv .parquet .txt.", show_default=False)],
    output: Annotated[Path, typer.Option(help="Recipe file to write.")] = Path("recipe.yaml"),
    task: Annotated[str, typer.Option(help="causal-lm (generate text) or embedding (embed text).")] = "causal-lm",
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: hub id, local folder, .gguf file or package: reference.")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="Student: hub id, local folder, .gguf file or package: reference.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Look at a data file and write a commented starter recipe for it."""
    from .init import init_recipe

    notes = init_recipe(data_file, output, task, teacher, student, force)
    for note in notes:
        err.print(f"  {escape(note)}", highlight=False, soft_wrap=True)
    err.print(f"[green]wrote[/] {escape(str(output))}; next: minnow validate {escape(str(output))}", highlight=False)


@app.command()
@guard
def schema(
    output: Annotated[Path | None, typer.Option(help="Write the schema here instead of printing it.")] = None,
) -> None:
    """The recipe's JSON schema, for completion and checks in editors (YAML language server)."""
    import json

    from .core import atomic

    text = json.dumps(Recipe.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic.write_text(output, text)
        err.print(f"[green]wrote[/] {output}", highlight=False)


@app.command()
@guard
def run(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML file.", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory where it stopped.")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Start the demo when the run is done.")] = False,
) -> None:
    """validate → distill → export → report (→ demo with --serve)."""
    from . import pipeline

    if (recipe is None) == (resume is None):
        raise MinnowError("give a RECIPE to start a run, or --resume RUN_DIR to continue one")
    run_dir = _logged(RunDir.open(resume).healed() if resume else RunDir.create(_load(recipe)))
    err.print(f"run directory: {run_dir.path}", soft_wrap=True, highlight=False)
    if not pipeline.is_distilled(run_dir):
        with pipeline.removed_on_error(run_dir, unless=resume is not None):
            pipeline.distill(run_dir)
    if not pipeline.is_exported(run_dir):
        pipeline.export(run_dir)
    pipeline.report(run_dir)
    if serve:
        _serve([run_dir.path])
    else:
        err.print(f"demo: minnow serve {os.path.relpath(run_dir.path)}")


@app.command("distill")
@guard
def distill_cmd(recipe: RecipeArg) -> None:
    """Only the distill stage: make a run directory with the trained student."""
    from . import pipeline

    run_dir = _logged(RunDir.create(_load(recipe)))
    with pipeline.removed_on_error(run_dir):
        pipeline.distill(run_dir)
    typer.echo(str(run_dir.path))


@app.command("teacher-cache")
@guard
def teacher_cache_cmd(recipe: RecipeArg) -> None:
    """Only the teacher-cache stage: a run directory whose teacher_cache/ holds the teacher's top-k logits."""
    from . import pipeline

    loaded = _load(recipe)
    if loaded.task != "causal-lm" or not loaded.distill.teacher_cache:
        raise MinnowError(
            f"{recipe}: distill.teacher_cache: true is needed (causal-lm recipes) to cache teacher logits"
        )
    run_dir = _logged(RunDir.create(loaded))
    with pipeline.removed_on_error(run_dir):
        pipeline.teacher_cache(run_dir)
    err.print(f"next: minnow run --resume {os.path.relpath(run_dir.path)}")
    typer.echo(str(run_dir.path))


@app.command("export")
@guard
def export_cmd(run_dir: RunArg) -> None:
    """Only the export stage: ONNX folders for every precision of the recipe, with parity gates."""
    from . import pipeline

    run = _logged(RunDir.open(run_dir))
    if not (run.student / "config.json").is_file():
        raise MinnowError(f"{run_dir}: no trained student in student/; run `minnow run` first")
    pipeline.export(run)
    pipeline.report(run)


@app.command("report")
@guard
def report_cmd(run_dir: RunArg) -> None:
    """Rewrite report.md from report.json."""
    from . import pipeline

    run = _logged(RunDir.open(run_dir))
    missing = pipeline.missing(run)
    if missing:
        raise MinnowError(
            f"{run_dir}: unfinished run, nothing to report: {'; '.join(missing)}; finish it with "
            f"`minnow run --resume {run_dir}`"
        )
    pipeline.report(run)


@app.command()
@guard
def serve(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories to compare.", show_default=False)],
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: serve.port of the first run).")] = None,
    next_free_port: Annotated[
        bool, typer.Option("--next-free-port", help="If the port is in use, take the next free one above it.")
    ] = False,
) -> None:
    """Start the Gradio demo over one or more runs."""
    _serve(run_dirs, port, next_free_port)


def _serve(run_dirs: list[Path], port: int | None = None, next_free: bool = False) -> None:
    from minnow.serve.app import launch

    launch(run_dirs, port, next_free)
