"""report.md, written from report.json: what the student kept of the teacher, and what the export produced."""

from __future__ import annotations

import io
from typing import Any

from minnow.core import atomic
from minnow.core.report_schema import CostSection, Distilled, ExportedFolder, Report, Variants
from minnow.core.rundir import RunDir

from .cost import cost_figure, serving_table


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


def _causal_quality(d: Distilled) -> list[str]:
    before, after = d.eval_before, d.eval
    keys = ("loss", "perplexity", "kl_to_teacher", "top1_agreement")
    start = "student before (student_init, the undistilled cut)" if d.student_from_teacher else "student before"
    rows = [
        ["teacher", after["teacher"]["loss"], after["teacher"]["perplexity"], 0.0, 1.0],
        [start, *(before["student"][k] for k in keys)],
        ["student after", *(after["student"][k] for k in keys)],
    ]
    if d.baseline:
        rows.append(
            [
                f"SFT-only baseline ({d.baseline['path']}, same data and steps)",
                *(d.baseline["eval"]["student"][k] for k in keys),
            ]
        )
    lines = [f"Held-out: {after['tokens']} response tokens.", ""]
    return lines + _table(["model", "loss", "perplexity", "KL(teacher‖model)", "top-1 agreement with teacher"], rows)


def _engine(d: Distilled) -> list[str]:
    """Loss, teacher cache and tokenizer notes of a causal-lm run."""
    lines = []
    if d.loss:
        loss = d.loss
        on_policy = (
            f", {loss['on_policy_fraction']:.0%} of steps on the student's own continuations"
            if loss.get("on_policy_fraction")
            else ""
        )
        hidden = (
            f", intermediate-state loss at weight {loss['hidden_weight']} (each kept layer against its teacher layer)"
            if loss.get("hidden_weight")
            else ""
        )
        mode = (
            f"; sequence-level KD on the teacher's responses (`{d.teacher_responses}`)"
            if loss.get("mode") == "sequence"
            else ""
        )
        lines.append(
            f"Loss: {loss['kd']} at temperature {loss['temperature']}, cross-entropy weight {loss['ce_weight']}{on_policy}{hidden}{mode}."
        )
    cache = d.teacher_cache
    if cache:
        how = f"built in {cache['built_seconds']} s" if cache.get("built_seconds") else "reused"
        lines.append(
            f"Teacher logits from `{cache['folder']}/` (top-{cache['top_k']} + tail, {how}, provenance {cache['hash'][:12]}); "
            + (
                "the teacher was loaded for training (on-policy steps or the intermediate-state loss)"
                if (d.loss or {}).get("on_policy_fraction") or (d.loss or {}).get("hidden_weight")
                else "the teacher was not loaded for training"
            )
            + ", and held-out KL is over the top-k tokens plus a tail bucket."
        )
    if d.tokenizer:
        lines.append(f"Tokenizer: {d.tokenizer['tokens']} tokens; chat template: {d.tokenizer['chat_template']}.")
        if cross := d.tokenizer.get("cross_tokenizer"):
            share = cross["alignment"]
            lines.append(
                f"Across tokenizers ({cross['method']}): {cross['why']}. Student tokens aligned exactly "
                f"{share['exact']:.1%}, by merged spans {share['merged']:.1%}, unaligned {share['unaligned']:.1%}. "
                "Held-out KL and top-1 agreement are over exactly aligned tokens (KL over same-text tokens); the "
                "teacher's loss is per its own token (`loss_per_char` in report.json compares the two)."
            )
    return [line for item in lines for line in (item, "")]


def _embedding_quality(d: Distilled) -> list[str]:
    keys = ["mean_cosine", "spearman_pairwise", "top10_overlap"]
    rows = [
        [name, *(stage["student"].get(k) for k in keys)]
        for name, stage in (("student before", d.eval_before), ("student after", d.eval))
    ]
    lines = [f"Held-out: {d.eval['texts']} texts. 1.0 = identical to the teacher.", ""]
    return lines + _table(
        ["model", "mean cosine to teacher", "Spearman of pairwise similarities", "top-10 retrieval overlap"], rows
    )


