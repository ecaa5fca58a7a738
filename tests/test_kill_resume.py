"""kill -9 in every stage, then `minnow run --resume`: the run completes (training goes on from its last checkpoint),
its subprocesses died with it, and no temporary file or folder is left. A corrupt report.json is named, and a resume rebuilds it.

Slow: real stages on the tiny pair (each attempt starts a fresh `python -m minnow`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MINNOW, minnow_here, run_minnow, tiny_recipe, write_recipe

from minnow.core.report_schema import Report

POLL_S = 0.05
SETTLE_S = 60  # how long a killed run's children may take to go (they go at once; this only bounds the wait)
Trigger = Callable[[Path, str], bool]


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the run directory's path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if text in cmdline and "zombie" not in state:
                found.append(int(proc.name))
    return found


def gone(run: Path) -> bool:
    deadline = time.monotonic() + SETTLE_S
    while processes_naming(str(run)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return not processes_naming(str(run))


def child_running(module: str) -> Trigger:
    return lambda run, stderr: any(module in _cmdline(pid) for pid in processes_naming(str(run)))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


STAGES: list[tuple[str, Trigger]] = [
    ("teacher cache", lambda run, stderr: (run / "teacher_cache").is_dir()),
    ("distill", lambda run, stderr: (run / "checkpoints" / "checkpoint-20" / "trainer_state.json").is_file()),
    ("export (model builder)", child_running("onnxruntime_genai.models.builder")),
    ("export (per-folder figures)", child_running("minnow.export.figures")),
    ("measure", lambda run, stderr: "measure teacher, student" in stderr),
]


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([*MINNOW, *args], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def kill_when(proc: subprocess.Popen, log: Path, trigger: Trigger, runs: Path) -> Path:
    """SIGKILL ``proc`` (only it, not its children) once ``trigger`` holds; the run directory it works in."""
    while proc.poll() is None:
        stderr = log.read_text(errors="replace")
        run = next(runs.iterdir(), None) if runs.is_dir() else None
        if run is not None and trigger(run, stderr):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return run
        time.sleep(POLL_S)
    raise AssertionError(f"the run ended (exit {proc.returncode}) before the kill point:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # six attempts of the real stages on a shared 2-core machine
def test_kill_9_in_every_stage_then_resume(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["distill"] |= {"teacher_cache": True}
    file = write_recipe(tmp_path / "tiny.yaml", recipe)
    run: Path | None = None
    for n, (stage, trigger) in enumerate(STAGES):
        log = tmp_path / f"attempt-{n}.log"
        args = ["run", str(file)] if run is None else ["run", "--resume", str(run)]
        run = kill_when(start(args, log), log, trigger, tmp_path / "runs")
        assert gone(run), f"killed in {stage}: processes left {processes_naming(str(run))}"
        if stage == "distill":
            assert not (run / "student").exists(), "killed mid-training: no student yet"
    result = run_minnow("run", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(run)
    after_distill = (tmp_path / f"attempt-{[s for s, _ in STAGES].index('distill') + 1}.log").read_text()
    assert int(after_distill.split("resuming from checkpoint-")[1].split()[0]) >= 20, after_distill[-2000:]
    report = Report.model_validate_json((run / "report.json").read_text())
    assert report.distill.steps == 40 and report.export["fp32"].parity["token_agreement"] == 1.0


def assert_complete(run: Path) -> None:
    report = Report.model_validate_json((run / "report.json").read_text())
    assert report.distill and report.variants and report.cost and report.export
    assert set(report.export) == {"fp32", "int4"} and all(entry.figures for entry in report.export.values())
    assert (run / "teacher_cache" / "provenance.json").is_file() and (run / "report.md").is_file()
    assert all((run / "onnx" / p / "model.onnx").is_file() for p in ("fp32", "int4"))
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))
    assert not processes_naming(str(run))


@pytest.mark.slow
def test_corrupt_report_is_named_then_rebuilt_by_resume(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / tiny_run.name))
    (run / "report.json").write_text('{"distill": {"eval": ')
    (run / "onnx" / ".int4.stale.tmp").mkdir()
    result = minnow_here("report", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{run / 'report.json'}: corrupt" in result.stderr and "minnow run --resume" in result.stderr
    result = run_minnow("run", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "set aside as report.json.corrupt" in result.stderr
    report = Report.model_validate_json((run / "report.json").read_text())
    assert report.distill and report.export and report.variants and report.cost
    assert not list(run.rglob("*.tmp"))
