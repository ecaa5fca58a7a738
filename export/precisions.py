"""One export loop for every task, in the manner of Optimum's export configs: a small per-task object says how
to write one precision's folder and how to check it; the loop makes each folder appear whole or not at all."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from minnow.core.atomic import output_dir
from minnow.core.measures import size_on_disk


class ExportTask(Protocol):
    def write(self, precision: str, folder: Path) -> None:
        """Fill the empty ``folder`` with the runnable artefact at ``precision``."""

    def check(self, precision: str, folder: Path) -> dict[str, Any]:
        """What the report records of the written ``folder``; a MinnowError when it misses its gate."""


def export_precisions(task: ExportTask, onnx_root: Path, precisions: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``onnx_root/<precision>/`` for each precision, written and checked in a temporary folder that replaces the
    previous one only when the check passed; per precision its path (relative to the run), size and check."""
    results = {}
    for precision in dict.fromkeys(precisions):
        with output_dir(onnx_root / precision) as folder:
            task.write(precision, folder)
            checked = task.check(precision, folder)
        results[precision] = {
            "path": f"{onnx_root.name}/{precision}",
            "size_bytes": size_on_disk(onnx_root / precision),
            **checked,
        }
    return results