def variants_section(v: Variants, task: str) -> list[str]:
    lines = ["## Variants side by side", ""]
    if task == "causal-lm":
        penalty = f" with repetition penalty {v.repetition_penalty:g}" if v.repetition_penalty not in (None, 1) else ""
        lines += [
            f"Greedy generation{penalty} of at most {v.max_new_tokens} tokens for each of {v.prompts} held-out "
            f"prompts, {v.threads} threads, every variant in one process. Repeated 3-grams: the share of an answer's "
            "word 3-grams that repeat an earlier one (a looping answer scores high).",
            "",
        ]
        keys = ["tokens_per_s", "speedup_vs_teacher", "ttft_ms", "rouge_l_vs_teacher", "seq_rep_3"]
        rows = [[name, _mb(r.size_bytes), *(getattr(r, k) for k in keys)] for name, r in v.variants.items()]
        header = [
            "variant",
            "size",
            "tokens/s",
            "× teacher",
            "time to first token (ms)",
            "ROUGE-L vs teacher",
            "repeated 3-grams",
        ]
        return lines + _table(header, rows)
    lines += [
        f"Quality against the teacher on {v.texts} held-out texts; sentences/s on the first {v.timed_texts} of them, "
        f"batch {v.batch_size}, {v.threads} threads, every variant in one process.",
        "",
    ]
    keys = ["sentences_per_s", "speedup_vs_teacher", "mean_cosine", "spearman_pairwise", "top10_overlap"]
    header = ["variant", "size", "sentences/s", "× teacher", "mean cosine", "Spearman", "top-10 overlap"]
    rows = [[name, _mb(r.size_bytes), *(getattr(r, k) for k in keys)] for name, r in v.variants.items()]
    if v.unseen_texts:
        lines[-2] += f" Unseen: the same agreement on {v.unseen_texts} texts of a domain never trained on."
        header += ["unseen Spearman", "unseen top-10 overlap"]
        rows = [
            row + [r.unseen["spearman_pairwise"], r.unseen["top10_overlap"]]
            for row, r in zip(rows, v.variants.values())
        ]
    return lines + _table(header, rows)


def _cost(c: CostSection) -> list[str]:
    a, currency = c.assumptions, c.assumptions["currency"]
    basis = (
        f"{a['price_per_hour']} {currency}/h"
        if a["price_per_hour"] is not None
        else f"{a['price_per_kwh']} {currency}/kWh"
    )
    lines = [
        "## Cost",
        "",
        f"Money at {basis}, carbon at {a['carbon_g_per_kwh']} gCO2e/kWh (recipe `cost:`). A request is one held-out "
        "input answered as in *Variants side by side*.",
        "",
    ]
    if c.serving:
        lines += _table(*serving_table(c))
        lines += [f"![cost per 1k requests]({c.chart})", ""] if c.chart else []
    if c.training_total:
        rows = [[stage, t.seconds, t.wh, t.money, t.gco2e, t.source] for stage, t in c.training.items()]
        t = c.training_total
        rows.append(["total", t.seconds, t.wh, t.money, t.gco2e, "measured" if t.measured else "estimated"])
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


