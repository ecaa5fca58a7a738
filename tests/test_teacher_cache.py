"""Cached teacher logits: what is stored, training and evaluation without the teacher, stale-cache detection."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import run_minnow, tiny_recipe, write_recipe

from minnow.distill.losses import IGNORE_INDEX
from minnow.distill.teacher_cache import LSE_1, LSE_T, NLL, TAIL_1, TAIL_T, cache_rows


def test_cache_rows_hold_top_k_partition_tail_and_nll():
    torch.manual_seed(0)
    logits = torch.randn(5, 12) * 3
    targets = torch.tensor([IGNORE_INDEX, 3, IGNORE_INDEX, 7, 9])
    ids, top, stats = cache_rows(logits, targets, k=4, vocab=10, temperature=2.0)
    assert ids.shape == top.shape == (3, 4) and stats.shape == (3, 5)
    for row, pos in enumerate([1, 3, 4]):
        z = logits[pos, :10].double()  # the vocabulary cut drops table padding beyond the tokenizer
        order = z.argsort(descending=True)[:4]
        assert ids[row].tolist() == order.tolist() and torch.allclose(top[row].double(), z[order], atol=1e-6)
        for t, lse_col, tail_col in [(1.0, LSE_1, TAIL_1), (2.0, LSE_T, TAIL_T)]:
            p = torch.softmax(z / t, -1)
            assert math.isclose(stats[row, lse_col].item(), torch.logsumexp(z / t, -1).item(), rel_tol=1e-5)
            rest = 1 - p[order].sum().item()
            assert math.isclose(math.exp(stats[row, tail_col].item()), rest, rel_tol=1e-4)
        expected_nll = -torch.log_softmax(z, -1)[targets[pos]].item()
        assert math.isclose(stats[row, NLL].item(), expected_nll, rel_tol=1e-5)
    _, _, full = cache_rows(logits, targets, k=12, vocab=12, temperature=2.0)
    assert torch.isinf(full[:, TAIL_1]).all() and (full[:, TAIL_1] < 0).all()  # nothing left outside the top k


def test_curriculum_statistics_from_the_cache_match_the_full_logits():
    from minnow.distill.scorers import token_statistics
    from minnow.distill.teacher_cache import cached_statistics

    torch.manual_seed(1)
    logits = torch.randn(1, 9, 12) * 2
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 1, 0, 7, 7, 2, 11]])
    full = {k: v.item() for k, v in token_statistics(logits, labels).items()}
    exact = cached_statistics(*cache_rows(logits[0, :-1], labels[0, 1:], k=12, vocab=12, temperature=2.0)[1:])
    for key in ("nll", "entropy", "confidence"):
        assert math.isclose(exact[key], full[key], rel_tol=1e-5), key
    top4 = cached_statistics(*cache_rows(logits[0, :-1], labels[0, 1:], k=4, vocab=12, temperature=2.0)[1:])
    assert math.isclose(top4["nll"], full["nll"], rel_tol=1e-5)
    assert math.isclose(top4["confidence"], full["confidence"], rel_tol=1e-5)
    assert full["entropy"] * 0.5 < top4["entropy"] <= full["entropy"] + 1e-6


@pytest.fixture(scope="module")
def cached_run(tiny_pair, tmp_path_factory):
    """`minnow teacher-cache` on a tiny recipe whose data is a private copy (the stale test edits it)."""
    root = tmp_path_factory.mktemp("cache")
    data = root / "tickets.jsonl"
    shutil.copy(tiny_pair["data"], data)
    recipe = tiny_recipe(tiny_pair, root / "runs")
    recipe["data"]["path"] = str(data)
    recipe["distill"] |= {"steps": 30, "save_steps": 100, "teacher_cache": True, "cache_top_k": 16}
    recipe["export"] = {"precisions": ["fp32"]}
    result = run_minnow("teacher-cache", str(write_recipe(root / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "runs").iterdir()
    return run_dir, data


def test_teacher_cache_command_writes_shards_index_and_provenance(cached_run):
    run_dir, _ = cached_run
    cache = run_dir / "teacher_cache"
    prov = json.loads((cache / "provenance.json").read_text())
    index = json.loads((cache / "index.json").read_text())
    assert prov["complete"] and prov["top_k"] == 16 and prov["temperature"] == 2.0 and prov["max_seq_len"] == 128
    assert set(prov["teacher_weights"]) == {"model.safetensors"} and len(prov["hash"]) == 64
    assert len(index) == prov["data"]["examples"] and all((cache / shard).is_file() for shard in set(index.values()))
    assert json.loads((run_dir / "report.json").read_text())["teacher_cache"]["hash"] == prov["hash"]
    assert not (run_dir / "student").exists()


def test_training_from_the_cache_never_loads_the_teacher(cached_run, monkeypatch):
    import minnow.distill.causal_lm as flow
    from minnow import pipeline
    from minnow.core.rundir import RunDir

    run_dir, _ = cached_run
    run = RunDir.open(run_dir)
    real_load = flow.load_causal_lm

    def load(spec, device):
        assert spec.path != run.recipe.teacher.path, "the teacher was loaded although its logits are cached"
        return real_load(spec, device)

    monkeypatch.setattr(flow, "load_causal_lm", load)
    pipeline.distill(run)
    d = json.loads((run_dir / "report.json").read_text())["distill"]
    assert d["teacher_cache"]["built_seconds"] is None  # reused, not rebuilt
    before, after = d["eval_before"]["student"], d["eval"]["student"]
    assert after["kl_to_teacher"] < 0.6 * before["kl_to_teacher"]
    assert after["top1_agreement"] > before["top1_agreement"] + 0.2
    assert d["eval"]["teacher"]["perplexity"] < after["perplexity"]
    assert d["parameters"]["teacher"] > d["parameters"]["student"] and d["steps"] == 30
    scores = [json.loads(line)["score"] for line in (run_dir / "data/quality.jsonl").read_text().splitlines()]
    assert len(scores) == d["examples"]["train"] and all(s > 0 for s in scores)
    scorers = d["curriculum"]["scorers"]
    assert scorers["teacher cache"]["kind"] == "free" and "teacher forward" not in scorers


def test_stale_cache_is_named_then_rebuilt_when_asked(cached_run):
    from minnow import pipeline
    from minnow.core.rundir import RunDir

    run_dir, data = cached_run
    lines = data.read_text().splitlines(keepends=True)
    data.write_text(
        "".join(lines + [json.dumps({"prompt": "My lamp flickers.", "response": "Change the bulb."}) + "\n"])
    )
    shutil.rmtree(run_dir / "student")
    result = run_minnow("run", "--resume", str(run_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    before = json.loads((run_dir / "teacher_cache/provenance.json").read_text())["data"]["examples"]
    assert "stale" in result.stderr and f"data ({before} → {before + 1} examples" in result.stderr, result.stderr
    assert "rebuild_stale_cache" in result.stderr and (run_dir / "teacher_cache/index.json").is_file()
    resolved = run_dir / "recipe.resolved.yaml"
    resolved.write_text(resolved.read_text().replace("rebuild_stale_cache: false", "rebuild_stale_cache: true"))
    pipeline.distill(RunDir.open(run_dir))
    prov = json.loads((run_dir / "teacher_cache/provenance.json").read_text())
    assert prov["complete"] and prov["data"]["examples"] == before + 1
    assert json.loads((run_dir / "report.json").read_text())["distill"]["teacher_cache"]["built_seconds"] > 0
