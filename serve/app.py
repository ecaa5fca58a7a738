"""The Gradio demo over one or more run directories.

Tabs: **Compare** (causal-LM runs: one prompt, every variant's greedy answer streamed with its time to first
token, tokens/s and size), **Search** (embedding runs: each variant's top-k over the run's corpus, with query
latency and overlap with the teacher's top-k), **Benchmark** (the runs' held-out prompts through every variant:
latency, throughput, size and quality retained, as a table and plots), **Cost** (energy, money and carbon per 1k
requests for every variant and the distillation's break-even point, from each run's report) and **Report** (each
run's report.md).

Serve settings (limits, queue, host, port) come from the first run's recipe. Variants run one after another
within a request; the page updates as each one streams. Event API names: ``/compare``, ``/search`` and
``/benchmark``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import gradio as gr
from matplotlib.figure import Figure

from minnow.core.errors import EnvironmentFault, MinnowError
from minnow.core.measures import megabytes
from minnow.core.recipe import Serve
from minnow.core.report_schema import CostSection
from minnow.core.rundir import RunDir
from minnow.export.generate import stream_text
from minnow.export.variants import SearchGroup, Variant, compare_variants, open_runs, search_groups, slugify
from minnow.report.cost import cost_figure, serving_table

from .benchmark import Row, figure, quality_retained, time_variant
from .report import report_parts
from .search import search, warm_indexes

THREADS = (1, 2, 4)
PORT_TRIES = 100  # --next-free-port: ports tried from the chosen one up
DEFAULT_THREADS = min(2, os.cpu_count() or 1)
# Per variant, the outputs an event fills: text (or hits), then two metrics.
OUTPUTS_PER_VARIANT = 3
# Every event runs models on the same CPU cores: one request at a time across all tabs, the others wait in the queue.
MODELS = "models"
LATENCY = {"causal-lm": "time to first token", "embedding": "query latency"}
THROUGHPUT = {"causal-lm": "tokens/s", "embedding": "queries/s"}

log = logging.getLogger(__name__)


def build_app(run_dirs: Sequence[Path]) -> gr.Blocks:
    """The demo for these runs, not yet launched (MinnowError for a missing or unfinished run directory)."""
    return _blocks(open_runs(run_dirs))


def launch(run_dirs: Sequence[Path], port: int | None = None, next_free: bool = False) -> None:
    """Serve the demo until interrupted, on the first run's ``serve.host``/``serve.port`` (or ``port``); with
    ``next_free``, the first free port from there on. EnvironmentFault when the port is taken."""
    runs = open_runs(run_dirs)
    settings = runs[0].recipe.serve
    port = free_port(settings.host, port or settings.port, PORT_TRIES if next_free else 1)
    warm_indexes(search_groups(runs), DEFAULT_THREADS)
    _blocks(runs).launch(server_name=settings.host, server_port=port)


def free_port(host: str, port: int, tries: int) -> int:
    """The first of ``tries`` ports from ``port`` on that ``host`` can listen on (probed as the server binds)."""
    for candidate in range(port, min(port + tries, 65536)):
        try:
            family, kind, _, _, address = socket.getaddrinfo(host, candidate, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise MinnowError(f"serve.host: cannot listen on {host!r}: {e.strerror}") from None
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise EnvironmentFault(
                        f"cannot listen on {host}:{candidate}: {e.strerror}; check serve.host"
                    ) from None
                continue
        return candidate
    taken = f"port {port}" if tries == 1 else f"ports {port}–{port + tries - 1}"
    raise EnvironmentFault(
        f"{taken} on {host} already in use (another demo?); stop it, pass --port N, or add --next-free-port"
    )


class Deadline:
    """One request's time limit (``serve.time_limit_s``): variants not reached in time are skipped, not run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.end

    def note(self, variant: Variant) -> str:
        return f"⚠ {variant.label} skipped: the request reached the demo's time limit of {self.seconds:g} s"


