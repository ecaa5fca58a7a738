"""Cross-tokenizer distillation on real models: Gemma 3 270M (262k vocabulary) → SmolLM2-135M-Instruct (49k).

Arms, at the same data, steps, batch and learning rate, per seed: SFT-only (cross-entropy on the data), ULD and
the hybrid (both mixed with cross-entropy by ``distill.ce_weight``), all through Minnow's own functions: rows of
both tokenizers over one text, one teacher cache (top-k with token spans, built once: it covers every example,
so every seed's split reuses it), the collator that aligns at training time, the Trainer subclass, the held-out
evaluation. Settings come from the bundled recipe ``recipes/gemma3-to-smollm2.yaml``, scaled down by flags.

Per arm and seed: held-out loss of the student on the data (per student token, the target metric; per character
of the text without the appended EOS too, comparable with the teacher's and the untrained student's), ULD to the
teacher, ROUGE-L of the student's greedy continuation of each held-out prompt against the data's response (the
teacher's own text on the default data), and the training seconds per step (the teacher is cached: no arm runs it). Differences to SFT-only are paired by seed
(same split, same order) and given with a 95% t-interval. Arms of one seed run back to back, so machine load
hits them alike. Results: benchmarks/results/<--name>.{json,md}; each finished arm is saved at once and
skipped when the script is rerun.

    python benchmarks/cross_tokenizer.py [--seeds 3] [--steps 30] [--data FILE.jsonl] [--ce-weight 0.5]
        [--train-examples N] [--arms sft hybrid] [--workdir /tmp/cross-tok]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from minnow.distill.metrics import rouge_l

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "gemma3-to-smollm2.yaml"
ARMS = ("sft", "uld", "hybrid")
COLUMNS = ("heldout_loss", "heldout_loss_per_char", "text_loss_per_char", "uld_to_teacher", "top1_agreement")
COLUMNS += ("rouge_l", "step_seconds")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval of paired differences."""
    n = len(values)
    mean = statistics.fmean(values)
    half = T_975.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


@torch.inference_mode()
def greedy(model, tok, prompts: list[str], max_new_tokens: int, device) -> list[str]:
    """Greedy continuations, left-padded batches of 8, decoded without the prompt."""
    tok.padding_side = "left"
    out = []
    for i in range(0, len(prompts), 8):
        batch = tok(prompts[i : i + 8], return_tensors="pt", padding=True, add_special_tokens=True).to(device)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    tok.padding_side = "right"
    return out


def prompt_of(ex: dict, tok, chat_template: bool) -> str:
    """The text before the trained part: what both models continue greedily."""
    from minnow.distill.cross_tokenizer import render

    r = render(ex, tok, chat_template)
    return r.text[: r.trained[0][0]] if r.trained[0][0] > 0 else " ".join(r.text.split()[:8])


def load_recipe(args):
    from minnow.core.recipe import load_recipe as load
    from minnow.distill.gguf import with_gguf_folders

    recipe = with_gguf_folders(load(args.recipe), args.recipe)
    d = recipe.distill
    d.steps, d.batch_size, d.max_seq_len, d.lr = args.steps, args.batch_size, args.max_seq_len, args.lr
    d.eos_kd = not args.no_eos_kd
    d.ce_weight = args.ce_weight if args.ce_weight is not None else d.ce_weight
    recipe.data.heldout, recipe.data.max_examples = args.heldout, args.train_examples
    if args.data is not None:
        recipe.data.path = str(args.data)
    if args.student is not None:
        recipe.student.path = str(args.student.resolve())
    return recipe


