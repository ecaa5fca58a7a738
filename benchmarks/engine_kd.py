"""Distillation engine benchmarks on locally built tiny models (no hub), every arm in its own process.

1. Cached-logit KD vs online KD, same student, data, steps: training tokens/s, peak RSS, held-out KL.
2. KD vs SFT-only (cross-entropy on the data) on the same budget: held-out KL to the teacher.

The teacher is much bigger than the student (the cache's win is not running it, and not holding it).
Held-out KL is measured the same way for every arm afterwards: full-vocabulary KL(teacher‖student) with
the real teacher, per response token. Results go to benchmarks/results/engine_kd.{json,md}.

    python benchmarks/engine_kd.py [--steps 60] [--workdir /tmp/engine-kd]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"
TRAIN_ONE = "import sys; from minnow import pipeline; from minnow.core.rundir import RunDir; pipeline.distill(RunDir.open(sys.argv[1]))"


def build_models(root: Path, teacher_hidden: int, teacher_layers: int, teacher_steps: int) -> dict[str, Path]:
    """Tokenizer, a teacher trained on the tickets, an untrained small student, and the data file."""
    from tiny_models import _config, _train_briefly, support_tickets, train_tokenizer
    from transformers import AutoModelForCausalLM

    paths = {"teacher": root / "teacher", "student": root / "student", "data": root / "tickets.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = support_tickets(600, seed=0)
    chats = [
        f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n{r['response']}<|im_end|>\n" for r in rows
    ]
    tok = train_tokenizer(chats)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_config("qwen2", len(tok), teacher_hidden, teacher_layers, tok))
    _train_briefly(teacher, tok, chats, teacher_steps, 0)
    student = AutoModelForCausalLM.from_config(_config("qwen2", len(tok), 64, 2, tok))
    for name, model in (("teacher", teacher), ("student", student)):
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    paths["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def recipe(paths: dict[str, Path], runs: Path, name: str, steps: int, **distill) -> dict:
    return {
        "name": name,
        "task": "causal-lm",
        "teacher": {"path": str(paths["teacher"])},
        "student": {"path": str(paths["student"])},
        "data": {"path": str(paths["data"]), "prompt_field": "prompt", "response_field": "response", "heldout": 32},
        "distill": {
            "steps": steps,
            "lr": 0.003,
            "batch_size": 8,
            "save_steps": 10_000,
            "max_seq_len": 128,
            "device": "cpu",
        }
        | distill,
        "curriculum": {"order": "random"},
        "export": {"precisions": ["fp32"]},
        "runs_dir": str(runs),
    }


def measured(cmd: list[str]) -> dict:
    """Run one process; its wall time and its own peak RSS (VmHWM of its address space, polled until it exits).

    Not ru_maxrss: Linux carries a forked child's high-water mark over from this (large) parent process.
    """
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        log.seek(0)
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024}


def new_run(rec: dict, folder: Path) -> Path:
    from minnow.core.recipe import load_recipe
    from minnow.core.rundir import RunDir

    path = folder / f"{rec['name']}.yaml"
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    return RunDir.create(load_recipe(path)).path


def arm(rec: dict, folder: Path, cached: bool) -> dict:
    run = new_run(rec, folder)
    result = {}
    if cached:
        cache = measured(
            [sys.executable, "-c", TRAIN_ONE.replace("pipeline.distill", "pipeline.teacher_cache"), str(run)]
        )
        result["cache_build"] = {k: cache[k] for k in ("seconds", "peak_rss_mb")}
    train = measured([sys.executable, "-c", TRAIN_ONE, str(run)])
    report = json.loads((run / "report.json").read_text())["distill"]
    return result | {
        "run": str(run),
        "process_seconds": train["seconds"],
        "peak_rss_mb": train["peak_rss_mb"],
        "train_seconds": report["train_seconds"],
        "steps": report["steps"],
    }


def trained_tokens(rec: dict, steps: int) -> int:
    """Input tokens the Trainer feeds in ``steps`` steps (random order is a seeded shuffle of the same rows)."""
    from minnow.core.recipe import Recipe
    from minnow.distill.causal_lm import prepare

    p = prepare(Recipe.model_validate(rec))
    lengths = [len(r["input_ids"]) for r in p.train_rows]
    n = steps * rec["distill"]["batch_size"]
    return sum(lengths[i % len(lengths)] for i in range(n))


def heldout_kl(rec: dict, student_dir: Path) -> dict:
    """Full-vocabulary KL(teacher‖student), NLL and top-1 agreement on the held-out rows, with the real teacher."""
    from minnow.core.recipe import Recipe
    from minnow.distill.causal_lm import load_causal_lm, prepare
    from minnow.distill.evaluate import evaluate_causal

    r = Recipe.model_validate(rec)
    p = prepare(r)
    cpu = torch.device("cpu")
    teacher = load_causal_lm(r.teacher, cpu).eval()
    student = load_causal_lm(r.student.model_copy(update={"path": str(student_dir)}), cpu)
    return evaluate_causal(student, teacher, p.eval_rows, p.collate, 16, cpu)["student"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/engine-kd"))
    ap.add_argument("--teacher-hidden", type=int, default=768)
    ap.add_argument("--teacher-layers", type=int, default=8)
    ap.add_argument("--teacher-steps", type=int, default=60)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    paths = build_models(args.workdir / "models", args.teacher_hidden, args.teacher_layers, args.teacher_steps)
    runs = args.workdir / "runs"
    recipes = {
        "online": recipe(paths, runs, "online", args.steps),
        "cached": recipe(paths, runs, "cached", args.steps, teacher_cache=True, cache_top_k=64),
        "sft": recipe(paths, runs, "sft", args.steps, ce_weight=1.0),
    }
    results = {name: arm(rec, args.workdir, cached=name == "cached") for name, rec in recipes.items()}
    tokens = trained_tokens(recipes["online"], args.steps)
    for name, r in results.items():
        r["tokens"] = tokens
        r["tokens_per_s"] = tokens / r["train_seconds"]
        r["heldout"] = heldout_kl(recipes[name], Path(r["run"]) / "student")
    on, ca, sft = results["online"], results["cached"], results["sft"]
    summary = {
        "cached_vs_online_tokens_per_s": ca["tokens_per_s"] / on["tokens_per_s"],
        "cached_vs_online_peak_rss": ca["peak_rss_mb"] / on["peak_rss_mb"],
        "cached_vs_online_kl_change": ca["heldout"]["kl_to_teacher"] / on["heldout"]["kl_to_teacher"] - 1,
        "kd_vs_sft_kl_reduction": 1 - on["heldout"]["kl_to_teacher"] / sft["heldout"]["kl_to_teacher"],
    }
    params = {
        name: sum(t.numel() for t in load_file(str(paths[name] / "model.safetensors")).values())
        for name in ("teacher", "student")
    }
    out = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "parameters": params,
        "arms": results,
        "summary": summary,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_kd.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
