"""What int4 costs on real weights: SmolLM2-135M-Instruct (the bundled recipe's teacher) exported by Minnow's own
export code at fp32 and at int4 with an 8- or 4-bit lm_head and several block sizes, plus one deliberately broken
int4 folder (the shared embedding lookup reading its neighbouring row's scales: an off-by-one lm_head repair).

Quality, at 1 thread: each folder against the PyTorch fp32 model through the export gate's own measurement
(:func:`minnow.export.gate.measure`: top-1 agreement, KL(PyTorch‖ONNX), perplexity change at every next-token
position) on two held-out sets — the recipe's held-out support tickets, tokenized exactly as the export gate reads
them, and the teacher's greedy answers to held-back general instructions (``heldout_general.jsonl``) — and whether
it passes the default int4 gate. Speed, at 2 threads, in this one process: greedy decode of the same prompt by the
PyTorch fp32 teacher and by every folder, in alternating rounds; time to first token and decode tokens/s.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/int4.py [--work DIR] [--rounds 3]

Writes benchmarks/results/real_llm_int4.json and the table of real_llm_int4.md (its reading is written by hand).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.core.measures import milliseconds, size_on_disk
from minnow.core.recipe import Gate, load_recipe
from minnow.distill.causal_lm import tokenize
from minnow.distill.gguf import with_gguf_folders
from minnow.export import gate as quality_gate
from minnow.export.causal_lm import CausalExport, check_architecture, encode_prompt
from minnow.export.genai import greedy_generator, load_model
from minnow.export.generate import torch_greedy

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "smollm2-135m-offline.yaml"
GENERAL = Path(__file__).resolve().parent / "heldout_general.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
TEACHER_TORCH = "teacher PyTorch fp32"
DEFAULT = "int4, 8-bit head, block 32 (default)"
BROKEN = "broken: default with off-by-one embedding scales"
RATIOS = {"x_teacher_pytorch": TEACHER_TORCH, "x_teacher_int4": DEFAULT}


@dataclass(frozen=True)
class Setting:
    precision: str
    lm_head: str = "int8"
    block_size: int = 32


SETTINGS = {
    "fp32": Setting("fp32"),
    "int8": Setting("int8"),
    DEFAULT: Setting("int4"),
    "int4, 8-bit head, block 16": Setting("int4", block_size=16),
    "int4, 8-bit head, block 64": Setting("int4", block_size=64),
    "int4, 8-bit head, block 128": Setting("int4", block_size=128),
    "int4, 4-bit head, block 32": Setting("int4", lm_head="int4"),
    "int4, 4-bit head, block 128": Setting("int4", lm_head="int4", block_size=128),
}


def export(teacher: Path, folder: Path, setting: Setting) -> float | None:
    """Seconds to write ``folder`` through Minnow's export (builder + tied-head repair); None when reused."""
    if (folder / "model.onnx").is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    task = CausalExport(
        teacher,
        check_architecture(teacher),
        scratch=folder.parent,
        parity_prompts=[],
        max_new_tokens=1,
        gate=Gate(),
        gate_sequences=(),
        int4_lm_head=setting.lm_head,
        max_length=None,
        int4_block_size=setting.block_size,
    )
    started = time.perf_counter()
    task.write(setting.precision, folder)
    return time.perf_counter() - started