def markdown(report: Report) -> str:
    lines = [f"# Minnow run `{report.name}` ({report.task})", ""]
    d = report.distill
    if d:
        p = d.parameters
        lines += [
            "## Distillation",
            "",
            f"{d.steps} steps in {d.train_seconds} s on {d.device} ({d.mixed_precision} matmuls); "
            f"teacher {p['teacher'] / 1e6:.2f} M parameters, student {p['student'] / 1e6:.2f} M "
            f"({p['student'] / p['teacher']:.1%}). Examples: {d.examples}.",
            "",
            *_curriculum(d.curriculum),
            *_engine(d),
            "## Quality kept",
            "",
        ]
        lines += _causal_quality(d) if report.task == "causal-lm" else _embedding_quality(d)
    e = report.export
    if e:
        lines += ["## Export", ""]
        rows = [[prec, v.path, _mb(v.size_bytes), _parity(v.parity)] for prec, v in e.items()]
        lines += _table(["precision", "folder", "size", "parity with PyTorch"], rows)
        lines += _gate(e)
        lines += _mobile(e.get("mobile"))
        lines += _figures(e)
    if report.variants:
        lines += variants_section(report.variants, report.task)
    if report.cost:
        lines += _cost(report.cost)
    return "\n".join(lines)


def _gate(e: dict[str, ExportedFolder]) -> list[str]:
    gated = {prec: v.gate for prec, v in e.items() if v.gate}
    if not gated:
        return []
    tokens = next(iter(gated.values()))["tokens"]
    lines = [
        "### Quality gate (onnxruntime-genai vs PyTorch)",
        "",
        f"Every next-token position of the held-out examples ({tokens} tokens), fed whole to each model. Passed.",
        "",
    ]
    keys = [
        "top1_agreement",
        "kl",
        "perplexity_pytorch",
        "perplexity_onnx",
        "perplexity_increase",
        "max_abs_logit_diff",
    ]
    rows = [[prec, *(g[k] for k in keys), _thresholds(g["thresholds"])] for prec, g in gated.items()]
    header = [
        "precision",
        "top-1 agreement",
        "KL(PyTorch‖ONNX)",
        "perplexity PyTorch",
        "perplexity ONNX",
        "perplexity change",
        "max abs logit diff",
        "thresholds",
    ]
    return lines + _table(header, rows)


def _figures(e: dict[str, ExportedFolder]) -> list[str]:
    measured = {name: v.figures for name, v in e.items() if v.figures}
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
    keys = [
        "load_s",
        "ttft_64_ms",
        "ttft_512_ms",
        "decode_tokens_per_s_1_thread",
        "decode_tokens_per_s_2_threads",
        "peak_rss_mb",
    ]
    rows = [[name, _mb(f["size_bytes"]), *(f[k] for k in keys)] for name, f in measured.items()]
    header = [
        "artefact",
        "size",
        "load s",
        "TTFT 64 ms",
        "TTFT 512 ms",
        "decode tok/s 1 thread",
        "decode tok/s 2 threads",
        "peak RSS MB",
    ]
    return lines + _table(header, rows)


def _mobile(m: ExportedFolder | None) -> list[str]:
    if not m:
        return []
    u = m.usability
    eps = ", ".join(f"{ep}: {'yes' if ok else 'no'}" for ep, ok in u["accelerators_recommended"].items())
    return [
        "### Phone artefact",
        "",
        f"`{m.path}/`: the int4 model as `{m.model}` (ORT format) with `{m.operators_config}` for a reduced "
        f"onnxruntime build; max_length {m.max_length}. Mobile-usability checker: {u['verdict']} "
        f"(accelerator worth trying as is — {eps or 'none checked'}). Not run on a phone here.",
        "",
    ]


def _thresholds(t: dict) -> str:
    return ", ".join(
        f"{name} {'≥' if 'min' in limit else '≤'} {_fmt(next(iter(limit.values())))}" for name, limit in t.items()
    )


def _parity(p: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if not isinstance(v, (list, dict)))


def write_markdown(run: RunDir) -> None:
    """report.md, and the images it shows."""
    report = run.report()
    if report.cost and report.cost.serving:
        png = io.BytesIO()
        cost_figure(report.cost).savefig(png, format="png", dpi=100)
        atomic.write_bytes(run.cost_chart, png.getvalue())
    atomic.write_text(run.report_md, markdown(report))
