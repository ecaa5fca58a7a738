"""High-quality-first ordering: teacher scores kept by stable example id in the run directory."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from minnow import atomic


def cached_scores(path: Path, ids: list[str], score: Callable[[list[int]], list[float]]) -> dict[str, float]:
    """Scores for ``ids``: read from ``path`` where present, the rest computed by ``score(positions)`` and saved."""
    known: dict[str, float] = {}
    if path.is_file():
        known = {r["id"]: r["score"] for r in map(json.loads, path.read_text().splitlines())}
    missing = [i for i, id_ in enumerate(ids) if id_ not in known]
    if missing:
        known |= dict(zip((ids[i] for i in missing), score(missing)))
        atomic.write_text(path, "".join(json.dumps({"id": k, "score": v}) + "\n" for k, v in known.items()))
    return {id_: known[id_] for id_ in ids}


def training_order(ids: list[str], scores: dict[str, float] | None, order: str, seed: int) -> list[int]:
    """Positions in training order: ascending score (best first, ties by id) or a seeded shuffle."""
    positions = list(range(len(ids)))
    if order == "quality-first" and scores is not None:
        return sorted(positions, key=lambda i: (scores[ids[i]], ids[i]))
    random.Random(seed).shuffle(positions)
    return positions
