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
            "## Quality kept",
            "",
        ]
        lines += _causal_quality(d) if report.get("task") == "causal-lm" else _embedding_quality(d)
    e = report.get("export")
    if e:
        lines += ["## Export", ""]
        rows = [[prec, v["path"], _mb(v["size_bytes"]), _parity(v["parity"])] for prec, v in e.items()]
        lines += _table(["precision", "folder", "size", "parity with PyTorch"], rows)
        lines += _gate(e)
        lines += _mobile(e.get("mobile"))
        lines += _figures(e)
    if report.get("variants"):
        lines += _variants(report["variants"])
    return "\n".join(lines)


def _gate(e: dict) -> list[str]:
    gated = {prec: v["gate"] for prec, v in e.items() if isinstance(v, dict) and "gate" in v}
    if not gated:
        return []
    tokens = next(iter(gated.values()))["tokens"]
    lines = [
        "### Quality gate (onnxruntime-genai vs PyTorch)",
        "",
        f"Every next-token position of the held-out examples ({tokens} tokens), fed whole to each model. Passed.",
        "",
    ]
    keys = ["top1_agreement", "kl", "perplexity_pytorch", "perplexity_onnx", "perplexity_increase", "max_abs_logit_diff"]
    rows = [[prec, *(g[k] for k in keys), _thresholds(g["thresholds"])] for prec, g in gated.items()]
    header = ["precision", "top-1 agreement", "KL(PyTorch‖ONNX)", "perplexity PyTorch", "perplexity ONNX", "perplexity change", "max abs logit diff", "thresholds"]
    return lines + _table(header, rows)


def _figures(e: dict) -> list[str]:
    measured = {name: v["figures"] for name, v in e.items() if isinstance(v, dict) and "figures" in v}
    if not measured:
        return []
    first = next(iter(measured.values()))
    lines = [
        "### Speed and memory (onnxruntime-genai, CPU)",
        "",
        f"One process per folder and thread count; prompts of {first['prompt_64_tokens']} and {first['prompt_512_tokens']} "
        "tokens (512 is cut to the context when it is shorter); decode over 31 tokens after the shorter prompt.",
        "",
    ]
    keys = ["load_s", "ttft_64_ms", "ttft_512_ms", "decode_tokens_per_s_1_thread", "decode_tokens_per_s_2_threads", "peak_rss_mb"]
    rows = [[name, _mb(f["size_bytes"]), *(f[k] for k in keys)] for name, f in measured.items()]
    header = ["artefact", "size", "load s", "TTFT 64 ms", "TTFT 512 ms", "decode tok/s 1 thread", "decode tok/s 2 threads", "peak RSS MB"]
    return lines + _table(header, rows)


def _mobile(m: dict | None) -> list[str]:
    if not m:
        return []
    u = m["usability"]
    eps = ", ".join(f"{ep}: {'yes' if ok else 'no'}" for ep, ok in u["accelerators_recommended"].items())
    return [
        "### Phone artefact",
        "",
        f"`{m['path']}/`: the int4 model as `{m['model']}` (ORT format) with `{m['operators_config']}` for a reduced "
        f"onnxruntime build; max_length {m['max_length']}. Mobile-usability checker: {u['verdict']} "
        f"(accelerator worth trying as is — {eps or 'none checked'}). Not run on a phone here.",
        "",
    ]


def _thresholds(t: dict) -> str:
    return ", ".join(f"{name} {'≥' if 'min' in limit else '≤'} {_fmt(next(iter(limit.values())))}" for name, limit in t.items())


def _parity(p: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if not isinstance(v, (list, dict)))


def write_markdown(run: RunDir) -> None:
    atomic.write_text(run.path / "report.md", markdown(run.report()))
