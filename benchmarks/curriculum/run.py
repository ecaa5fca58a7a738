"""Does a high-quality-first curriculum help when the data is noisy? Arms side by side, on one machine.

A tiny teacher (Qwen2, 4 layers) is trained on clean text: paragraphs of the Python standard library's
docstrings. A smaller student is distilled from it (the KD + CE loss of ``distill.losses``) on a pool of the same
size at every noise level, in which 0/10/30/50% of the examples are corrupted in four ways, equally: random-token
documents, token-shuffled documents, near-duplicates (a few documents copied many times with one token changed),
and corrupted targets (the second half replaced by another document's). Arms:

- uniform: seeded shuffle of the whole pool
- static filter: near-duplicates dropped (MinHash), then only the best ``KEEP`` by teacher NLL, shuffled
- paced: near-duplicates dropped, competence-based pacing over the teacher-NLL ranking (root, c0 0.2, full at 50%)
- paced + filter: the same over the static filter's pool
- reversed: the paced schedule over the ranking turned upside down (worst first): the control
- online: near-duplicates dropped, every 10 steps a super-batch of 2× scored by learnability (student NLL −
  teacher NLL, current student), the top half trained on
- oracle: uniform over exactly the clean examples

Metrics: clean held-out NLL of the student every ``EVAL_EVERY`` steps, smoothed by an EMA; steps until the EMA
reaches the uniform arm's final value (same noise, same seed); final clean loss; fraction of the trained examples
that were corrupted; scoring cost in seconds and in uniform-step equivalents. Bootstrap 95% intervals over seeds.

The teacher's logits over the pool are computed once per noise level and shared by every arm (a logit cache), so
a training step costs a student forward and backward; the teacher-NLL scores come from that same pass.

    nice -n 10 .venv/bin/python benchmarks/curriculum/run.py            # full: 4 noise levels × 3 seeds
    nice -n 10 .venv/bin/python benchmarks/curriculum/run.py --quick    # one seed, fewer steps
    # or one process per noise level, then merge:
    nice -n 10 .venv/bin/python benchmarks/curriculum/run.py --noise 0.3 &  ...  ; run.py --summarise
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_models import _config, train_tokenizer  # noqa: E402

from minnow.distill.data import python_docstrings  # noqa: E402
from minnow.distill.losses import IGNORE_INDEX, kd_loss_sum, shift_for_next_token, token_cross_entropy  # noqa: E402
from minnow.distill.schedules import OnlineSelection, ScheduleLog, paced, shuffled  # noqa: E402
from minnow.distill.scorers import heuristic_score, learnability, near_duplicates, token_statistics  # noqa: E402

OUT = Path(__file__).parent / "results"
SEQ = 48
POOL = 1200
HELDOUT = 128
BATCH = 16
KEEP = 0.7
EVAL_EVERY = 10
EMA = 0.3
NOISE = [0.0, 0.1, 0.3, 0.5]
KINDS = ["random tokens", "shuffled tokens", "near-duplicate", "corrupted target"]
ARMS = ["uniform", "static filter", "paced", "paced + filter", "reversed", "online", "oracle"]


def encode(tok, texts: list[str]) -> list[list[int]]:
    return [ids[:SEQ] for ids in tok(texts, add_special_tokens=False)["input_ids"] if len(ids) >= 12]


def batch_tensors(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(docs), SEQ, dtype=torch.long)
    mask = torch.zeros(len(docs), SEQ, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d)
        mask[i, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return ids, mask, labels


def corrupt(clean: list[list[int]], n: int, vocab: int, rng: random.Random) -> tuple[list[list[int]], list[str]]:
    """``n`` corrupted documents made from clean ones, the four kinds in equal shares."""
    docs, kinds = [], []
    per_kind = [n // 4 + (k < n % 4) for k in range(4)]
    for d in rng.sample(clean, per_kind[0]):
        docs.append([rng.randrange(3, vocab) for _ in d])
    for d in rng.sample(clean, per_kind[1]):
        docs.append(rng.sample(d, len(d)))
    sources = rng.sample(clean, max(1, per_kind[2] // 12))
    for i in range(per_kind[2]):
        d = list(sources[i % len(sources)])
        d[rng.randrange(len(d))] = rng.randrange(3, vocab)
        docs.append(d)
    for d in rng.sample(clean, per_kind[3]):
        other = rng.choice(clean)
        half = len(d) // 2
        docs.append(d[:half] + other[len(other) // 2 :][: SEQ - half])
    for k, count in enumerate(per_kind):
        kinds += [KINDS[k]] * count
    return docs, kinds


@torch.inference_mode()
def teacher_pass(teacher, docs: list[list[int]]) -> tuple[torch.Tensor, list[float]]:
    """Teacher logits for every document (fp16, the shared logit cache) and each document's mean NLL."""
    logits, nll = [], []
    for i in range(0, len(docs), 64):
        ids, mask, labels = batch_tensors(docs[i : i + 64])
        out = teacher(input_ids=ids, attention_mask=mask).logits
        logits.append(out.half())
        nll += token_statistics(out, labels)["nll"].tolist()
    return torch.cat(logits), nll


