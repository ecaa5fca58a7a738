"""Judge a finished SmolLM2 run on held-back general instructions, unlike its support-ticket training data.

For each model of the run — the teacher, the undistilled cut (`student_init/`), the SFT-only baseline
(`student_sft/`, when the recipe asked for it) and the KD student (`student/`); a rerun on the same run scores only
models added since (the SFT student, when it finished later) — on the teacher's own greedy answers
to the held-back prompts, scored teacher-forced: KL(teacher‖model) over the full vocabulary, top-1 agreement with
the teacher and perplexity; and ROUGE-L of the model's own greedy answer against the teacher's. Also the share of
the KL that cutting opened which distillation closed, and the targets of issue #14.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/judge.py runs/smollm2-135m-offline-<time> [--prompts 16]

Writes benchmarks/results/<--name, default real_llm>.json and .md. The teacher's answers are kept in
benchmarks/real_llm/heldout_general.jsonl (written on first use).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from minnow.core import atomic
from minnow.core.rundir import RunDir
from minnow.distill.causal_lm import tokenize
from minnow.distill.evaluate import evaluate_causal
from minnow.distill.generate import generate
from minnow.distill.losses import IGNORE_INDEX
from minnow.distill.metrics import rouge_l

sys.path.insert(0, str(Path(__file__).parent))
from prompts import heldout_prompts  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
ANSWERS = HERE / "heldout_general.jsonl"
CPU = torch.device("cpu")


def teacher_answers(teacher, tok, prompts: list[str], max_new_tokens: int) -> dict[str, str]:
    known = (
        {r["prompt"]: r["response"] for r in map(json.loads, ANSWERS.read_text().splitlines())}
        if ANSWERS.is_file()
        else {}
    )
    missing = [p for p in prompts if p not in known]
    if missing:
        known |= dict(zip(missing, generate(teacher, tok, missing, True, max_new_tokens, 0.0, 8, CPU)))
        atomic.write_text(ANSWERS, "".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in known.items()))
    return {p: known[p] for p in prompts}


class Judge:
    """The teacher, its greedy answers to the held-back prompts, and those answers tokenized for teacher forcing."""

    def __init__(self, run: RunDir, prompts: int, max_new_tokens: int) -> None:
        self.tok = AutoTokenizer.from_pretrained(run.recipe.teacher.path)
        self.teacher = AutoModelForCausalLM.from_pretrained(run.recipe.teacher.path, dtype=torch.float32).eval()
        self.prompts = heldout_prompts()[:prompts]
        self.max_new_tokens = max_new_tokens
        self.answers = teacher_answers(self.teacher, self.tok, self.prompts, max_new_tokens)
        examples = [{"id": str(i), "prompt": p, "response": self.answers[p]} for i, p in enumerate(self.prompts)]
        self.rows = [tokenize(ex, self.tok, True, run.recipe.distill.max_seq_len) for ex in examples]
        self.collate = DataCollatorForSeq2Seq(
            self.tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
        )

    def score(self, folder: Path) -> tuple[dict, dict]:
        """The teacher's and the model's teacher-forced figures, the model's with ROUGE-L of its own answers."""
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        scores = evaluate_causal(model, self.teacher, self.rows, self.collate, 8, CPU)
        said = generate(model, self.tok, self.prompts, True, self.max_new_tokens, 0.0, 8, CPU)
        first = self.prompts[0]
        return scores["teacher"] | {"tokens": scores["tokens"]}, scores["student"] | {
            "rouge_l_vs_teacher": sum(rouge_l(s, self.answers[p]) for s, p in zip(said, self.prompts)) / len(said),
            "layers": model.config.num_hidden_layers,
            "example": {"prompt": first, "teacher": self.answers[first], "model": said[0]},
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--name", default="real_llm", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    out = RESULTS / f"{args.name}.json"
    run = RunDir.open(args.run_dir)
    started = time.perf_counter()
    judge = Judge(run, args.prompts, args.max_new_tokens)
    models = {"student_init": run.student_init, "student_sft": run.student_sft, "student": run.student}
    results: dict = {"run": run.path.name, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "models": {}}
    previous = json.loads(out.read_text()) if out.is_file() else {}
    if all(previous.get(k) == results[k] for k in ("run", "prompts", "max_new_tokens")):
        results = previous | {"models": previous["models"]}  # a rerun scores only the models added since
    for name, folder in models.items():
        if name in results["models"] or not (folder / "config.json").is_file():
            continue
        results["teacher"], results["models"][name] = judge.score(folder)
    m = results["models"] = {name: results["models"][name] for name in models if name in results["models"]}
    opened, closed = m["student_init"]["kl_to_teacher"], m["student"]["kl_to_teacher"]
    results["kl_recovered"] = (opened - closed) / opened
    targets = {
        "kl_recovered >= 0.75": results["kl_recovered"] >= 0.75,
        "top1 >= 0.40": m["student"]["top1_agreement"] >= 0.4,
    }
    if "student_sft" in m:
        results["kl_vs_sft"] = closed / m["student_sft"]["kl_to_teacher"] - 1
        targets["KL >= 20% below SFT"] = results["kl_vs_sft"] <= -0.2
    results["targets"] = targets
    results["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(out, results)
    atomic.write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        f"# SmolLM2-135M-Instruct → cut student, judged on {r['prompts']} held-back general instructions",
        "",
        f"Run `{r['run']}`; teacher-forced on the teacher's greedy answers ({r['teacher']['tokens']} tokens); ROUGE-L of "
        f"each model's own greedy answer (≤ {r['max_new_tokens']} tokens) against the teacher's.",
        "",
        "| model | layers | KL(teacher‖model) | top-1 agreement | perplexity | ROUGE-L vs teacher |",
        "|---|---|---|---|---|---|",
        f"| teacher | 30 | 0 | 1 | {r['teacher']['perplexity']:.2f} | 1 |",
    ]
    for name, m in r["models"].items():
        lines.append(
            f"| {name} | {m['layers']} | {m['kl_to_teacher']:.3f} | {m['top1_agreement']:.3f} | {m['perplexity']:.2f} "
            f"| {m['rouge_l_vs_teacher']:.3f} |"
        )
    lines += ["", f"KL recovered (student_init → student): {r['kl_recovered']:.1%}"]
    if "kl_vs_sft" in r:
        lines.append(f"KD student's KL vs the SFT-only student's: {r['kl_vs_sft']:+.1%}")
    lines += [
        "",
        "Targets (issue #14): " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in r["targets"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
