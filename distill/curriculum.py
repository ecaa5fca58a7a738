"""The recipe's ``curriculum:`` applied to a run: score the training examples, drop, rank, schedule, report.

Both task flows call :func:`plan_curriculum` with the scorers their models offer (causal-lm: a teacher pass
giving NLL, entropy and confidence, and a student pass for learnability; embedding: the teacher's incoherence,
a free by-product of the pass computing the targets), then draw training examples from :meth:`Plan.sampler`
and put :meth:`Plan.report` in ``report.json#distill.curriculum``.

Files in the run directory: ``data/quality.jsonl`` (every score column by stable id, plus ``score``, the
ranking key, lower = better), ``data/scorers.json`` (each scorer's kind and measured seconds),
``data/schedule.jsonl`` (the ids of every optimizer step), ``curriculum.png`` (score distribution, what was
dropped, and the score of each step's examples).
"""

from __future__ import annotations

import io
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Sampler

from minnow.core import atomic
from minnow.core.errors import MinnowError
from minnow.core.recipe import Curriculum, Data
from minnow.core.rundir import RunDir

from .data import BadRow, Example, _example, read_rows, stable_id
from .schedules import FixedSchedule, OnlineSelection, ScheduleLog, in_order, paced, shuffled, soft
from .scorers import ScoreCache, heuristic_score, learnability, model_statistics, near_duplicates
from .teacher_cache import TeacherCache

# score → how a row of score columns ranks (lower = better) and the columns it reads
RANK_KEYS: dict[str, tuple[Callable[[dict], float], tuple[str, ...]]] = {
    "teacher-nll": (lambda r: r["teacher_nll"], ("teacher_nll",)),
    "teacher-entropy": (lambda r: r["teacher_entropy"], ("teacher_entropy",)),
    "teacher-confidence": (lambda r: -r["teacher_confidence"], ("teacher_confidence",)),
    "learnability": (lambda r: -(r["student_nll"] - r["teacher_nll"]), ("student_nll", "teacher_nll")),
    "heuristic": (lambda r: r["heuristic"], ("heuristic",)),
    "incoherence": (lambda r: r["incoherence"], ("incoherence",)),
    "field": (lambda r: -r["field"], ("field",)),
}


@dataclass(frozen=True)
class Scorer:
    """Score columns a flow can compute for the training examples at given positions, and what that costs."""

    kind: str
    columns: tuple[str, ...]
    score: Callable[[list[int]], list[dict[str, float]]]


def example_text(ex: Example) -> str:
    """The text the quality rules and the near-duplicate search read: all of the example's content."""
    if "messages" in ex:
        return "\n".join(m["content"] for m in ex["messages"])
    if "text" in ex:
        return ex["text"]
    return f"{ex['prompt']}\n{ex['response']}"


def field_scores(spec: Data, name: str, ids: set[str]) -> dict[str, float]:
    """The user's quality column ``name`` for the examples ``ids``, read from the data beside their content."""
    rows, source = read_rows(spec, lambda where, problem: None)
    found: dict[str, float] = {}
    for where, row in rows:
        try:
            id_ = stable_id(_example(row, spec))
        except BadRow:
            continue
        if id_ not in ids or id_ in found:
            continue
        value = row.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isnan(number) or math.isinf(number):
            have = "has no such field" if value is None else f"holds {value!r}"
            raise MinnowError(
                f"{where}: curriculum.score_field {name!r}: each example needs a number there; this row {have}"
            )
        found[id_] = number
    return found


def score_name(cfg: Curriculum, task: str) -> str:
    if cfg.score != "auto":
        return cfg.score
    if cfg.score_field is not None:
        return "field"
    return "teacher-nll" if task == "causal-lm" else "incoherence"


