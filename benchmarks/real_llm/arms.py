"""Arms on real weights (issue #14): the smollm2-135m-offline recipe's KD student trained with one or more recipe
settings changed, at equal steps, from the same cut and the same cached teacher logits.

The finished run given is the reference arm. Each arm is a comma-separated list of `section.key=value` overrides
(values read as YAML: `distill.lr=5e-4`, `curriculum.order=paced`, `distill.loss=reverse_kl,distill.lr=5e-4`) and
gets a sibling run directory: the same resolved recipe with those overrides and the SFT baseline off, starting from
hard links of the given run's `student_init/` (unless the arm changes `student.*`: it cuts its own) and
`teacher_cache/` (resumed when it exists). An override that
changes what the cache holds makes the distill stage stop on the stale cache instead of mixing. Every arm is judged
the same two ways: held-out KL, top-1 agreement and perplexity on the run's own held-out examples (the distill
stage's evaluation, report.json) and on the held-back general instructions (judge.py).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/arms.py runs/smollm2-135m-offline-<time> \\
        --arms curriculum.order=quality-first curriculum.order=paced --name real_llm_curriculum

Writes benchmarks/results/<--name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from minnow import pipeline
from minnow.core import atomic
from minnow.core.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from judge import RESULTS, Judge  # noqa: E402


def sibling(run: RunDir, arm: str) -> RunDir:
    """A run of the same recipe with ``arm``'s overrides, sharing the cut and the teacher cache (resumed if it exists)."""
    recipe = run.recipe.model_copy(deep=True)
    for override in arm.split(","):
        dotted, value = override.split("=", 1)
        *sections, key = dotted.split(".")
        target = recipe
        for section in sections:
            target = getattr(target, section)
        setattr(target, key, yaml.safe_load(value))
    recipe.distill.baseline = "none"
    recipe.name = f"{run.recipe.name}-{re.sub(r'[^A-Za-z0-9.]+', '-', arm)}"
    existing = sorted(Path(recipe.runs_dir).glob(f"{recipe.name}-*"))
    if existing:
        return RunDir.open(existing[-1]).healed()
    sib = RunDir.create(recipe)
    recut = recipe.student != run.recipe.student
    for folder in [run.teacher_cache] if recut else [run.student_init, run.teacher_cache]:
        shutil.copytree(folder, sib.path / folder.name, copy_function=os.link)
    return sib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--arms", nargs="+", required=True, help="each: section.key=value[,section.key=value]")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--name", default="real_llm_arms", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    arms = {"reference": run}
    for spec in args.arms:
        arm = sibling(run, spec)
        if not pipeline.is_distilled(arm):
            pipeline.distill(arm)
        arms[spec] = arm
    judge = Judge(run, args.prompts, args.max_new_tokens)
    results = {
        "run": run.path.name,
        "steps": run.recipe.distill.steps,
        "batch_size": run.recipe.distill.batch_size,
        "prompts": args.prompts,
        "reference": run.recipe.distill.model_dump(include={"loss", "lr", "temperature", "ce_weight", "mode"})
        | {"order": run.recipe.curriculum.order},
        "arms": {},
    }
    init_kl = {}  # per cut (layers, MLP width): the general KL that cutting opened
    for spec, arm in arms.items():
        section = arm.report().distill
        cut = section.student_from_teacher
        layers = tuple(cut["layers"])
        key = (layers, cut.get("mlp_width"))
        if key not in init_kl:
            init_kl[key] = judge.score(arm.student_init)[1]["kl_to_teacher"]
        general = judge.score(arm.student)[1]
        results["arms"][spec] = {
            "run": arm.path.name,
            "layers": list(layers),
            "heldout": section.eval["student"],
            "general": general,
            "mlp_width": cut.get("mlp_width"),
            "parameters": section.parameters["student"],
            "general_init_kl": init_kl[key],
            "kl_recovered": 1 - general["kl_to_teacher"] / init_kl[key],
            "train_seconds": section.train_seconds,
        }
    results["date"] = time.strftime("%Y-%m-%d")
    atomic.write_json(RESULTS / f"{args.name}.json", results)
    atomic.write_text(RESULTS / f"{args.name}.md", markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        "# Recipe settings on real weights at equal steps (issue #14)",
        "",
        f"smollm2-135m-offline, reference settings {r['reference']}; {r['steps']} steps × {r['batch_size']} examples from the same 18-of-30-layer cut (an arm "
        f"that changes `student.*` cuts its own) and the same cached teacher logits (run `{r['run']}`), measured {r['date']}. In domain: the run's held-out support and "
        f"general examples (their own answers); general: {r['prompts']} held-back general instructions, teacher-forced "
        "on the teacher's greedy answers (benchmarks/real_llm/judge.py).",
        "",
        "| arm | student parameters | in-domain KL | in-domain top-1 | general KL (cut → student) | KL recovered "
        "| general top-1 | general ROUGE-L | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, a in r["arms"].items():
        h, g = a["heldout"], a["general"]
        lines.append(
            f"| {spec} | {a['parameters'] / 1e6:.1f}M | {h['kl_to_teacher']:.3f} | {h['top1_agreement']:.3f} | {a['general_init_kl']:.3f} → "
            f"{g['kl_to_teacher']:.3f} | {a['kl_recovered']:.1%} | {g['top1_agreement']:.3f} "
            f"| {g['rouge_l_vs_teacher']:.3f} | {a['train_seconds']:.0f} |"
        )
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
