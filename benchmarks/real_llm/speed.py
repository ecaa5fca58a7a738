"""Pruning's and quantization's shares of the student's decode speed, timed side by side in one process: the
SmolLM2 teacher in PyTorch fp32 and as its own int4 export (the run's int4 settings), and a finished run's student
in PyTorch fp32 and as the run's int4 folder. Same prompt, same thread count, alternating rounds (int4.py's timing).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/speed.py runs/smollm2-135m-offline-<time> [--threads 2 1]

Writes benchmarks/results/real_llm_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core import atomic
from minnow.core.rundir import RunDir
from minnow.export.causal_lm import encode_prompt

sys.path.insert(0, str(Path(__file__).parent))
from int4 import GENERAL, RESULTS, Setting, export, speed, summarise  # noqa: E402

ARMS = ("teacher PyTorch fp32", "teacher int4", "student PyTorch fp32", "student int4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/minnow-int4"), help="The teacher's export (reused).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = RunDir.open(args.run_dir)
    cfg = run.recipe.export
    teacher_dir = Path(run.recipe.teacher.path)
    teacher_int4 = args.work / f"teacher-int4-{cfg.int4_lm_head}-head-block{cfg.int4_block_size}"
    export(teacher_dir, teacher_int4, Setting("int4", cfg.int4_lm_head, cfg.int4_block_size))
    load = lambda folder: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # noqa: E731
    models = {ARMS[0]: load(teacher_dir), ARMS[2]: load(run.student)}
    folders = {ARMS[1]: teacher_int4, ARMS[3]: run.onnx / "int4"}
    prompt = json.loads(GENERAL.read_text(encoding="utf-8").splitlines()[0])["prompt"]
    prompt_ids = encode_prompt(AutoTokenizer.from_pretrained(teacher_dir), prompt)
    results: dict = {
        "run": run.path.name,
        "int4": {"lm_head": cfg.int4_lm_head, "block_size": cfg.int4_block_size},
        "prompt": prompt,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "by_threads": {},
    }
    for threads in args.threads:
        rows = speed(models, folders, prompt_ids, args.new_tokens, args.rounds, threads)
        results["by_threads"][str(threads)] = summarise(
            {name: rows[name] for name in ARMS}, {"x_teacher_pytorch": ARMS[0]}
        )
    atomic.write_json(RESULTS / "real_llm_speed.json", results)
    atomic.write_text(RESULTS / "real_llm_speed.md", markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        "# Where the SmolLM2 student's decode speed comes from: pruning vs quantization (issue #14)",
        "",
        f"Run `{r['run']}`; int4 = {r['int4']['lm_head']} lm_head, block {r['int4']['block_size']} for both models. "
        f"Greedy decode of one general prompt for {r['new_tokens']} tokens, {r['rounds']} alternating rounds in one "
        "process; medians, and medians of per-round ratios to the teacher's PyTorch fp32. Time it with nothing else "
        "on the cores: other jobs slow PyTorch's threads more than onnxruntime's and inflate the ratios.",
        "",
        "| threads | variant | decode tok/s | × teacher PyTorch | TTFT ms |",
        "|---|---|---|---|---|",
    ]
    for threads, rows in r["by_threads"].items():
        for name, row in rows.items():
            lines.append(
                f"| {threads} | {name} | {row['median_tokens_per_s']:.1f} | {row['x_teacher_pytorch']:.2f}x "
                f"| {row['median_ttft_ms']:.0f} |"
            )
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
