"""What `serve.repetition_penalty` does to a finished SmolLM2 run's answers on held-back general instructions.

Each model of the run (teacher, KD student, SFT-only student) answers the held-back prompts through the demo's own
PyTorch decoding (:func:`minnow.export.generate.torch_greedy`, up to the recipe's ``serve.max_new_tokens``) at
each penalty. Per model and penalty: how much its answers loop (seq-rep-3, as the measure stage reports it), and
ROUGE-L against the teacher's answers, both plain and at the same penalty (what the run's measure stage reports
when the recipe sets one).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/repetition.py runs/smollm2-135m-offline-<time> \
        [--prompts 16] [--penalties 1.0 1.1 1.2]

Writes benchmarks/results/<--name, default real_llm_repetition>.json (every answer included) and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core import atomic
from minnow.core.rundir import RunDir
from minnow.distill.metrics import rouge_l, seq_rep
from minnow.export.causal_lm import encode_prompt
from minnow.export.generate import torch_greedy

sys.path.insert(0, str(Path(__file__).parent))
from prompts import heldout_prompts  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results"


def answers(folder: Path, prompts: list[str], max_new_tokens: int, penalties: list[float]) -> list[list[list[int]]]:
    """Per penalty, the token ids of each prompt's answer by the model in ``folder`` (loaded once)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stop = {tok.eos_token_id}
    return [
        [list(torch_greedy(model, encode_prompt(tok, p), max_new_tokens, stop, penalty)) for p in prompts]
        for penalty in penalties
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--penalties", type=float, nargs="+", default=[1.0, 1.1, 1.2])
    parser.add_argument("--name", default="real_llm_repetition", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    prompts, max_new_tokens = heldout_prompts()[: args.prompts], run.recipe.serve.max_new_tokens
    models = {"teacher": Path(run.recipe.teacher.path), "KD student": run.path / "student"}
    if (run.path / "student_sft").is_dir():
        models["SFT-only student"] = run.path / "student_sft"
    tok = AutoTokenizer.from_pretrained(models["teacher"])
    texts: dict[tuple[str, float], list[str]] = {}
    rows = []
    for name, folder in models.items():
        for penalty, ids in zip(args.penalties, answers(folder, prompts, max_new_tokens, args.penalties)):
            texts[name, penalty] = [tok.decode(a, skip_special_tokens=True).strip() for a in ids]
            teacher_plain, teacher_same = texts["teacher", args.penalties[0]], texts["teacher", penalty]
            rows.append(
                {
                    "model": name,
                    "penalty": penalty,
                    "seq_rep_3": round(mean(map(seq_rep, texts[name, penalty])), 4),
                    "rouge_l_vs_teacher_plain": round(mean(map(rouge_l, texts[name, penalty], teacher_plain)), 4),
                    "rouge_l_vs_teacher_same": round(mean(map(rouge_l, texts[name, penalty], teacher_same)), 4),
                    "answers": texts[name, penalty],
                }
            )
            print({k: v for k, v in rows[-1].items() if k != "answers"}, flush=True)
    results = {"run": run.path.name, "prompts": prompts, "max_new_tokens": max_new_tokens, "rows": rows}
    atomic.write_json(RESULTS / f"{args.name}.json", results)
    write_table(results, " ".join(sys.argv[1:]), args.name)


def write_table(results: dict, args: str, name: str) -> None:
    lines = [
        "# `serve.repetition_penalty` on a SmolLM2 run's answers (issue #14)\n",
        f"Run `{results['run']}`; the first {len(results['prompts'])} held-back general instructions "
        "(`benchmarks/real_llm/prompts.py`), answered through the demo's own PyTorch decoding, greedy, at most "
        f"{results['max_new_tokens']} new tokens (the recipe's `serve.max_new_tokens`). Loops: seq-rep-3, the share of "
        "an answer's word 3-grams that repeat an earlier one, averaged over the answers. Every answer is in the JSON.\n",
        f"    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/repetition.py {args}\n",
        "| model | repetition penalty | loops (seq-rep-3) | ROUGE-L vs the teacher's plain answers "
        "| ROUGE-L vs the teacher's at the same penalty |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['penalty']:g} | {r['seq_rep_3']:.3f} | {r['rouge_l_vs_teacher_plain']:.3f} "
        f"| {r['rouge_l_vs_teacher_same']:.3f} |"
        for r in results["rows"]
    ]
    atomic.write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
