"""Per-artefact figures in the columns ExecuTorch publishes: size on disk, load time, time to first token for 64-
and 512-token prompts, decode tokens/s at 1 and 2 threads, peak resident memory.

Each measurement runs in its own process (``python -m export.figures FOLDER THREADS``), so peak RSS belongs to one
artefact, and the thread count is set through onnxruntime-genai's config overlay
(``session_options.intra_op_num_threads``). Prompts longer than the folder's context are cut to fit and the
length used is reported.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from minnow.core.measures import milliseconds, size_on_disk, tokens_per_s

PROMPT_LENGTHS = (64, 512)
DECODE_TOKENS = 32


def _prompt(length: int, vocab: int) -> list[int]:
    return [(7 * i + 3) % vocab for i in range(length)]


def measure_here(folder: Path, threads: int) -> dict:
    """The figures for ``folder`` measured in this process (call through :func:`measure` for a clean one)."""
    from .genai import greedy_generator, load_model

    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    context, vocab = config["model"]["context_length"], config["model"]["vocab_size"]
    start = time.perf_counter()
    model = load_model(folder, threads)
    figures: dict = {"threads": threads, "load_s": time.perf_counter() - start}
    greedy_generator(model, 10, fixed_length=True).append_tokens(_prompt(8, vocab))  # warm-up
    for length in PROMPT_LENGTHS:
        prompt = _prompt(min(length, context - DECODE_TOKENS - 1), vocab)
        generator = greedy_generator(model, len(prompt) + 1, fixed_length=True)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        figures[f"ttft_{length}_ms"] = milliseconds(time.perf_counter() - start)
        figures[f"prompt_{length}_tokens"] = len(prompt)
    prompt = _prompt(min(64, context - DECODE_TOKENS - 1), vocab)
    generator = greedy_generator(model, len(prompt) + DECODE_TOKENS, fixed_length=True)
    generator.append_tokens(prompt)
    generator.generate_next_token()
    start = time.perf_counter()
    for _ in range(DECODE_TOKENS - 1):
        generator.generate_next_token()
    figures["decode_tokens_per_s"] = tokens_per_s(DECODE_TOKENS - 1, time.perf_counter() - start)
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark. Linux's VmHWM belongs to the process image; ru_maxrss would
    carry over the parent's peak across fork and exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: Path, threads: int) -> dict:
    """:func:`measure_here` in a fresh Python process."""
    run = subprocess.run(
        [sys.executable, "-m", "minnow.export.figures", str(Path(folder).resolve()), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def artefact_figures(folder: Path) -> dict:
    """Every column for one exported folder: 1-thread run for load, TTFT and RSS; decode speed at 1 and 2 threads."""
    one, two = measure(folder, 1), measure(folder, 2)
    return {
        "size_bytes": size_on_disk(folder),
        "load_s": round(one["load_s"], 3),
        **{f"ttft_{n}_ms": round(one[f"ttft_{n}_ms"], 2) for n in PROMPT_LENGTHS},
        **{f"prompt_{n}_tokens": one[f"prompt_{n}_tokens"] for n in PROMPT_LENGTHS},
        "decode_tokens_per_s_1_thread": round(one["decode_tokens_per_s"], 2),
        "decode_tokens_per_s_2_threads": round(two["decode_tokens_per_s"], 2),
        "peak_rss_mb": round(one["peak_rss_mb"], 1),
    }


if __name__ == "__main__":
    print(json.dumps(measure_here(Path(sys.argv[1]), int(sys.argv[2]))))