@torch.inference_mode()
def student_nll(student, docs: list[list[int]]) -> list[float]:
    student.eval()
    out = []
    for i in range(0, len(docs), 64):
        ids, mask, labels = batch_tensors(docs[i : i + 64])
        logits, targets = shift_for_next_token(student(input_ids=ids, attention_mask=mask).logits, labels)
        ce = token_cross_entropy(logits, targets)
        out += (ce.sum(-1) / targets.ne(IGNORE_INDEX).sum(-1).clamp(min=1)).tolist()
    student.train()
    return out


@torch.inference_mode()
def heldout_loss(student, held: list[list[int]]) -> float:
    student.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(held), 128):
        ids, mask, labels = batch_tensors(held[i : i + 128])
        logits, targets = shift_for_next_token(student(input_ids=ids, attention_mask=mask).logits, labels)
        total += token_cross_entropy(logits, targets).sum().item()
        tokens += targets.ne(IGNORE_INDEX).sum().item()
    student.train()
    return total / tokens


def train_student(
    student_config, pool, logits, held, sampler, steps: int, seed: int
) -> tuple[list[tuple[int, float]], list[int], float]:
    """Distil for ``steps`` steps on the positions ``sampler`` yields; held-out curve, trained positions, seconds."""
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(student_config)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    it = iter(sampler(student))
    curve, trained, seconds = [], [], 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        picks = [next(it) for _ in range(BATCH)]
        trained += picks
        ids, mask, labels = batch_tensors([pool[i] for i in picks])
        out = student(input_ids=ids, attention_mask=mask).logits
        loss_sum, _, _ = kd_loss_sum(out, logits[picks].float(), labels, temperature=2.0, ce_weight=0.5)
        loss = loss_sum / labels[:, 1:].ne(IGNORE_INDEX).sum()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        seconds += time.perf_counter() - started
        if step % EVAL_EVERY == 0:
            curve.append((step, heldout_loss(student, held)))
    return curve, trained, seconds


def ema(values: list[float]) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else EMA * v + (1 - EMA) * acc
        out.append(acc)
    return out