def train_arm(recipe, p: dict, cache, arm: str, seed: int, workdir: Path, device) -> tuple[torch.nn.Module, float]:
    """One arm trained; returns the student and the seconds per optimizer step."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from minnow.distill.cross_flow import CrossTokenizerTrainer
    from minnow.distill.cross_tokenizer import CrossTokenizerCollator, vocabulary_match
    from minnow.distill.losses import IGNORE_INDEX
    from minnow.distill.models import load_causal_lm
    from minnow.distill.training import training_arguments

    cfg = recipe.distill
    torch.manual_seed(seed)
    student = load_causal_lm(recipe.student, device)
    collate = DataCollatorForSeq2Seq(
        p["student_tok"], padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
    )
    args = training_arguments(
        recipe,
        workdir / f"ckpt-{arm}-{seed}",
        device,
        remove_unused_columns=False,
        save_strategy="no",
        logging_steps=max(1, cfg.steps // 5),
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="random",
    )
    table = vocabulary_match(p["student_tok"], p["teacher_tok"])[0] if arm == "hybrid" else None
    plain = lambda rows: collate([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])  # noqa: E731
    trainer = CrossTokenizerTrainer(
        model=student,
        args=args,
        train_dataset=Dataset.from_list(p["train_rows"]),
        processing_class=p["student_tok"],
        data_collator=plain if arm == "sft" else CrossTokenizerCollator(collate, cache, cfg.temperature, cfg.eos_kd),
        temperature=cfg.temperature,
        ce_weight=1.0 if arm == "sft" else cfg.ce_weight,
        teacher_to_student=table,
    )
    started = time.perf_counter()
    trainer.train()
    return trainer.model, (time.perf_counter() - started) / trainer.state.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per held-out prompt (ROUGE-L)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cross-tok"))
    parser.add_argument(
        "--no-eos-kd", action="store_true", help="distill.eos_kd: false (the EOS pair trained by CE only)"
    )
    parser.add_argument(
        "--student", type=Path, help="a student folder instead of the recipe's (e.g. the SmolLM2 recipe's cut student)"
    )
    parser.add_argument("--data", type=Path, help="prompt/response JSONL instead of the recipe's data")
    parser.add_argument(
        "--ce-weight", type=float, help="distill.ce_weight of the ULD and hybrid arms (recipe's if unset)"
    )
    parser.add_argument("--train-examples", type=int, help="data.max_examples: train on at most this many")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="sft is always run")
    parser.add_argument("--name", default="cross_tokenizer", help="results file stem in benchmarks/results/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared, oversubscribed CPU)")
    args = parser.parse_args()
    args.recipe = args.recipe.resolve()
    args.data = args.data.resolve() if args.data is not None else None
    args.arms = ["sft"] + [a for a in args.arms if a != "sft"]
    args.command = "python benchmarks/cross_tokenizer.py " + " ".join(sys.argv[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)

    from transformers import DataCollatorForSeq2Seq

    from minnow.distill.cross_flow import cache_teacher_cross, evaluate_cross, prepare_cross
    from minnow.distill.cross_tokenizer import CrossTokenizerCollator, vocabulary_match
    from minnow.distill.losses import IGNORE_INDEX
    from minnow.distill.models import load_causal_lm
    from minnow.distill.training import pick_device

    class Run:  # what cache_teacher_cross reads of a run directory
        def __init__(self, recipe, folder: Path) -> None:
            self.recipe, self.teacher_cache = recipe, folder

    args.workdir.mkdir(parents=True, exist_ok=True)
    partial = args.workdir / "arms.json"
    done: dict = json.loads(partial.read_text()) if partial.is_file() else {}
    device = pick_device("auto")
    every = load_recipe(args)  # the cache covers every example, so every seed's split reuses it
    every.data.max_examples = None
    started = time.perf_counter()
    cache, info = cache_teacher_cross(Run(every, args.workdir / "teacher_cache"), prepare_cross(every), device)
    setup: dict = {"cache_seconds": info["built_seconds"] or round(time.perf_counter() - started, 1)}
    for seed in range(args.seeds):
        recipe = load_recipe(args)
        recipe.distill.seed = seed
        p = prepare_cross(recipe)
        setup |= {
            "method_auto": p["why"],
            "alignment": p["alignment"],
            "train_rows": len(p["train_rows"]),
            "heldout_rows": len(p["eval_rows"]),
            "top_k": recipe.distill.cache_top_k,
        }
        by_id = {ex["id"]: ex for ex in p["heldout"]}
        prompts = {
            r["id"]: prompt_of(by_id[r["id"]], p["student_tok"], recipe.data.chat_template) for r in p["eval_rows"]
        }
        references = {i: by_id[i]["response"] for i in prompts}
        collate = DataCollatorForSeq2Seq(
            p["student_tok"], padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
        )
        table = vocabulary_match(p["student_tok"], p["teacher_tok"])[0]
        eval_collate = CrossTokenizerCollator(collate, cache, 1.0, recipe.distill.eos_kd)
        if f"untrained/{seed}" not in done:
            untrained = load_causal_lm(recipe.student, device)
            ev = evaluate_cross(untrained, p["eval_rows"], eval_collate, table, recipe.distill.eval_batch_size, device)
            done[f"untrained/{seed}"] = {"arm": "untrained", "seed": seed, "eval": ev}
            print(
                f"seed {seed} text loss/char: teacher {ev['teacher']['text_loss_per_char']:.4f}, "
                f"untrained student {ev['student']['text_loss_per_char']:.4f}",
                flush=True,
            )
            del untrained
        for arm in args.arms:
            key = f"{arm}/{seed}"
            if key in done:
                continue
            student, step_seconds = train_arm(recipe, p, cache, arm, seed, args.workdir, device)
            ev = evaluate_cross(student, p["eval_rows"], eval_collate, table, recipe.distill.eval_batch_size, device)
            answers = greedy(student, p["student_tok"], list(prompts.values()), args.new_tokens, device)
            rouge = statistics.fmean(rouge_l(a, references[i]) for i, a in zip(prompts, answers))
            done[key] = {
                "arm": arm,
                "seed": seed,
                "step_seconds": step_seconds,
                "rouge_l": rouge,
                "eval": ev,
                "example_answer": {
                    "prompt": next(iter(prompts.values())),
                    "student": answers[0],
                    "reference": references[next(iter(prompts))],
                },
            }
            partial.write_text(json.dumps(done, indent=1, ensure_ascii=False))
            print(key, f"loss {ev['student']['loss']:.4f} rouge {rouge:.3f} {step_seconds:.2f}s/step", flush=True)
            del student
    write_results(args, setup, done)


def write_results(args, setup: dict, done: dict) -> None:
    seeds = sorted({v["seed"] for v in done.values()})
    metric = {
        "heldout_loss": lambda v: v["eval"]["student"]["loss"],
        "heldout_loss_per_char": lambda v: v["eval"]["student"]["loss_per_char"],
        "text_loss_per_char": lambda v: v["eval"]["student"]["text_loss_per_char"],
        "uld_to_teacher": lambda v: v["eval"]["student"]["uld_to_teacher"],
        "top1_agreement": lambda v: v["eval"]["student"]["top1_agreement"],
        "rouge_l": lambda v: v["rouge_l"],
        "step_seconds": lambda v: v["step_seconds"],
    }
    arms = {
        arm: {
            name: [f(done[f"{arm}/{s}"]) for s in seeds if f"{arm}/{s}" in done]
            for name, f in metric.items()
            if arm != "untrained" or name not in ("rouge_l", "step_seconds")
        }
        for arm in ["untrained", *args.arms]
    }
    paired = {}
    for arm in args.arms[1:]:
        both = [s for s in seeds if f"{arm}/{s}" in done and f"sft/{s}" in done]
        paired[arm] = {
            name: interval([f(done[f"{arm}/{s}"]) - f(done[f"sft/{s}"]) for s in both])
            for name, f in metric.items()
            if name != "step_seconds"
        } | {
            "step_cost_vs_sft": interval(
                [done[f"{arm}/{s}"]["step_seconds"] / done[f"sft/{s}"]["step_seconds"] for s in both]
            )
        }
    teacher = [done[f"untrained/{s}"]["eval"]["teacher"] for s in seeds if f"untrained/{s}" in done]
    result = {
        "settings": vars(args) | {"workdir": str(args.workdir)},
        "setup": setup,
        "teacher_heldout": {k: [t[k] for t in teacher] for k in teacher[0]} if teacher else {},
        "arms": arms,
        "vs_sft": paired,
        "runs": done,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))


def shown(path: str | None) -> str | None:
    """``path`` relative to the repository where it lies inside it."""
    if path is None or not Path(path).resolve().is_relative_to(ROOT):
        return path
    return str(Path(path).resolve().relative_to(ROOT))


def markdown(r: dict) -> str:
    s = r["settings"]
    spread = lambda v: f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"  # noqa: E731
    teacher = r["teacher_heldout"]
    lines = [
        "# Cross-tokenizer distillation: Gemma 3 270M → SmolLM2-135M-Instruct",
        "",
        f"`{s['command']}` (recipe `{shown(s['recipe'])}`, scaled down by these flags; data "
        f"`{shown(s['data']) if s['data'] else 'the recipe'}`; student `{shown(s.get('student')) or 'the recipe'}`).",
        "",
        f"Alignment of the training data: {json.dumps(r['setup'].get('alignment'))}; {r['setup'].get('method_auto')}.",
        "",
        f"Teacher on the held-out data, nats per character: {spread(teacher['loss_per_char'])}; without the EOS "
        f"both sides append (text loss): {spread(teacher['text_loss_per_char'])}.",
        "",
        "| arm | held-out loss (student tokens) | loss per char | text loss per char | ULD to teacher "
        "| top-1 agreement (exact tokens) | ROUGE-L vs data response | s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, m in r["arms"].items():
        cells = [spread(m[k]) if k in m else "" for k in COLUMNS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard deviation over seeds (untrained: the student before training). Differences to SFT-only, "
        "paired by seed, mean [95% t-interval]:",
        "",
        "| arm | Δ held-out loss | Δ loss per char | Δ text loss per char | Δ ROUGE-L | step cost vs SFT |",
        "|---|---|---|---|---|---|",
    ]
    cell = lambda x: f"{x['mean']:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}]"  # noqa: E731
    for arm, d in r["vs_sft"].items():
        cost = d["step_cost_vs_sft"]
        lines.append(
            f"| {arm} | {cell(d['heldout_loss'])} | {cell(d['heldout_loss_per_char'])} | "
            f"{cell(d['text_loss_per_char'])} | {cell(d['rouge_l'])} "
            f"| {cost['mean']:.2f}x [{cost['low']:.2f}, {cost['high']:.2f}] |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
