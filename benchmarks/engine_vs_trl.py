"""Step time of Minnow's LogitDistillTrainer against TRL's GKDTrainer, same tiny models, data and loss.

Both train the tiny Qwen2 student of tests/tiny_models.py on the tiny teacher with the generalized JSD
(β = 0.5, temperature 1, no cross-entropy), off-policy (TRL: lmbda = 0, seq_kd off), same batch, steps and
optimizer, on the CPU in one process. Arms alternate (Minnow, TRL, Minnow, TRL, ...) so machine load hits both
alike; the first step of each arm is a warm-up and is not timed. TRL is not a Minnow dependency:
`pip install trl` into the environment to run this.

    python benchmarks/engine_vs_trl.py [--steps 30] [--rounds 3] [--pair /tmp/engine-pair]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"


# TRL's SFT-based configs default to bf16 and gradient checkpointing; Minnow trains these in float32 without
# recomputation, so both are switched off to compare the same work (--trl-defaults keeps TRL's defaults).
TRL_MATCHED = {"bf16": False, "gradient_checkpointing": False}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def common(out: Path, steps: int) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=steps,
        seed=0,
        dataloader_num_workers=0,
    )


def minnow_arm(pair: dict, rows: list[dict], steps: int, out: Path) -> list[float]:
    from minnow.distill.causal_lm import tokenize
    from minnow.distill.losses import IGNORE_INDEX, divergence
    from minnow.distill.trainer import LogitDistillTrainer

    tok = AutoTokenizer.from_pretrained(pair["student"])
    data = [tokenize({"id": str(i), **r}, tok, True, 128) for i, r in enumerate(rows)]
    timer = StepTimer()
    trainer = LogitDistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(pair["student"]),
        args=TrainingArguments(**common(out, steps)),
        train_dataset=Dataset.from_list(data),
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"),
        processing_class=tok,
        teacher=AutoModelForCausalLM.from_pretrained(pair["teacher"]),
        temperature=1.0,
        ce_weight=0.0,
        div=divergence("jsd", jsd_beta=0.5),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times[1:]


def trl_arm(pair: dict, rows: list[dict], steps: int, out: Path) -> list[float]:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tok = AutoTokenizer.from_pretrained(pair["student"])
    messages = [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
        for r in rows
    ]
    timer = StepTimer()
    trainer = GKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(pair["student"]),
        teacher_model=AutoModelForCausalLM.from_pretrained(pair["teacher"]),
        args=GKDConfig(**common(out, steps), lmbda=0.0, beta=0.5, seq_kd=False, max_length=128, **TRL_MATCHED),
        train_dataset=Dataset.from_list(messages),
        processing_class=tok,
        callbacks=[timer],
    )
    trainer.train()
    return timer.times[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pair", type=Path, default=None, help="a folder made by tests/tiny_models.make_pair")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/engine-vs-trl"))
    ap.add_argument("--trl-defaults", action="store_true", help="keep TRL's bf16 and gradient checkpointing")
    args = ap.parse_args()
    if args.trl_defaults:
        TRL_MATCHED.clear()
    from tiny_models import make_pair

    folder = args.pair or args.workdir / "pair"
    pair = {"teacher": folder / "teacher", "student": folder / "student", "data": folder / "tickets.jsonl"}
    if not pair["teacher"].is_dir():
        pair = make_pair(folder)
    rows = [json.loads(line) for line in pair["data"].read_text().splitlines()]
    import trl

    times: dict[str, list[float]] = {"minnow": [], "trl": []}
    for r in range(args.rounds):
        for name, arm in (("minnow", minnow_arm), ("trl", trl_arm)):
            torch.manual_seed(0)
            times[name] += arm(pair, rows, args.steps, args.workdir / f"{name}-{r}")
    median = {name: statistics.median(t) for name, t in times.items()}
    out = {
        "trl_version": trl.__version__,
        "trl_overrides": dict(TRL_MATCHED),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "median_step_seconds": median,
        "mean_step_seconds": {name: statistics.fmean(t) for name, t in times.items()},
        "minnow_speed_vs_trl": median["trl"] / median["minnow"],
        "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "engine_vs_trl_trl_defaults.json" if args.trl_defaults else "engine_vs_trl.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
