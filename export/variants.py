"""The variants a demo compares: each run's teacher, its PyTorch student and every exported ONNX precision.

Models are loaded lazily, once per process, through :func:`cached`; several runs sharing a teacher share one copy.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from minnow.core.errors import MinnowError
from minnow.core.measures import size_on_disk
from minnow.core.recipe import Student, Teacher
from minnow.core.rundir import RunDir

T = TypeVar("T")

_cache: dict[tuple, object] = {}
_cache_lock = threading.RLock()  # a load may itself use the cache


def cached(key: tuple, load: Callable[[], T]) -> T:
    """``load()`` once per key for the life of the process (a failed load is retried next time)."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load()
        return _cache[key]  # type: ignore[return-value]


@dataclass(frozen=True)
class Variant:
    """One model the demo runs: a PyTorch model (``spec`` set) or an exported ONNX folder (``precision`` set).

    ``path`` is the model folder (or a teacher's hub id); ``run`` the run directory it is shown for (the first
    of its runs for a shared teacher), where its search index is saved.
    """

    label: str
    slug: str
    path: str
    run: RunDir
    spec: Teacher | Student | None = None
    precision: str | None = None

    @property
    def is_teacher(self) -> bool:
        return isinstance(self.spec, Teacher)

    @property
    def size_bytes(self) -> int | None:
        """Size on disk of the model folder; None for a model that lives in the hub cache."""
        return size_on_disk(self.path)

    @property
    def key(self) -> str:
        """What identifies the model's weights, for caches shared between runs."""
        return self.spec.model_dump_json() if self.spec else str(Path(self.path).resolve())


@dataclass(frozen=True)
class SearchGroup:
    """Embedding variants searching one corpus; overlap is measured against ``variants[0]``, the teacher."""

    corpus: Path
    variants: list[Variant]


def open_runs(run_dirs: Sequence[Path]) -> list[RunDir]:
    """The run directories, each checked to hold a trained student (MinnowError otherwise)."""
    if not run_dirs:
        raise MinnowError("give at least one run directory to serve")
    runs = list({run.path: run for run in map(RunDir.open, run_dirs)}.values())
    for run in runs:
        if not (run.student / "config.json").is_file():
            raise MinnowError(f"{run.path}: no trained student in student/; finish the run with `minnow run --resume`")
        run.report()  # a corrupt report.json is named now, not halfway through building the page
    return runs


def run_names(runs: Sequence[RunDir]) -> dict[Path, str]:
    """Recipe names, or directory names where two runs share a recipe name."""
    names = [run.recipe.name for run in runs]
    return {run.path: run.recipe.name if names.count(run.recipe.name) == 1 else run.path.name for run in runs}


def slugify(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _student_spec(run: RunDir) -> Student:
    # float32 like the export's parity reference, so the fp32 ONNX variant's greedy text matches this one's.
    return Student(path=str(run.student), trust_remote_code=run.recipe.student.trust_remote_code)


def _onnx_precisions(run: RunDir) -> list[str]:
    return (
        sorted(d.name for d in run.onnx.iterdir() if d.is_dir() and not d.name.startswith("."))
        if run.onnx.is_dir()
        else []
    )


def _run_variants(run: RunDir, name: str) -> list[Variant]:
    label = f"{name} · student"
    student = Variant(label, slugify(label), str(run.student), run, spec=_student_spec(run))
    onnx = [
        Variant(f"{label} · onnx {p}", slugify(f"{label} onnx {p}"), str(run.onnx / p), run, precision=p)
        for p in _onnx_precisions(run)
    ]
    return [student, *onnx]


def _teacher(runs: Sequence[RunDir], names: dict[Path, str]) -> Variant:
    label = f"{', '.join(names[r.path] for r in runs)} · teacher"
    return Variant(label, slugify(label), runs[0].recipe.teacher.path, runs[0], spec=runs[0].recipe.teacher)


def _by_teacher(runs: Sequence[RunDir]) -> dict[str, list[RunDir]]:
    groups: dict[str, list[RunDir]] = {}
    for run in runs:
        groups.setdefault(run.recipe.teacher.model_dump_json(), []).append(run)
    return groups


def compare_variants(runs: Sequence[RunDir]) -> list[Variant]:
    """Causal-LM runs' variants: each distinct teacher once, before the students of the runs that use it."""
    runs = [run for run in runs if run.recipe.task == "causal-lm"]
    names = run_names(runs)
    variants: list[Variant] = []
    for group in _by_teacher(runs).values():
        variants.append(_teacher(group, names))
        for run in group:
            variants += _run_variants(run, names[run.path])
    return variants


def corpus_digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "missing"


def search_groups(runs: Sequence[RunDir]) -> list[SearchGroup]:
    """Embedding runs grouped by (teacher, corpus content): each group's teacher is indexed and shown once."""
    runs = [run for run in runs if run.recipe.task == "embedding"]
    names = run_names(runs)
    grouped: dict[tuple[str, str], list[RunDir]] = {}
    for run in runs:
        key = (run.recipe.teacher.model_dump_json(), corpus_digest(run.corpus))
        grouped.setdefault(key, []).append(run)
    return [
        SearchGroup(
            corpus=group[0].corpus,
            variants=[_teacher(group, names), *(v for run in group for v in _run_variants(run, names[run.path]))],
        )
        for group in grouped.values()
    ]
