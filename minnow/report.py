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


def _engine(d: dict) -> list[str]:
    """Loss, teacher cache and tokenizer notes of a causal-lm run."""
    lines = []
    if d.get("loss"):
        loss = d["loss"]
        on_policy = f", {loss['on_policy_fraction']:.0%} of steps on the student's own continuations" if loss.get("on_policy_fraction") else ""
        mode = f"; sequence-level KD on the teacher's responses (`{d['teacher_responses']}`)" if loss.get("mode") == "sequence" else ""
        lines.append(f"Loss: {loss['kd']} at temperature {loss['temperature']}, cross-entropy weight {loss['ce_weight']}{on_policy}{mode}.")
    cache = d.get("teacher_cache")
    if cache:
        how = f"built in {cache['built_seconds']} s" if cache.get("built_seconds") else "reused"
        lines.append(
            f"Teacher logits from `{cache['folder']}/` (top-{cache['top_k']} + tail, {how}, provenance {cache['hash'][:12]}); "
            + ("on-policy steps loaded the teacher" if (d.get("loss") or {}).get("on_policy_fraction") else "the teacher was not loaded for training")
            + ", and held-out KL is over the top-k tokens plus a tail bucket."
        )
    if d.get("tokenizer"):
        lines.append(f"Tokenizer: {d['tokenizer']['tokens']} tokens; chat template: {d['tokenizer']['chat_template']}.")
    return [line for item in lines for line in (item, "")]


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
            f"Curriculum: {d['curriculum']['order']}"
            + (f", scored by {d['curriculum']['score']} (`{d['curriculum']['scores_file']}`)." if d["curriculum"]["score"] else "."),
            "",
            *_engine(d),
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
