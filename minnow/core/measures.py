"""One definition of each figure Minnow reports, used by measure, the per-folder figures, the demo and the
benchmarks alike, so one label never means two numbers."""

from __future__ import annotations

from pathlib import Path


def size_on_disk(path: str | Path) -> int | None:
    """Bytes of a file, or of every file under a folder (what copying the artefact costs); None if absent."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tokens_per_s(tokens: int, seconds: float) -> float:
    """Generated tokens over the seconds since the prompts were submitted (prompt processing included), summed
    over all requests before dividing — not a mean of per-request rates."""
    return tokens / seconds if seconds > 0 else 0.0


def sentences_per_s(texts: int, seconds: float) -> float:
    """Texts embedded per second of wall-clock time."""
    return texts / seconds if seconds > 0 else 0.0


def milliseconds(seconds: float) -> float:
    """Time to first token and query latency are reported in ms."""
    return seconds * 1000


def megabytes(size_bytes: int | None) -> float | None:
    """Sizes are shown in MB (10^6 bytes), as model hubs show them."""
    return None if size_bytes is None else size_bytes / 1e6
