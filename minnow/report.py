"""report.md, written from report.json: what the student kept of the teacher, and what the export produced."""

from __future__ import annotations

from typing import Any

from . import atomic
from .rundir import RunDir


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
        "",
    ]


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def _causal_quality(d: dict) -> list[str]:
    before, after = d["eval_before"], d["eval"]
    rows = [
        ["teacher", after["teacher"]["loss"], after["teacher"]["perplexity"], 0.0, 1.0],
        ["student before", *(before["student"][k] for k in ("loss", "perplexity", "kl_to_teacher", "top1_agreement"))],
        ["student after", *(after["student"][k] for k in ("loss", "perplexity", "kl_to_teacher", "top1_agreement"))],
    ]
    lines = [f"Held-out: {after['tokens']} response tokens.", ""]
    return lines + _table(["model", "loss", "perplexity", "KL(teacher‖model)", "top-1 agreement with teacher"], rows)


def _embedding_quality(d: dict) -> list[str]:
    keys = ["mean_cosine", "spearman_pairwise", "top10_overlap"]
    rows = [[name, *(d[stage]["student"].get(k) for k in keys)] for name, stage in (("student before", "eval_before"), ("student after", "eval"))]
    lines = [f"Held-out: {d['eval']['texts']} texts. 1.0 = identical to the teacher.", ""]
    return lines + _table(["model", "mean cosine to teacher", "Spearman of pairwise similarities", "top-10 retrieval overlap"], rows)


def _variants(v: dict) -> list[str]:
    lines = [
        "## Variants side by side",
        "",
        f"Quality against the teacher on {v['texts']} held-out texts; sentences/s on the first {v['timed_texts']} of them, "
        f"batch {v['batch_size']}, {v['threads']} threads, every variant in one process.",
        "",
    ]
    keys = ["sentences_per_s", "speedup_vs_teacher", "mean_cosine", "spearman_pairwise", "top10_overlap"]
    rows = [[name, _mb(r["size_bytes"]), *(r.get(k) for k in keys)] for name, r in v["variants"].items()]
    return lines + _table(["variant", "size", "sentences/s", "× teacher", "mean cosine", "Spearman", "top-10 overlap"], rows)


def _curriculum(c: dict) -> list[str]:
    if "scorers" not in c:  # a run made before scorers were reported
        return [f"Curriculum: {c.get('order')}.", ""]
    dropped = ", ".join(f"{n} {reason}" for reason, n in c["dropped"].items()) or "none"
    lines = [
        f"Curriculum: {c['order']}, ranked by {c['score']} (`{c['scores_file']}`); {c['kept']} of {c['examples']} "
        f"examples kept (dropped: {dropped}); {c['trained_distinct']} distinct examples trained on, step by step in "
        f"`{c['schedule_file']}`.",
        "",
    ]
    rows = [[name, cost["kind"], cost.get("examples"), cost["seconds"]] for name, cost in c["scorers"].items()]
    lines += _table(["scorer", "kind", "examples", "seconds"], rows)
    return lines + [f"![score distribution, what was dropped, and the schedule]({c['plot']})", ""]


def markdown(report: dict) -> str:
    lines = [f"# Minnow run `{report.get('name')}` ({report.get('task')})", ""]
    d = report.get("distill")
    if d:
        p = d["parameters"]
        lines += [
            "## Distillation",
            "",
            f"{d['steps']} steps in {d['train_seconds']} s on {d['device']}; "
            f"teacher {p['teacher'] / 1e6:.2f} M parameters, student {p['student'] / 1e6:.2f} M "
            f"({p['student'] / p['teacher']:.1%}). Examples: {d['examples']}.",
            "",
            *_curriculum(d["curriculum"]),
            "## Quality kept",
            "",
        ]
        lines += _causal_quality(d) if report.get("task") == "causal-lm" else _embedding_quality(d)
    e = report.get("export")
    if e:
        lines += ["## Export", ""]
        rows = [[prec, v["path"], _mb(v["size_bytes"]), _parity(v["parity"])] for prec, v in e.items()]
        lines += _table(["precision", "folder", "size", "parity with PyTorch"], rows)
    if report.get("variants"):
        lines += _variants(report["variants"])
    return "\n".join(lines)


def _parity(p: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if not isinstance(v, (list, dict)))


def write_markdown(run: RunDir) -> None:
    atomic.write_text(run.path / "report.md", markdown(run.report()))