def _blocks(runs: list[RunDir]) -> gr.Blocks:
    settings = runs[0].recipe.serve
    compare, groups = compare_variants(runs), search_groups(runs)
    with gr.Blocks(title="Minnow", analytics_enabled=False) as demo:
        gr.Markdown("# Minnow\n" + "\n".join(f"- `{run.path}` ({run.recipe.task})" for run in runs))
        threads = gr.Radio(
            list(THREADS),
            value=DEFAULT_THREADS,
            label="CPU threads — emulate a phone-class budget with 1–2",
            info="intra-op threads for ONNX Runtime and PyTorch, in every tab",
            elem_id="threads",
        )
        with gr.Tabs():
            if compare:
                _compare_tab(compare, threads, settings)
            if groups:
                _search_tab(groups, threads, settings)
            _benchmark_tab(runs, compare, groups, threads, settings)
            _cost_tab(runs)
            _report_tab(runs)
    return demo.queue(max_size=settings.max_queue, default_concurrency_limit=1)


def _compare_tab(variants: list[Variant], threads: gr.Radio, settings: Serve) -> None:
    with gr.Tab("Compare", id="compare"):
        prompt = gr.Textbox(
            label=f"Prompt (at most {settings.max_input_chars} characters)",
            lines=3,
            max_length=settings.max_input_chars,
            elem_id="prompt",
        )
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        penalty = f", repetition penalty {settings.repetition_penalty:g}" if settings.repetition_penalty != 1 else ""
        gr.Markdown(
            f"Greedy decoding{penalty}, at most {settings.max_new_tokens} new tokens; the variants run one after "
            "another."
        )
        outputs: list[gr.components.Component] = []
        for variant in variants:
            with gr.Row():
                outputs.append(
                    gr.Textbox(
                        label=variant.label,
                        lines=3,
                        interactive=False,
                        scale=4,
                        elem_id=f"out-{variant.slug}",
                        elem_classes=["variant-output"],
                    )
                )
                outputs += _metric_fields(variant, {"ttft": "time to first token (ms)", "tps": "tokens/s"})

        def compare(text: str, n_threads: int) -> Iterator[list[str]]:
            yield from _compare(variants, _checked(text, settings.max_input_chars, "prompt"), n_threads, settings)

        gr.on(
            [button.click, prompt.submit],
            compare,
            inputs=[prompt, threads],
            outputs=outputs,
            api_name="compare",
            show_progress="minimal",
            concurrency_id=MODELS,
        )


def _search_tab(groups: list[SearchGroup], threads: gr.Radio, settings: Serve) -> None:
    with gr.Tab("Search", id="search"):
        query = gr.Textbox(
            label=f"Query (at most {settings.max_input_chars} characters)",
            max_length=settings.max_input_chars,
            elem_id="query",
        )
        button = gr.Button("Search", variant="primary", elem_id="search")
        outputs: list[gr.components.Component] = []
        for group in groups:
            k = settings.top_k
            gr.Markdown(f"Top {k} of `{group.corpus}`; overlap@{k} is the share of the teacher's top {k} found.")
            with gr.Row():
                for variant in group.variants:
                    with gr.Column(min_width=240):
                        gr.Markdown(f"**{variant.label}**")
                        with gr.Row():
                            latency, overlap = _metric_fields(
                                variant, {"qms": "query latency (ms)", "overlap": f"overlap@{settings.top_k}"}
                            )
                        hits = gr.Markdown(elem_id=f"hits-{variant.slug}", elem_classes=["variant-hits"])
                        outputs += [hits, latency, overlap]

        def run_search(text: str, n_threads: int) -> Iterator[list[str]]:
            yield from _search(groups, _checked(text, settings.max_input_chars, "query"), n_threads, settings)

        gr.on(
            [button.click, query.submit],
            run_search,
            inputs=[query, threads],
            outputs=outputs,
            api_name="search",
            show_progress="minimal",
            concurrency_id=MODELS,
        )


def _metric_fields(variant: Variant, metrics: dict[str, str]) -> list[gr.Textbox]:
    """One field per metric (elem_id prefix → label), filled by the event, then the variant's size on disk.

    Textboxes rather than gr.Number: a Number without a value shows 0 before the first request.
    """
    fields = [_field(prefix, label, variant) for prefix, label in metrics.items()]
    _field("size", "size on disk (MB)", variant, _number(megabytes(variant.size_bytes)))
    return fields