def bootstrap(values: list[float], rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    v = np.array(values, dtype=float)
    means = rng.choice(v, size=(n, len(v)), replace=True).mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--noise", type=float, nargs="*", default=NOISE, help="noise levels this process runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "minnow-curriculum-bench")
    parser.add_argument(
        "--summarise", action="store_true", help="only merge the per-noise results into markdown + plot"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps = 1, 100
    OUT.mkdir(parents=True, exist_ok=True)
    if args.summarise:
        merged = [json.loads(f.read_text()) for f in sorted(OUT.glob("curriculum-noise*.json"))]
        summarise(
            [r for m in merged for r in m["results"]],
            argparse.Namespace(**merged[0]["args"]),
            merged[0]["teacher_heldout_nll"],
        )
        return
    torch.set_num_threads(1)

    texts = python_docstrings()
    random.Random(0).shuffle(texts)
    tok = train_tokenizer(texts[:3000], vocab_size=512)
    docs = encode(tok, texts)
    held, clean = docs[:HELDOUT], docs[HELDOUT:]
    vocab = len(tok)
    print(f"{len(clean)} clean documents, {len(held)} held out, vocabulary {vocab}", flush=True)

    teacher_dir = args.work / f"teacher-{args.teacher_steps}"
    started = time.perf_counter()
    if (teacher_dir / "config.json").is_file():
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    else:
        torch.manual_seed(0)
        teacher = AutoModelForCausalLM.from_config(_config("qwen2", vocab, 128, 4, tok))
        opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
        rng = random.Random(0)
        for _ in range(args.teacher_steps):
            ids, mask, labels = batch_tensors(rng.sample(clean, 32))
            teacher(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        teacher.save_pretrained(teacher_dir)
    teacher.eval()
    teacher_held = heldout_loss(teacher, held)
    print(f"teacher ready in {time.perf_counter() - started:.0f} s; clean held-out NLL {teacher_held:.3f}", flush=True)
    student_config = _config("qwen2", vocab, 64, 2, tok)

    results = []
    for noise in args.noise:
        for seed in range(args.seeds):
            rng = random.Random(1000 * seed + int(noise * 100))
            n_noise = int(noise * POOL)
            bad, kinds = corrupt(clean, n_noise, vocab, rng)
            good = rng.sample(clean, POOL - n_noise)
            pool = good + bad
            label = ["clean"] * len(good) + kinds
            order = list(range(POOL))
            rng.shuffle(order)  # corrupted examples are not at the end of the file
            pool, label = [pool[i] for i in order], [label[i] for i in order]
            ids = [f"{i:05d}" for i in range(POOL)]

            t0 = time.perf_counter()
            logits, t_nll = teacher_pass(teacher, pool)
            teacher_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            duplicates = near_duplicates(ids, [tok.decode(d) for d in pool], threshold=0.9)
            dedup_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            heuristic = [heuristic_score(tok.decode(d)) for d in pool]
            heuristic_seconds = time.perf_counter() - t0

            undup = [p for p in range(POOL) if ids[p] not in duplicates]
            ranking = sorted(undup, key=lambda p: (t_nll[p], p))
            filtered = ranking[: math.ceil(KEEP * len(ranking))]
            clean_only = [p for p in range(POOL) if label[p] == "clean"]
            T = args.steps
            schedules = {
                "uniform": lambda s: iter([i for b in shuffled(range(POOL), T, BATCH, seed) for i in b]),
                "static filter": lambda s: iter([i for b in shuffled(filtered, T, BATCH, seed) for i in b]),
                "paced": lambda s: iter([i for b in paced(ranking, T, BATCH, "root", 0.2, 0.5, seed) for i in b]),
                "paced + filter": lambda s: iter(
                    [i for b in paced(filtered, T, BATCH, "root", 0.2, 0.5, seed) for i in b]
                ),
                "reversed": lambda s: iter(
                    [i for b in paced(ranking[::-1], T, BATCH, "root", 0.2, 0.5, seed) for i in b]
                ),
                "oracle": lambda s: iter([i for b in shuffled(clean_only, T, BATCH, seed) for i in b]),
            }
            online_holder: dict = {}

            def online(student):
                log = ScheduleLog(Path(tempfile.mkdtemp()) / "schedule.jsonl", ids)
                score = lambda pos: learnability(student_nll(student, [pool[i] for i in pos]), [t_nll[i] for i in pos])  # noqa: E731
                online_holder["sampler"] = OnlineSelection(undup, T, BATCH, 0.5, 10, seed, score, log)
                return online_holder["sampler"]

            schedules["online"] = online
            for arm in ARMS:
                curve, trained, seconds = train_student(student_config, pool, logits, held, schedules[arm], T, seed)
                cost = {
                    "teacher pass (NLL, shared with the KD logit cache)": teacher_seconds,
                    "near-duplicates": dedup_seconds,
                }
                if arm == "online":
                    cost["online learnability"] = online_holder["sampler"].seconds
                    seconds -= online_holder["sampler"].seconds  # scoring happened inside the step loop
                if arm in ("uniform", "oracle"):
                    cost = {}
                results.append(
                    {
                        "noise": noise,
                        "seed": seed,
                        "arm": arm,
                        "curve": curve,
                        "train_seconds": seconds,
                        "scoring_seconds": cost,
                        "corrupted_trained": sum(label[i] != "clean" for i in trained) / len(trained),
                        "distinct_trained": len(set(trained)),
                    }
                )
                print(
                    f"noise {noise:.0%} seed {seed} {arm:15s} final {curve[-1][1]:.4f} "
                    f"corrupted {results[-1]['corrupted_trained']:.1%} train {seconds:.1f} s",
                    flush=True,
                )
            if seed == 0:
                by_kind = {k: [heuristic[p] > 0 for p in range(POOL) if label[p] == k] for k in ["clean", *KINDS]}
                caught = {k: [ids[p] in duplicates for p in range(POOL) if label[p] == k] for k in ["clean", *KINDS]}
                nll_by_kind = {
                    k: float(np.mean([t_nll[p] for p in range(POOL) if label[p] == k])) for k in by_kind if by_kind[k]
                }
                results.append(
                    {
                        "noise": noise,
                        "diagnostics": {
                            "heuristic_flagged": {k: float(np.mean(v)) for k, v in by_kind.items() if v},
                            "minhash_dropped": {k: float(np.mean(v)) for k, v in caught.items() if v},
                            "teacher_nll_mean": nll_by_kind,
                            "seconds": {
                                "teacher pass": teacher_seconds,
                                "near-duplicates": dedup_seconds,
                                "heuristic rules": heuristic_seconds,
                            },
                        },
                    }
                )
            out = {
                "args": {k: v for k, v in vars(args).items() if k in ("seeds", "steps", "teacher_steps", "quick")},
                "teacher_heldout_nll": teacher_held,
                "results": [r for r in results if r["noise"] == noise],
            }
            (OUT / f"curriculum-noise{int(noise * 100):02d}.json").write_text(json.dumps(out, indent=1))
    if set(args.noise) == set(NOISE):
        summarise(results, args, teacher_held)


def summarise(results: list[dict], args, teacher_held: float) -> None:
    runs = [r for r in results if "arm" in r]
    rng = np.random.default_rng(0)
    table: dict[tuple[float, str], dict] = {}
    for r in runs:
        r["ema"] = ema([loss for _, loss in r["curve"]])
    for noise in NOISE:
        for seed in range(args.seeds):
            group = {r["arm"]: r for r in runs if r["noise"] == noise and r["seed"] == seed}
            if "uniform" not in group:
                continue
            uni = group["uniform"]
            target = uni["ema"][-1]
            step_s = uni["train_seconds"] / args.steps
            reach = lambda r: next((s for (s, _), e in zip(r["curve"], r["ema"]) if e <= target), None)  # noqa: E731
            uni_steps = reach(uni)
            for arm, r in group.items():
                steps = reach(r)
                scoring = sum(r["scoring_seconds"].values())
                shared = scoring - r["scoring_seconds"].get("teacher pass (NLL, shared with the KD logit cache)", 0.0)
                row = table.setdefault(
                    (noise, arm),
                    {k: [] for k in ("speedup", "net", "net_shared", "final", "final_rel", "corrupted", "cost_steps")},
                )
                row["speedup"].append(uni_steps / steps if steps else 0.0)
                row["net"].append(uni_steps / (steps + scoring / step_s) if steps else 0.0)
                row["net_shared"].append(uni_steps / (steps + shared / step_s) if steps else 0.0)
                row["final"].append(r["curve"][-1][1])
                row["final_rel"].append(r["curve"][-1][1] / uni["curve"][-1][1] - 1)
                row["corrupted"].append(r["corrupted_trained"])
                row["cost_steps"].append(scoring / step_s)
    lines = [
        "# Curriculum benchmark: does high-quality-first help on noisy data?",
        "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/curriculum/run.py{' --quick' if args.quick else ''}` (or one "
        "process per `--noise` level, then `--summarise`) "
        f"({args.seeds} seeds, {args.steps} steps of {BATCH} examples, pool {POOL}, held-out {HELDOUT} clean documents, "
        f"teacher {args.teacher_steps} steps, teacher clean held-out NLL {teacher_held:.3f}). CPU, 1 thread per process, two processes side by side, at nice 10 on a 2-core machine "
        "shared with other jobs: seconds are noisy, ratios are measured within one run.",
        "",
        "Speedup = steps for the uniform arm's EMA of clean held-out NLL to reach its final value, over the steps this arm "
        "needs (0 = never reached within the run; `reached` counts the seeds where it was). Net = the same with the scoring seconds added as uniform-step equivalents: `net` charges "
        "the teacher pass over the pool; `net (logit cache)` counts it as shared with the KD logit cache (the teacher's "
        "logits are needed for distillation anyway) and charges only near-duplicate search and online scoring. "
        "Mean over seeds [bootstrap 95% interval].",
        "",
        "| noise | arm | reached | speedup | net | net (logit cache) | final clean NLL | vs uniform | corrupted trained | scoring (step-equiv.) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(values, pct=False):
        m, lo, hi = bootstrap(values, rng)
        return f"{m:+.2%} [{lo:+.2%}, {hi:+.2%}]" if pct else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"

    for noise in NOISE:
        for arm in ARMS:
            if (noise, arm) not in table:
                continue
            row = table[(noise, arm)]
            lines.append(
                f"| {noise:.0%} | {arm} | {sum(x > 0 for x in row['speedup'])}/{len(row['speedup'])} | {fmt(row['speedup'])} | {fmt(row['net'])} | {fmt(row['net_shared'])} | "
                f"{np.mean(row['final']):.4f} | {fmt(row['final_rel'], pct=True)} | {np.mean(row['corrupted']):.1%} | "
                f"{np.mean(row['cost_steps']):.0f} |"
            )
    diags = [r for r in results if "diagnostics" in r]
    if diags:
        lines += [
            "",
            "## What each scorer sees (seed 0)",
            "",
            "| noise | kind | teacher NLL | flagged by heuristic rules | dropped by MinHash |",
            "|---|---|---|---|---|",
        ]
        for d in diags:
            g = d["diagnostics"]
            for kind, nll in g["teacher_nll_mean"].items():
                lines.append(
                    f"| {d['noise']:.0%} | {kind} | {nll:.2f} | {g['heuristic_flagged'].get(kind, 0):.0%} | "
                    f"{g['minhash_dropped'].get(kind, 0):.0%} |"
                )
    lines += ["", "![clean held-out NLL per arm](curriculum.png)", ""]
    (OUT / "curriculum.md").write_text("\n".join(lines))
    plot(runs, args)
    print("\n".join(lines))


def plot(runs: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NOISE), figsize=(4 * len(NOISE), 3.6), sharey=True)
    for ax, noise in zip(np.atleast_1d(axes), NOISE):
        for arm in ARMS:
            curves = [r["ema"] for r in runs if r["noise"] == noise and r["arm"] == arm]
            if not curves:
                continue
            steps = [s for s, _ in next(r["curve"] for r in runs if r["noise"] == noise and r["arm"] == arm)]
            ax.plot(steps, np.mean(curves, 0), label=arm, lw=1.2, ls="--" if arm in ("reversed", "oracle") else "-")
        ax.set(title=f"{noise:.0%} corrupted", xlabel="step")
    np.atleast_1d(axes)[0].set_ylabel("EMA of clean held-out NLL")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "curriculum.png", dpi=110)


if __name__ == "__main__":
    main()
