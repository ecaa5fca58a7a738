"""The run directory: the only hand-off between stages. Each stage reads it and adds to it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import atomic
from .errors import MinnowError
from .recipe import Recipe, load_recipe, to_yaml

RESOLVED = "recipe.resolved.yaml"


def _from_rank_zero(make: Callable[[], Path]) -> Path:
    """``make()`` on rank 0, its result broadcast to every process (starts the process group if needed)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    box = [str(make()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


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
        atomic.write_text(path / RESOLVED, to_yaml(recipe))
        return cls(path.resolve(), recipe)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not (path / RESOLVED).is_file():
            raise MinnowError(f"{path}: not a run directory (no {RESOLVED}); make one with `minnow run RECIPE`")
        return cls(path.resolve(), load_recipe(path / RESOLVED))

    @property
    def student(self) -> Path:
        return self.path / "student"

    @property
    def onnx(self) -> Path:
        return self.path / "onnx"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def teacher_cache(self) -> Path:
        return self.path / "teacher_cache"

    @property
    def scores(self) -> Path:
        return self.path / "data" / "quality.jsonl"

    def report(self) -> dict[str, Any]:
        file = self.path / "report.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def update_report(self, section: str, data: Any) -> None:
        report = self.report() | {"name": self.recipe.name, "task": self.recipe.task}
        report[section] = data
        atomic.write_json(self.path / "report.json", report)