def _field(prefix: str, label: str, variant: Variant, value: str = "") -> gr.Textbox:
    return gr.Textbox(
        value,
        label=label,
        placeholder="—",
        max_lines=1,
        interactive=False,
        min_width=120,
        elem_id=f"{prefix}-{variant.slug}",
        elem_classes=[f"variant-{prefix}"],
    )


def _number(value: float | None) -> str:
    """Metrics travel as text ("12.34", or "" when there is none); gradio_client callers float() them."""
    return "" if value is None else f"{value:.2f}"


def _benchmark_tab(
    runs: list[RunDir], compare: list[Variant], groups: list[SearchGroup], threads: gr.Radio, settings: Serve
) -> None:
    tasks = [task for task in LATENCY if any(run.recipe.task == task for run in runs)]
    latency, throughput = " / ".join(LATENCY[t] for t in tasks), " / ".join(THROUGHPUT[t] for t in tasks)
    headers = ["variant", "size (MB)", f"mean {latency} (ms)", throughput, "quality retained (% of teacher)"]
    jobs = [(v, None) for v in compare] + [(v, group.corpus) for group in groups for v in group.variants]
    with gr.Tab("Benchmark", id="benchmark"):
        notes = {
            "causal-lm": f"greedy generation of at most {settings.max_new_tokens} tokens per prompt: time to first "
            "token, and tokens/s including the prompt's processing. *Quality retained*: the student's top-1 "
            "next-token agreement with the teacher on held-out responses, times, for an ONNX variant, its top-1 "
            "agreement with the PyTorch student from the export gate (both from the run's report).",
            "embedding": "the held-out texts as search queries over the run's corpus, one at a time. *Quality "
            "retained*: top-10 retrieval overlap with the teacher on held-out texts (from the run's report).",
        }
        gr.Markdown(
            f"Each variant in turn, at the chosen thread count, on up to {settings.benchmark_prompts} of its run's held-out "
            "examples after one untimed warm-up. Quality is a percentage of the teacher's (the teacher is 100).\n\n"
            + "\n".join(f"- **{task}**: {notes[task]}" for task in tasks)
        )
        button = gr.Button("Run benchmark", variant="primary", elem_id="benchmark")
        table = gr.Dataframe(
            headers=headers,
            datatype=["str", "number", "number", "number", "number"],
            interactive=False,
            elem_id="benchmark-table",
        )
        plot = gr.Plot(show_label=False, format="png", elem_id="benchmark-plot")

        def run_benchmark(n_threads: int) -> Iterator[tuple[list[list], Figure | None]]:
            rows: list[Row] = []
            deadline = Deadline(settings.time_limit_s)
            yield _rows(rows, jobs), None
            reports = {run.path: run.report() for run in runs}
            for variant, corpus in jobs:
                report = reports[variant.run.path]
                timing, label = None, deadline.note(variant)
                if not deadline.passed():
                    try:
                        timing, label = time_variant(variant, corpus, report, settings, n_threads), variant.label
                    except Exception as e:  # one broken variant must not take the others down
                        label = _failure(variant, e)
                rows.append(Row(label, megabytes(variant.size_bytes), timing, quality_retained(variant, report)))
                yield _rows(rows, jobs), figure(rows, headers[2], headers[3])

        button.click(
            run_benchmark,
            inputs=[threads],
            outputs=[table, plot],
            api_name="benchmark",
            show_progress="minimal",
            concurrency_id=MODELS,
        )


def _rows(rows: list[Row], jobs: list[tuple[Variant, Path | None]]) -> list[list]:
    """The table: the rows measured so far, then the variants still to run, with empty cells."""
    pending = [Row(variant.label, megabytes(variant.size_bytes)) for variant, _ in jobs[len(rows) :]]
    return [row.cells() for row in rows + pending]