@dataclass
class Plan:
    cfg: Curriculum
    run: RunDir
    ids: list[str]
    score: str
    rows: dict[str, dict]
    key: dict[str, float]
    dropped: dict[str, str]
    ranking: list[int]
    costs: dict[str, dict]
    schedule: list[list[int]] = field(default_factory=list)
    online: OnlineSelection | None = None

    def sampler(
        self, steps: int, per_step: int, seed: int, learnability: Callable[[list[int]], Sequence[float]] | None = None
    ) -> Sampler[int]:
        """Positions of the training examples, ``per_step`` for each of ``steps`` optimizer steps.

        ``learnability(positions)`` scores candidates with the current student (``online`` order only).
        """
        log = ScheduleLog(self.run.schedule, self.ids)
        order = self.cfg.order
        if order == "online":
            if learnability is None:
                raise ValueError("online selection needs a learnability scorer")
            self.online = OnlineSelection(
                self.ranking, steps, per_step, self.cfg.select_ratio, self.cfg.refresh_steps, seed, learnability, log
            )
            return self.online
        if order == "quality-first":
            self.schedule = in_order(self.ranking, steps, per_step)
        elif order == "paced":
            c = self.cfg
            self.schedule = paced(self.ranking, steps, per_step, c.pacing, c.start_fraction, c.full_at, seed)
        elif order == "soft":
            self.schedule = soft(self.ranking, steps, per_step, self.cfg.tau_start, self.cfg.tau_end, seed)
        else:
            self.schedule = shuffled(self.ranking, steps, per_step, seed)
        log.write(self.schedule)
        return FixedSchedule(self.schedule)

    def realised(self) -> list[list[int]]:
        return ScheduleLog(self.run.schedule, self.ids).read() if self.online else self.schedule

    def report(self) -> dict:
        """``report.json#distill.curriculum``; also draws ``curriculum.png``."""
        schedule = self.realised()
        trained = Counter(i for batch in schedule for i in batch)
        values = sorted(self.key[i] for i in self.ids if i in self.key)
        draw_plot(self.run.curriculum_chart, self, schedule)
        costs = dict(self.costs)
        if self.online is not None:
            costs["online learnability"] = {
                "kind": "student-forward",
                "examples": self.online.scored,
                "seconds": round(self.online.seconds, 4),
            }
        return {
            "order": self.cfg.order,
            "score": self.score,
            "scores_file": self.run.relative(self.run.scores),
            "schedule_file": self.run.relative(self.run.schedule),
            "plot": self.run.relative(self.run.curriculum_chart),
            "examples": len(self.ids),
            "kept": len(self.ranking),
            "dropped": dict(Counter(self.dropped.values())),
            "trained_distinct": len(trained),
            "score_quantiles": {
                q: values[min(len(values) - 1, int(q * len(values)))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)
            }
            if values
            else {},
            "scorers": costs,
            "first_ids": [self.ids[i] for i in (schedule[0] if schedule else [])][:5],
        }


def plan_curriculum(
    cfg: Curriculum,
    task: str,
    data: Data,
    run: RunDir,
    ids: list[str],
    texts: list[str],
    scorers: dict[str, Scorer],
) -> Plan:
    """Score the training examples (``ids``, with their ``texts``), drop what the recipe drops, rank the rest."""
    cache = ScoreCache(run.scores, run.scorer_costs)
    name = score_name(cfg, task)
    rank_key, needed = RANK_KEYS[name]
    cache.columns("heuristic rules", "cheap", ids, lambda pos: [{"heuristic": heuristic_score(texts[i])} for i in pos])
    if name == "field":
        values = field_scores(data, cfg.score_field, set(ids))
        cache.columns("score field", "free", ids, lambda pos: [{"field": values[ids[i]]} for i in pos])
    for cost_name, scorer in scorers.items():
        wanted = set(needed) & set(scorer.columns) or (cfg.order == "online" and "teacher_nll" in scorer.columns)
        if wanted:
            cache.columns(cost_name, scorer.kind, ids, scorer.score)
    missing = [c for c in needed if c not in cache.rows.get(ids[0], {})]
    if missing:
        raise MinnowError(f"curriculum.score: {name} needs {', '.join(missing)}, which this task does not compute")
    rows = {i: cache.rows[i] for i in ids}
    key = {i: rank_key(rows[i]) for i in ids}
    cache.set_column("score", key)

    dropped: dict[str, str] = {}
    if cfg.heuristic_filter:
        dropped |= {i: "quality rules" for i in ids if rows[i]["heuristic"] > 0}
    if cfg.near_dedup:
        started = time.perf_counter()
        dropped |= {
            i: "near-duplicate" for i in near_duplicates(ids, texts, cfg.near_dedup_threshold) if i not in dropped
        }
        cache.record_cost("near-duplicates (MinHash)", "cheap", time.perf_counter() - started, len(ids))
    candidates = sorted((p for p, i in enumerate(ids) if i not in dropped), key=lambda p: (key[ids[p]], ids[p]))
    if not candidates:
        raise MinnowError("curriculum: every training example was dropped (heuristic_filter / near_dedup); loosen them")
    ranking = candidates[: max(1, math.ceil(cfg.keep * len(candidates)))]
    dropped |= {ids[p]: "below keep" for p in candidates[len(ranking) :]}
    return Plan(cfg, run, ids, name, rows, key, dropped, ranking, dict(cache.costs))


