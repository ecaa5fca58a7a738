"""The run directory: the only hand-off between stages. Each stage reads it and adds to it."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from . import atomic
from .errors import MinnowError
from .recipe import Recipe, load_recipe, to_yaml
from .report_schema import Report

RESOLVED = "recipe.resolved.yaml"


class CorruptReport(MinnowError):
    """report.json does not parse; resuming the run sets it aside and rebuilds it."""

    def __init__(self, file: Path, problem: str) -> None:
        self.reason = f"{file}: corrupt ({problem.removesuffix(' (a corrupt or foreign report.json)')})"
        super().__init__(f"{self.reason}; `minnow run --resume {file.parent}` rebuilds it from the run's artefacts")


def _from_rank_zero(make: Callable[[], Path]) -> Path:
    """``make()`` on rank 0, its result broadcast to every process (starts the process group if needed)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    box = [str(make()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def jsonl_rows(file: Path) -> list[dict]:
    """The rows of a JSON-lines file the distill stage wrote into a run (held-out, unseen, search corpus)."""
    if not file.is_file():
        raise MinnowError(f"{file} is missing: it is written by the distill stage")
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class RunDir:
    path: Path
    recipe: Recipe

    @classmethod
    def create(cls, recipe: Recipe) -> RunDir:
        """A new run directory; under torchrun/accelerate with several processes, rank 0 makes it, the rest open it."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return cls.open(_from_rank_zero(lambda: cls._create(recipe).path))
        return cls._create(recipe)

    @classmethod
    def _create(cls, recipe: Recipe) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(recipe.runs_dir) / f"{recipe.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(recipe.runs_dir) / f"{recipe.name}-{stamp}-{suffix}"
        path.mkdir(parents=True)
        try:
            atomic.write_text(path / RESOLVED, to_yaml(recipe))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path.resolve(), recipe)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not (path / RESOLVED).is_file():
            raise MinnowError(f"{path}: not a run directory (no {RESOLVED}); make one with `minnow run RECIPE`")
        return cls(path.resolve(), load_recipe(path / RESOLVED))

    def healed(self) -> RunDir:
        """This run made ready to resume: temporary files and folders a killed stage left are removed, and a
        corrupt report.json is set aside (as report.json.corrupt) so that the stages rebuild their sections."""
        if int(os.environ.get("RANK", "0")) == 0:
            for tmp in sorted(self.path.rglob(f"*{atomic.TMP_SUFFIX}"), key=lambda p: -len(p.parts)):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink(missing_ok=True)
            try:
                self.report()
            except CorruptReport as e:
                os.replace(self.report_json, self.corrupt_report)
                note = f"{e.reason}; set aside as {self.corrupt_report.name}, the stages rebuild it"
                Console(stderr=True).print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
        return self

    # Every path a run directory holds is named here; stages ask for it instead of spelling it.
    @property
    def resolved_recipe(self) -> Path:
        return self.path / RESOLVED

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def scores(self) -> Path:
        """Every curriculum score per example id."""
        return self.data / "quality.jsonl"

    @property
    def scorer_costs(self) -> Path:
        return self.data / "scorers.json"

    @property
    def schedule(self) -> Path:
        """The realised schedule, one line per optimizer step."""
        return self.data / "schedule.jsonl"

    @property
    def heldout(self) -> Path:
        """Held-out texts (embedding runs)."""
        return self.data / "heldout.jsonl"

    @property
    def unseen(self) -> Path:
        """Held-back texts from a domain never trained on (embedding runs with `data.unseen`)."""
        return self.data / "unseen.jsonl"

    @property
    def corpus(self) -> Path:
        """The demo's search corpus (embedding runs)."""
        return self.data / "corpus.jsonl"

    @property
    def teacher_embeddings(self) -> Path:
        return self.data / "teacher_embeddings.safetensors"

    @property
    def teacher_responses(self) -> Path:
        return self.data / "teacher_responses.jsonl"

    @property
    def self_written_prompts(self) -> Path:
        return self.data / "self_written_prompts.json"

    @property
    def teacher_cache(self) -> Path:
        return self.path / "teacher_cache"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def student_init(self) -> Path:
        """The undistilled student cut from the teacher (``student.from_teacher``, causal-lm)."""
        return self.path / "student_init"

    @property
    def student(self) -> Path:
        return self.path / "student"

    @property
    def checkpoints_sft(self) -> Path:
        """Checkpoints of the SFT-only baseline student (``distill.baseline: sft``)."""
        return self.path / "checkpoints_sft"

    @property
    def student_sft(self) -> Path:
        """The SFT-only baseline student: same data, steps and starting point as student/, cross-entropy only."""
        return self.path / "student_sft"

    @property
    def onnx(self) -> Path:
        return self.path / "onnx"

    @property
    def mobile(self) -> Path:
        return self.path / "mobile"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def corrupt_report(self) -> Path:
        return self.path / "report.json.corrupt"

    @property
    def log(self) -> Path:
        """Tracebacks of failed commands on this run (the screen shows one message; --debug shows them too)."""
        return self.path / "minnow.log"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def curriculum_chart(self) -> Path:
        return self.path / "curriculum.png"

    @property
    def cost_chart(self) -> Path:
        return self.path / "cost.png"

    @property
    def serve_cache(self) -> Path:
        """The demo's search-index embeddings."""
        return self.path / "serve_cache"

    def relative(self, path: Path) -> str:
        """``path`` as report.json and report.md name it: relative to the run directory."""
        return path.relative_to(self.path).as_posix()

    def report(self) -> Report:
        """report.json (empty before the first stage wrote it); CorruptReport, with the way forward, when it does
        not parse."""
        file = self.report_json
        if not file.is_file():
            return Report()
        try:
            return Report.parse(file.read_bytes().decode("utf-8"), str(file))
        except UnicodeDecodeError:
            raise CorruptReport(file, "not UTF-8 text") from None
        except MinnowError as e:
            raise CorruptReport(file, str(e).removeprefix(f"{file}: ").removeprefix(": ")) from None

    def update_report(self, section: str, data: Any) -> None:
        """Set one section of report.json (validated by its model) and write the file atomically."""
        report = self.report()
        report.name, report.task = self.recipe.name, self.recipe.task
        setattr(report, section, data)
        atomic.write_json(self.report_json, report.dump())
