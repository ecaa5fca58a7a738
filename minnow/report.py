"""report.md, written from report.json: what the student kept of the teacher, and what the export produced."""

from __future__ import annotations

import io
from typing import Any

from . import atomic
from .cost import cost_figure, serving_table
from .rundir import RunDir

COST_CHART = "cost.png"


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


def _variants(v: dict, task: str) -> list[str]:
    lines = ["## Variants side by side", ""]
    if task == "causal-lm":
        lines += [
            f"Greedy generation of at most {v['max_new_tokens']} tokens for each of {v['prompts']} held-out prompts, "
            f"{v['threads']} threads, every variant in one process.",
            "",
        ]
        keys = ["tokens_per_s", "speedup_vs_teacher", "ttft_ms"]
        rows = [[name, _mb(r["size_bytes"]), *(r.get(k) for k in keys)] for name, r in v["variants"].items()]
        return lines + _table(["variant", "size", "tokens/s", "× teacher", "time to first token (ms)"], rows)
    lines += [
        f"Quality against the teacher on {v['texts']} held-out texts; sentences/s on the first {v['timed_texts']} of them, "
        f"batch {v['batch_size']}, {v['threads']} threads, every variant in one process.",
        "",
    ]
    keys = ["sentences_per_s", "speedup_vs_teacher", "mean_cosine", "spearman_pairwise", "top10_overlap"]
    rows = [[name, _mb(r["size_bytes"]), *(r.get(k) for k in keys)] for name, r in v["variants"].items()]
    return lines + _table(["variant", "size", "sentences/s", "× teacher", "mean cosine", "Spearman", "top-10 overlap"], rows)


def _cost(c: dict) -> list[str]:
    a, currency = c["assumptions"], c["assumptions"]["currency"]
    basis = f"{a['price_per_hour']} {currency}/h" if a["price_per_hour"] is not None else f"{a['price_per_kwh']} {currency}/kWh"
    lines = [
        "## Cost",
        "",
        f"Money at {basis}, carbon at {a['carbon_g_per_kwh']} gCO2e/kWh (recipe `cost:`). A request is one held-out "
        "input answered as in *Variants side by side*.",
        "",
    ]
    if c["serving"]:
        lines += _table(*serving_table(c))
        lines += [f"![cost per 1k requests]({COST_CHART})", ""]
    if c["training_total"]:
        rows = [[stage, t["seconds"], t["wh"], t["money"], t["gco2e"], t["source"]] for stage, t in c["training"].items()]
        t = c["training_total"]
        rows.append(["total", t["seconds"], t["wh"], t["money"], t["gco2e"], "measured" if t["measured"] else "estimated"])
        lines += ["Distilling the student, once:", ""]
        lines += _table(["stage", "seconds", "Wh", currency, "gCO2e", "energy"], rows)
    lines += [
        "*Break-even*: requests the student must serve instead of the teacher before the distillation's cost is paid "
        "back (— where the student is not cheaper per request).",
        "",
    ]
    return lines


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
        lines += _variants(report["variants"], report.get("task"))
    if report.get("cost"):
        lines += _cost(report["cost"])
    return "\n".join(lines)


def _parity(p: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if not isinstance(v, (list, dict)))


def write_markdown(run: RunDir) -> None:
    """report.md, and the images it shows."""
    report = run.report()
    if report.get("cost", {}).get("serving"):
        png = io.BytesIO()
        cost_figure(report["cost"]).savefig(png, format="png", dpi=100)
        atomic.write_bytes(run.path / COST_CHART, png.getvalue())
    atomic.write_text(run.path / "report.md", markdown(report))