def draw_plot(path: Path, plan: Plan, schedule: list[list[int]]) -> None:
    """Score histogram split into kept and each reason for dropping, and the mean score of each step's examples."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="tight")
    hist, steps = fig.subplots(1, 2)
    groups = {"kept": [plan.key[plan.ids[p]] for p in plan.ranking]}
    for id_, reason in sorted(plan.dropped.items()):
        groups.setdefault(f"dropped: {reason}", []).append(plan.key[id_])
    hist.hist(list(groups.values()), bins=30, stacked=True, label=[f"{k} ({len(v)})" for k, v in groups.items()])
    hist.set(xlabel=f"{plan.score} (ranking key, lower = better)", ylabel="examples", title="score distribution")
    hist.legend(fontsize=8)
    if schedule:
        means = [sum(plan.key[plan.ids[i]] for i in batch) / len(batch) for batch in schedule]
        steps.plot(range(1, len(means) + 1), means, lw=1)
    steps.set(
        xlabel="optimizer step", ylabel="mean ranking key of the step's examples", title=f"schedule: {plan.cfg.order}"
    )
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    atomic.write_bytes(path, png.getvalue())


def causal_scorers(
    teacher: torch.nn.Module | TeacherCache,
    student: torch.nn.Module,
    rows: list[dict],
    collate: Callable,
    batch_size: int,
    device,
) -> dict[str, Scorer]:
    """Causal-lm scores: the teacher's NLL, entropy and confidence — read from its logit cache when the run has
    one (free), else from one teacher pass — and one pass of the untrained student (NLL)."""
    cached = isinstance(teacher, TeacherCache)

    def teacher_pass(pos: list[int]) -> list[dict[str, float]]:
        if cached:
            stats = teacher.statistics([rows[i]["id"] for i in pos])
        else:
            stats = model_statistics(teacher, [rows[i] for i in pos], collate, batch_size, device, "teacher")
        return [{f"teacher_{k}": v for k, v in s.items()} for s in stats]

    def student_pass(pos: list[int]) -> list[dict[str, float]]:
        stats = model_statistics(student, [rows[i] for i in pos], collate, batch_size, device, "student")
        return [{"student_nll": s["nll"]} for s in stats]

    return {
        "teacher cache" if cached else "teacher forward": Scorer(
            "free" if cached else "teacher-forward",
            ("teacher_nll", "teacher_entropy", "teacher_confidence"),
            teacher_pass,
        ),
        "student forward": Scorer("student-forward", ("student_nll",), student_pass),
    }


def causal_learnability(
    plan: Plan, model: Callable[[], torch.nn.Module], rows: list[dict], collate: Callable, batch_size: int, device
) -> Callable[[list[int]], list[float]]:
    """Online learnability of rows at given positions: the current student's NLL minus the teacher's (cached)."""

    def score(pos: list[int]) -> list[float]:
        stats = model_statistics(model(), [rows[i] for i in pos], collate, batch_size, device)
        return learnability([s["nll"] for s in stats], [plan.rows[plan.ids[i]]["teacher_nll"] for i in pos])

    return score


def embedding_learnability(
    model: Callable[[], torch.nn.Module], tok, texts: list[str], targets, cfg
) -> Callable[[list[int]], list[float]]:
    """Online learnability for an embedding student: its distillation loss (1 − cosine to the teacher's embedding)
    on each text; the reference loss, the teacher's against itself, is 0."""

    @torch.inference_mode()
    def score(pos: list[int]) -> list[float]:
        student = model()
        was_training = student.training
        student.eval()
        device = next(student.parameters()).device
        out: list[float] = []
        for start in range(0, len(pos), cfg.eval_batch_size):
            chunk = pos[start : start + cfg.eval_batch_size]
            batch = tok(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=cfg.max_seq_len,
                return_tensors="pt",
            )
            emb = student(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            target = torch.as_tensor(targets[chunk], device=device)
            out += (1 - torch.nn.functional.cosine_similarity(emb.float(), target, dim=-1)).tolist()
        student.train(was_training)
        return out

    return score