def break_embedding_scales(source: Path, folder: Path) -> None:
    """A copy of ``source`` whose shared-table embedding lookup reads each row with the next row's scales."""
    if (folder / "model.onnx").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.name != "model.onnx":
            shutil.copyfile(file, folder / file.name)  # onnxruntime refuses external data outside the model's folder
    model = onnx.load(source / "model.onnx", load_external_data=False)
    (lookup,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    (table,) = [t for t in model.graph.initializer if t.name == lookup.input[2]]
    scales = numpy_helper.to_array(table, base_dir=str(source))
    model.graph.initializer.append(numpy_helper.from_array(np.roll(scales, 1, axis=0), "off_by_one_scales"))
    lookup.input[2] = "off_by_one_scales"
    onnx.save(model, folder / "model.onnx")


def general_sequences(tokenizer, max_len: int) -> list[list[int]]:
    rows = [json.loads(line) for line in GENERAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [tokenize({"id": str(i), **row}, tokenizer, True, max_len)["input_ids"] for i, row in enumerate(rows)]


def gate_verdict(figures: dict, gate: Gate, precision: str) -> str:
    try:
        quality_gate.check(figures, gate, precision)
    except MinnowError as e:
        return "fails: " + str(e).split("quality gate: ")[1].split(" (")[0]
    return "passes"


def onnx_greedy(folder: Path, prompt_ids: list[int], new_tokens: int, threads: int) -> Iterator[int]:
    """onnxruntime-genai greedy decode of exactly ``new_tokens`` (no early stop), the prompt read on the first step."""
    generator = greedy_generator(load_model(folder, threads), len(prompt_ids) + new_tokens, fixed_length=True)
    generator.append_tokens(prompt_ids)
    while not generator.is_done():
        generator.generate_next_token()
        yield int(generator.get_next_tokens()[0])


def timed(tokens: Iterator[int]) -> tuple[float, float]:
    """Time to first token (ms, prompt included) and decode tokens/s after it."""
    started = time.perf_counter()
    next(tokens)
    first = time.perf_counter()
    decoded = sum(1 for _ in tokens)
    return milliseconds(first - started), decoded / (time.perf_counter() - first)


def speed(
    models: dict[str, torch.nn.Module],
    folders: dict[str, Path],
    prompt_ids: list[int],
    new_tokens: int,
    rounds: int,
    threads: int,
) -> dict:
    """Each PyTorch model's and ONNX folder's TTFT and decode tokens/s per round, in this process at ``threads``."""
    torch.set_num_threads(threads)
    runs = {name: lambda m=model: torch_greedy(m, prompt_ids, new_tokens, set()) for name, model in models.items()}
    runs |= {name: lambda f=folder: onnx_greedy(f, prompt_ids, new_tokens, threads) for name, folder in folders.items()}
    for run in runs.values():
        timed(run())  # warm-up (and the ONNX models' load), untimed
    rows: dict[str, dict[str, list[float]]] = {name: {"ttft_ms": [], "tokens_per_s": []} for name in runs}
    for round_ in range(rounds):
        for name, run in runs.items():
            ttft, rate = timed(run())
            rows[name]["ttft_ms"].append(round(ttft, 1))
            rows[name]["tokens_per_s"].append(round(rate, 2))
            print(f"{threads} threads, round {round_ + 1}: {name}: {rate:.1f} tok/s, TTFT {ttft:.0f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/minnow-int4"), help="Exports (reused if present).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="Speed: thread counts, the first tabled.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    recipe = with_gguf_folders(load_recipe(RECIPE), RECIPE)
    teacher_dir = Path(recipe.teacher.path)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    sets = {
        "support": quality_gate.heldout_sequences(recipe, tokenizer, recipe.export.gate.tokens),
        "general": general_sequences(tokenizer, recipe.distill.max_seq_len),
    }
    folders = {name: args.work / name.split(" (")[0].replace(", ", "-").replace(" ", "") for name in SETTINGS}
    variants: dict[str, dict] = {}
    for name, setting in SETTINGS.items():
        seconds = export(teacher_dir, folders[name], setting)
        variants[name] = {"setting": setting.__dict__, "export_s": seconds and round(seconds, 1)}
        print(f"exported {name}" + (f" in {seconds:.0f} s" if seconds else " (reused)"), flush=True)
    folders[BROKEN] = args.work / "broken"
    break_embedding_scales(folders[DEFAULT], folders[BROKEN])
    variants[BROKEN] = {"setting": SETTINGS[DEFAULT].__dict__ | {"embedding_scales": "rolled by one row"}}
    gate = Gate()
    for name, row in variants.items():
        row["size_bytes"] = size_on_disk(folders[name])
        for set_name, sequences in sets.items():
            row[set_name] = quality_gate.measure(teacher, folders[name], sequences, threads=1)
        row["default_gate"] = gate_verdict(row["support"], gate, SETTINGS.get(name, SETTINGS[DEFAULT]).precision)
        print(name, {k: round(row["support"][k], 4) for k in ("top1_agreement", "kl", "perplexity_increase")})
    prompt = json.loads(GENERAL.read_text(encoding="utf-8").splitlines()[0])["prompt"]
    prompt_ids = encode_prompt(tokenizer, prompt)
    timed_folders = {n: f for n, f in folders.items() if n != BROKEN}
    timings = {
        t: speed({TEACHER_TORCH: teacher}, timed_folders, prompt_ids, args.new_tokens, args.rounds, t)
        for t in args.threads
    }
    results = {
        "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_llm/int4.py "
        + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_note(load_before),
        "teacher": f"{recipe.teacher.path} (SmolLM2-135M-Instruct, from {RECIPE.name})",
        "heldout": {name: {"sequences": len(s), "tokens": sum(len(x) - 1 for x in s)} for name, s in sets.items()},
        "gate": gate.model_dump(),
        "speed": {"prompt": prompt, "prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens}
        | {"rounds": args.rounds, "by_threads": {str(t): summarise(rows, RATIOS) for t, rows in timings.items()}},
        "variants": variants,
    }
    (RESULTS / "real_llm_int4.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "real_llm_int4.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


def machine_note(load_before: tuple[float, float, float]) -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} CPU cores ({model}), torch {torch.__version__}; 1-minute load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )


def summarise(timings: dict[str, dict[str, list[float]]], ratios: dict[str, str]) -> dict:
    """Medians, and for each ``ratios`` entry (key → reference variant) the median of per-round tok/s ratios."""
    return {
        name: row
        | {
            "median_tokens_per_s": statistics.median(row["tokens_per_s"]),
            "median_ttft_ms": statistics.median(row["ttft_ms"]),
        }
        | {
            key: round(statistics.median(r / t for r, t in zip(row["tokens_per_s"], timings[ref]["tokens_per_s"])), 2)
            for key, ref in ratios.items()
        }
        for name, row in timings.items()
    }


def markdown(results: dict) -> str:
    held, speed_setup = results["heldout"], results["speed"]
    lines = [
        "# What int4 costs on real weights: SmolLM2-135M-Instruct exported at fp32, int8 and int4 settings",
        "",
        f"`{results['command']}` — {results['date']}. Machine: {results['machine']}.",
        "",
        f"Teacher: {results['teacher']}. Each folder is measured against the PyTorch fp32 model by the export gate's "
        "code (teacher forcing, every next-token position, onnxruntime at 1 thread) on the recipe's held-out "
        f"support tickets as the gate reads them ({held['support']['sequences']} sequences, "
        f"{held['support']['tokens']} positions) and on the teacher's greedy answers to held-back general "
        f"instructions ({held['general']['sequences']} sequences, {held['general']['tokens']} positions). "
        f"Gate: each precision's defaults, on the support set (int4: {threshold_text(results['gate']['int4'])}).",
        "",
        "| variant | size | support top-1 | support KL | support ppl | general top-1 | general KL | general ppl "
        "| default gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["variants"].items():
        quality = [
            f"{row[s]['top1_agreement']:.3f} | {row[s]['kl']:.4f} | {row[s]['perplexity_increase']:+.1%}"
            for s in ("support", "general")
        ]
        lines.append(f"| {name} | {row['size_bytes'] / 1e6:.1f} MB | {' | '.join(quality)} | {row['default_gate']} |")
    lines += [
        "",
        f"Speed: greedy decode of one general prompt ({speed_setup['prompt_tokens']} tokens, chat template) for "
        f"{speed_setup['new_tokens']} tokens, {speed_setup['rounds']} rounds each running every variant in turn, in "
        "one process, same thread count for PyTorch (torch.set_num_threads) and onnxruntime (intra_op_num_threads); "
        "decode tok/s counts the tokens after the first. Medians, and medians of per-round ratios.",
        "",
        "| threads | variant | decode tok/s | × teacher PyTorch | × teacher int4 (default) | TTFT ms | per-round tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads, rows in speed_setup["by_threads"].items():
        for name, row in rows.items():
            lines.append(
                f"| {threads} | {name} | {row['median_tokens_per_s']:.1f} | {row['x_teacher_pytorch']:.2f}x | "
                f"{row['x_teacher_int4']:.2f}x | {row['median_ttft_ms']:.0f} | "
                f"{', '.join(f'{r:.1f}' for r in row['tokens_per_s'])} |"
            )
    return "\n".join(lines) + "\n"


def threshold_text(gate: dict) -> str:
    return (
        f"top-1 ≥ {gate['min_top1_agreement']:g}, KL ≤ {gate['max_kl']:g}, "
        f"perplexity ≤ +{gate['max_perplexity_increase']:.0%}"
    )


if __name__ == "__main__":
    main()
