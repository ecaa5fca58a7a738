"""The run directory: the only hand-off between stages. Each stage reads it and adds to it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic
from .errors import MinnowError
from .recipe import Recipe, load_recipe, to_yaml

RESOLVED = "recipe.resolved.yaml"


@dataclass(frozen=True)
class RunDir:
    path: Path
    recipe: Recipe

    @classmethod
    def create(cls, recipe: Recipe) -> RunDir:
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
    def scores(self) -> Path:
        return self.path / "data" / "quality.jsonl"

    def report(self) -> dict[str, Any]:
        file = self.path / "report.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def update_report(self, section: str, data: Any) -> None:
        report = self.report() | {"name": self.recipe.name, "task": self.recipe.task}
        report[section] = data
        atomic.write_json(self.path / "report.json", report)
