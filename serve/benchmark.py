"""The Benchmark tab's figures: a fixed prompt (or query) set through one variant, and the quality it kept.

Timing reuses the demo's own code paths (:func:`serve.generate.stream_text`, :func:`serve.search.search`), so
the benchmark measures exactly what the Compare and Search tabs do. Quality comes from the run's report.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import nan, prod
from pathlib import Path
from statistics import mean

from matplotlib.figure import Figure

from minnow.core.recipe import Serve
from minnow.core.report_schema import Report, variant_key
from minnow.core.rundir import RunDir, jsonl_rows
from minnow.export.generate import final_answers, stream_text, throughput
from minnow.export.measure import heldout_prompts
from minnow.export.variants import Variant

from .search import search


@dataclass(frozen=True)
class Timing:
    """Means over the prompt set: latency (time to first token, or query latency) and throughput."""

    latency_ms: float
    throughput: float


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table; ``timing`` is None until measured, or when the variant failed."""

    variant: str
    size_mb: float | None
    timing: Timing | None = None
    quality_pct: float | None = None

    def cells(self) -> list[str | float | None]:
        """The table row: numbers rounded to 2 decimals, None where there is no figure."""
        latency, throughput = (self.timing.latency_ms, self.timing.throughput) if self.timing else (None, None)
        numbers = (self.size_mb, latency, throughput, self.quality_pct)
        return [self.variant, *(None if n is None else round(n, 2) for n in numbers)]


def embedding_queries(run: RunDir, limit: int) -> list[str]:
    """The run's held-out texts, used as search queries, at most ``limit``."""
    return [row["text"] for row in jsonl_rows(run.heldout)[:limit]]


def time_generation(variant: Variant, prompts: list[str], serve: Serve, threads: int) -> Timing:
    """Mean time to first token and mean tokens/s of greedy generation as the demo runs it (``serve``'s limit and
    repetition penalty), after one untimed warm-up token."""
    deque(stream_text(variant, prompts[0], 1, threads), maxlen=0)
    finals = final_answers(variant, prompts, serve.max_new_tokens, threads, serve.repetition_penalty)
    rate, ttft_ms = throughput(finals)
    return Timing(ttft_ms, rate)


def time_search(variant: Variant, corpus: Path, queries: list[str], k: int, threads: int) -> Timing:
    """Mean query latency and queries/s, one query at a time, after one untimed warm-up query (which also
    loads the model and its corpus index)."""
    search(variant, corpus, queries[0], k, threads)
    latency_ms = mean(search(variant, corpus, query, k, threads).latency_ms for query in queries)
    return Timing(latency_ms, 1000 / latency_ms)


def time_variant(variant: Variant, corpus: Path | None, report: Report, serve: Serve, threads: int) -> Timing:
    """Time a causal-LM variant (``corpus`` None) on its run's held-out prompts, or an embedding variant searching
    ``corpus`` with its run's held-out texts."""
    if corpus is None:
        return time_generation(variant, heldout_prompts(report, serve.benchmark_prompts), serve, threads)
    return time_search(variant, corpus, embedding_queries(variant.run, serve.benchmark_prompts), serve.top_k, threads)


def quality_retained(variant: Variant, report: Report) -> float | None:
    """How much of the teacher's quality the variant kept, in % (the teacher is 100), from the run's report.

    causal-lm: the PyTorch student's held-out top-1 next-token agreement with the teacher; an ONNX variant's
    is that times its export gate's top-1 agreement with the PyTorch student over the same kind of held-out
    positions (greedy token agreement where the report has no gate figures: one early miss would count every
    later token of a generation as lost). embedding: the variant's top-10
    retrieval overlap with the teacher. None where the report does not have the figure (yet).
    """
    if variant.is_teacher:
        return 100.0
    if report.task == "embedding":
        row = report.variants.variants.get(variant_key("student", variant.precision)) if report.variants else None
        return _percent(row.top10_overlap if row else None)
    agreement = report.distill.eval["student"].get("top1_agreement") if report.distill else None
    if variant.precision is None:
        return _percent(agreement)
    folder = (report.export or {}).get(variant.precision)
    if folder is None:
        return None
    return _percent(agreement, (folder.gate or {}).get("top1_agreement", folder.parity.get("token_agreement")))


def _percent(*fractions: float | None) -> float | None:
    """100 × the product of the fractions; None when any is missing."""
    if any(f is None for f in fractions):
        return None
    return 100 * prod(fractions)


def figure(rows: list[Row], latency_label: str, throughput_label: str) -> Figure:
    """Latency against size (scatter), throughput and quality retained (bars), one colour per measured row."""
    done = [row for row in rows if row.timing is not None]
    names, colors = [row.variant for row in done], [f"C{i}" for i in range(len(done))]
    fig = Figure(figsize=(13, 1.6 + 0.4 * len(done)), layout="constrained")
    size_ax, speed_ax, quality_ax = fig.subplots(1, 3)
    for row, color in zip(done, colors):
        if row.size_mb is not None:
            point = (row.size_mb, row.timing.latency_ms)
            size_ax.scatter(*point, color=color)
            size_ax.annotate(row.variant, point, xytext=(4, 4), textcoords="offset points", fontsize=8)
    size_ax.margins(0.15)
    size_ax.set(xlabel="size on disk (MB)", ylabel=latency_label, title="latency vs size")
    speed_ax.barh(names, [row.timing.throughput for row in done], color=colors)
    speed_ax.set(xlabel=throughput_label, title="throughput")
    quality_ax.barh(names, [nan if row.quality_pct is None else row.quality_pct for row in done], color=colors)
    quality_ax.set(xlabel="% of teacher", xlim=(0, 100), title="quality retained")
    quality_ax.tick_params(labelleft=False)
    for ax in (speed_ax, quality_ax):
        ax.invert_yaxis()
    return fig
