"""Curriculum on real weights (issue #14, item 7): the smollm2-135m-offline recipe's KD student trained with each
data order at equal steps, from the same cut and the same cached teacher logits.

The finished run given is one arm (its own `curriculum.order`). Each other order gets a sibling run directory,
made from the same resolved recipe with only `curriculum.order` changed and the SFT baseline off, starting from
hard links of the given run's `student_init/` and `teacher_cache/` (the cache's provenance does not depend on the
order, so it is reused as is). Every arm is judged the same two ways: held-out KL, top-1 agreement and perplexity
on the run's own held-out examples (the distill stage's evaluation, report.json) and on the held-back general
instructions (judge.py).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/curriculum.py runs/smollm2-135m-offline-<time> \\
        --orders random paced --prompts 16 --max-new-tokens 32

Writes benchmarks/results/real_llm_curriculum.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from minnow import pipeline
from minnow.core import atomic
from minnow.core.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from judge import RESULTS, Judge  # noqa: E402


def sibling(run: RunDir, order: str) -> RunDir:
    """A run of the same recipe with ``order``, sharing the cut and the teacher cache (resumed if it exists)."""
    recipe = run.recipe.model_copy(deep=True)
    recipe.curriculum.order = order
    recipe.distill.baseline = "none"
    recipe.name = f"{run.recipe.name}-{order}"
    existing = sorted(Path(recipe.runs_dir).glob(f"{recipe.name}-*"))
    if existing:
        return RunDir.open(existing[-1]).healed()
    arm = RunDir.create(recipe)
    for folder in (run.student_init, run.teacher_cache):
        shutil.copytree(folder, arm.path / folder.name, copy_function=os.link)
    return arm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--orders", nargs="+", default=["random"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    arms = {run.recipe.curriculum.order: run}
    for order in args.orders:
        arm = sibling(run, order)
        if not pipeline.is_distilled(arm):
            pipeline.distill(arm)
        arms[order] = arm
    judge = Judge(run, args.prompts, args.max_new_tokens)
    results = {
        "run": run.path.name,
        "steps": run.recipe.distill.steps,
        "batch_size": run.recipe.distill.batch_size,
        "prompts": args.prompts,
        "arms": {},
    }
    for order, arm in arms.items():
        section = arm.report().distill
        results["arms"][order] = {
            "run": arm.path.name,
            "heldout": section.eval["student"],
            "general": judge.score(arm.student)[1],
            "train_seconds": section.train_seconds,
        }
    results["date"] = time.strftime("%Y-%m-%d")
    atomic.write_json(RESULTS / "real_llm_curriculum.json", results)
    atomic.write_text(RESULTS / "real_llm_curriculum.md", markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        "# Curriculum on real weights: data order at equal steps (issue #14)",
        "",
        f"smollm2-135m-offline, {r['steps']} steps × {r['batch_size']} examples from the same 18-of-30-layer cut and the "
        f"same cached teacher logits (run `{r['run']}`), measured {r['date']}. In domain: the run's held-out support and "
        f"general examples (their own answers); general: {r['prompts']} held-back general instructions, teacher-forced "
        "on the teacher's greedy answers (benchmarks/real_llm/judge.py).",
        "",
        "| order | in-domain KL | in-domain top-1 | general KL | general top-1 | general ROUGE-L | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for order, a in r["arms"].items():
        h, g = a["heldout"], a["general"]
        lines.append(
            f"| {order} | {h['kl_to_teacher']:.3f} | {h['top1_agreement']:.3f} | {g['kl_to_teacher']:.3f} "
            f"| {g['top1_agreement']:.3f} | {g['rouge_l_vs_teacher']:.3f} | {a['train_seconds']:.0f} |"
        )
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