def _cost_tab(runs: list[RunDir]) -> None:
    with gr.Tab("Cost", id="cost"):
        gr.Markdown(
            "What serving each variant costs, and what distilling the student cost once, from the figures `minnow run` "
            "measured (energy metered by codecarbon while the variants answered the held-out inputs; *measured* from "
            "power counters, otherwise *estimated* from its power model). Prices and carbon intensity come from the "
            "run's `recipe.resolved.yaml` (`cost:`): edit them there and run `minnow report RUN_DIR`."
        )
        for run in runs:
            section = run.report().cost
            if not section or not section.serving:
                gr.Markdown(
                    f"`{run.path}`: no cost figures yet; they are written when the run's variants are measured."
                )
                continue
            header, rows = serving_table(section)
            gr.Markdown(f"### {run.recipe.name}\n{_training_cost(section)}")
            gr.Dataframe(
                value=[[_significant(v) for v in row] for row in rows],
                headers=header,
                interactive=False,
                elem_id=f"cost-{slugify(run.recipe.name)}",
                elem_classes=["cost-table"],
            )
            gr.Plot(cost_figure(section), show_label=False, format="png")


def _training_cost(section: CostSection) -> str:
    total, currency = section.training_total, section.assumptions["currency"]
    if not total:
        return ""
    label = "measured" if total.measured else "estimated"
    return (
        f"Distilling this student cost {total.wh:.3g} Wh, {total.money:.3g} {currency} and {total.gco2e:.3g} "
        f"gCO2e ({label}); *break-even* is the number of requests after which serving the student instead of the "
        "teacher has paid that back."
    )


def _significant(value: object) -> object:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _report_tab(runs: list[RunDir]) -> None:
    with gr.Tab("Report", id="report"):
        for run in runs:
            for part in report_parts(run):
                if isinstance(part, Path):
                    gr.Image(part, show_label=False, interactive=False, buttons=["fullscreen"])
                else:
                    gr.Markdown(part)


def _checked(text: str | None, limit: int, what: str) -> str:
    """The user's text, refused with a message (shown in the page, raised by gradio_client) when empty or too long."""
    text = text or ""
    if not text.strip():
        raise gr.Error(f"Type a {what} first.", print_exception=False)
    if len(text) > limit:
        raise gr.Error(
            f"The {what} has {len(text)} characters; this demo accepts at most {limit}.", print_exception=False
        )
    return text


def _compare(variants: list[Variant], prompt: str, threads: int, settings: Serve) -> Iterator[list[str]]:
    values = ["", "", ""] * len(variants)
    deadline = Deadline(settings.time_limit_s)
    yield list(values)
    for i, variant in enumerate(variants):
        at = slice(i * OUTPUTS_PER_VARIANT, (i + 1) * OUTPUTS_PER_VARIANT)
        if deadline.passed():
            values[at] = [deadline.note(variant), "", ""]
            yield list(values)
            continue
        try:
            for part in stream_text(variant, prompt, settings.max_new_tokens, threads, settings.repetition_penalty):
                values[at] = [part.text, _number(part.ttft_ms), _number(part.tokens_per_s)]
                yield list(values)
                if deadline.passed():
                    break
        except Exception as e:  # one broken variant must not take the others down
            values[at] = [_failure(variant, e), "", ""]
            yield list(values)


def _search(groups: list[SearchGroup], query: str, threads: int, settings: Serve) -> Iterator[list[str]]:
    values = ["", "", ""] * sum(len(group.variants) for group in groups)
    deadline, k = Deadline(settings.time_limit_s), settings.top_k
    yield list(values)
    i = 0
    for group in groups:
        teacher_ids: set[str] | None = None
        for variant in group.variants:
            at = slice(i * OUTPUTS_PER_VARIANT, (i + 1) * OUTPUTS_PER_VARIANT)
            i += 1
            if deadline.passed():
                values[at] = [deadline.note(variant), "", ""]
                yield list(values)
                continue
            try:
                result = search(variant, group.corpus, query, k, threads)
            except Exception as e:  # one broken variant must not take the others down
                values[at] = [_failure(variant, e), "", ""]
                yield list(values)
                continue
            ids = {hit.id for hit in result.hits}
            teacher_ids = ids if variant is group.variants[0] else teacher_ids
            overlap = len(ids & teacher_ids) / len(teacher_ids) if teacher_ids else None
            hits = "\n".join(f"{n}. `{hit.score:.3f}` {_shorten(hit.text)}" for n, hit in enumerate(result.hits, 1))
            values[at] = [hits, _number(result.latency_ms), _number(overlap)]
            yield list(values)


def _failure(variant: Variant, error: Exception) -> str:
    log.error("variant %s failed", variant.label, exc_info=error)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"⚠ {variant.label} could not run: {reason}"


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
