"""Curriculum schedules: which examples each optimizer step trains on, as a sampler the Trainer draws from.

Every schedule is a deterministic function of the seed (and, for online selection, of the student at the
step it selects), and the realised schedule is written to the run directory (``data/schedule.jsonl``, one line
per optimizer step with the stable ids it trains on). A run killed and resumed replays what was written and
continues at the same position.

A ranking is a list of positions into the training examples, best first.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from minnow.core import atomic


def pacing(kind: str, start: float, progress: float) -> float:
    """Competence: the fraction of the ranking in play at ``progress`` ∈ [0, 1] of the pacing period.

    ``linear`` and ``root`` are the competence functions of Platanios et al. 2019 ("Competence-based Curriculum
    Learning for Neural Machine Translation"): c₀ + (1 − c₀)·t and √(c₀² + (1 − c₀²)·t). ``step`` is the fixed
    exponential pacing of Hacohen & Weinshall 2019 ("On the Power of Curriculum Learning in Training Deep
    Networks"): c₀ multiplied by a constant factor at each of four equal stages, reaching 1 at the last.
    """
    t = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return min(1.0, start + (1 - start) * t)
    if kind == "root":
        return min(1.0, math.sqrt(start**2 + (1 - start**2) * t))
    if kind == "step":
        stages = 4
        return min(1.0, start * (1 / start) ** (min(math.floor(t * stages), stages) / stages))
    raise ValueError(f"unknown pacing {kind!r}")


def in_order(ranking: Sequence[int], steps: int, per_step: int) -> list[list[int]]:
    """Best first, through the ranking and around again: the strict quality-first (or, reversed, worst-first) order."""
    flat = [ranking[i % len(ranking)] for i in range(steps * per_step)]
    return [flat[s * per_step : (s + 1) * per_step] for s in range(steps)]


def shuffled(ranking: Sequence[int], steps: int, per_step: int, seed: int) -> list[list[int]]:
    """Uniform: a fresh seeded permutation each pass over the data."""
    rng, flat = random.Random(seed), []
    while len(flat) < steps * per_step:
        epoch = list(ranking)
        rng.shuffle(epoch)
        flat += epoch
    return [flat[s * per_step : (s + 1) * per_step] for s in range(steps)]


def paced(
    ranking: Sequence[int], steps: int, per_step: int, kind: str, start: float, full_at: float, seed: int
) -> list[list[int]]:
    """Competence-based curriculum: step t draws uniformly, without replacement within the step, from the best
    ``pacing(kind, start, t / (full_at·steps))`` fraction of the ranking (Platanios et al. 2019)."""
    rng = random.Random(seed)
    period = max(1.0, full_at * steps)
    schedule = []
    for s in range(steps):
        size = max(per_step, math.ceil(pacing(kind, start, s / period) * len(ranking)))
        pool = ranking[: min(size, len(ranking))]
        schedule.append(
            rng.sample(list(pool), per_step) if len(pool) >= per_step else rng.choices(list(pool), k=per_step)
        )
    return schedule


def soft(
    ranking: Sequence[int], steps: int, per_step: int, tau_start: float, tau_end: float, seed: int
) -> list[list[int]]:
    """Soft sampling: p(x) ∝ exp(−r(x)/τ), r = rank / (n − 1) ∈ [0, 1] (0 = best), τ annealed geometrically from
    ``tau_start`` to ``tau_end`` (a Boltzmann curriculum in the manner of prioritized sampling, Schaul et al. 2016;
    with a large τ it is uniform)."""
    n = len(ranking)
    rng = np.random.default_rng(seed)
    r = np.arange(n) / max(n - 1, 1)
    schedule = []
    for s in range(steps):
        tau = tau_start * (tau_end / tau_start) ** (s / max(steps - 1, 1))
        logits = -r / tau
        p = np.exp(logits - logits.max())
        picks = rng.choice(n, size=per_step, replace=n < per_step, p=p / p.sum())
        schedule.append([ranking[i] for i in picks])
    return schedule


class ScheduleLog:
    """``data/schedule.jsonl``: one line per optimizer step, ``{"step", "ids"}``; what a resumed run replays."""

    def __init__(self, path: Path, ids: Sequence[str]) -> None:
        self.path = path
        self.ids = ids
        self.position = {id_: i for i, id_ in enumerate(ids)}

    def write(self, schedule: list[list[int]]) -> None:
        atomic.write_text(
            self.path,
            "".join(json.dumps({"step": s, "ids": [self.ids[i] for i in b]}) + "\n" for s, b in enumerate(schedule)),
        )

    def read(self) -> list[list[int]]:
        """Steps written so far; a last line cut short by a kill is ignored."""
        if not self.path.is_file():
            return []
        steps = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if row["step"] != len(steps) or any(i not in self.position for i in row["ids"]):
                break
            steps.append([self.position[i] for i in row["ids"]])
        return steps

    def append(self, first_step: int, block: list[list[int]]) -> None:
        """Add steps as they are chosen (flushed to disk before they are trained on)."""
        mode = "a" if first_step else "w"
        with self.path.open(mode, encoding="utf-8") as f:
            for s, batch in enumerate(block, start=first_step):
                f.write(json.dumps({"step": s, "ids": [self.ids[i] for i in batch]}) + "\n")
            f.flush()
            os.fsync(f.fileno())


class FixedSchedule(Sampler[int]):
    """Yields a precomputed schedule, step after step."""

    def __init__(self, schedule: list[list[int]]) -> None:
        self.schedule = schedule

    def __len__(self) -> int:
        return sum(map(len, self.schedule))

    def __iter__(self) -> Iterator[int]:
        for batch in self.schedule:
            yield from batch


class OnlineSelection(Sampler[int]):
    """Online batch selection: every ``refresh`` steps, score a super-batch of candidates with the current student
    and train the next steps on the top ``ratio`` of them by learnability.

    RHO-LOSS (Mindermann et al. 2022) and JEST (Evans et al. 2024) select per step; scoring a super-batch of
    ``refresh`` steps at once trades freshness for fewer, larger scoring passes. Candidates come from a seeded
    stream of permutations of the examples, so the selection depends only on the seed and the student. Each
    block is written to the log before it is trained on; a resumed run replays the logged steps.
    """

    def __init__(
        self,
        pool: Sequence[int],
        steps: int,
        per_step: int,
        ratio: float,
        refresh: int,
        seed: int,
        score: Callable[[list[int]], Sequence[float]],
        log: ScheduleLog,
    ) -> None:
        self.pool, self.steps, self.per_step = list(pool), steps, per_step
        self.ratio, self.refresh, self.seed = ratio, refresh, seed
        self.score = score
        self.log = log
        self.scored = 0
        self.seconds = 0.0

    def __len__(self) -> int:
        return self.steps * self.per_step

    def _candidates(self) -> Iterator[int]:
        epoch = 0
        while True:
            order = list(self.pool)
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            yield from order
            epoch += 1

    def __iter__(self) -> Iterator[int]:
        logged = self.log.read()
        stream = self._candidates()
        for first in range(0, self.steps, self.refresh):
            n_steps = min(self.refresh, self.steps - first)
            need = n_steps * self.per_step
            candidates = [next(stream) for _ in range(min(math.ceil(need / self.ratio), max(len(self.pool), need)))]
            if first + n_steps <= len(logged):
                block = logged[first : first + n_steps]
            else:
                started = time.perf_counter()
                scores = list(self.score(candidates))
                self.seconds += time.perf_counter() - started
                self.scored += len(candidates)
                best = sorted(range(len(candidates)), key=lambda i: -scores[i])[:need]
                kept = [candidates[i] for i in sorted(best)]
                block = [kept[s * self.per_step : (s + 1) * self.per_step] for s in range(n_steps)]
                self.log.append(first, block)
            for batch in block:
                yield from batch


class ScheduledTrainerMixin:
    """Put before a ``transformers.Trainer`` subclass: the Trainer draws its training examples from ``sampler``."""

    def __init__(self, *args, sampler: Sampler[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.curriculum_sampler = sampler

    def _get_train_sampler(self, train_dataset=None) -> Sampler[int]:
        return self.curriculum_sampler
