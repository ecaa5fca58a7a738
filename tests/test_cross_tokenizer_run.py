"""Cross-tokenizer runs end to end on tiny models: a student whose tokenizer differs from the teacher's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import minnow_here, run_minnow, tiny_recipe, write_recipe
from safetensors import safe_open
from tiny_models import _config, support_tickets, train_tokenizer
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def other_student(tmp_path_factory) -> Path:
    """An untrained tiny student with its own, smaller byte-level vocabulary (300 tokens, the teacher has 400)."""
    folder = tmp_path_factory.mktemp("other") / "student"
    tok = train_tokenizer([f"{r['prompt']}\n{r['response']}" for r in support_tickets(300, seed=5)], vocab_size=300)
    model = AutoModelForCausalLM.from_config(_config("qwen2", len(tok), 64, 2, tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _recipe(tiny_pair, other_student, root: Path, **distill) -> Path:
    recipe = tiny_recipe(tiny_pair, root / "runs", student={"path": str(other_student)})
    recipe["distill"] |= {"steps": 30, "save_steps": 100, "teacher_cache": True, "cache_top_k": 16} | distill
    recipe["export"] = {"precisions": ["fp32"]}
    return write_recipe(root / "r.yaml", recipe)


def test_validate_names_the_method_and_why(tiny_pair, other_student, tmp_path):
    result = minnow_here("validate", str(_recipe(tiny_pair, other_student, tmp_path)))
    assert result.returncode == 0, result.stderr[-2000:]
    out = " ".join((result.stdout + result.stderr).split())
    assert "cross-tokenizer distillation with" in out and "same text" in out
    off = minnow_here("validate", str(_recipe(tiny_pair, other_student, tmp_path, cross_tokenizer="off")))
    assert off.returncode == 2 and "distill.cross_tokenizer is off" in " ".join(off.stderr.split())
    online = minnow_here("validate", str(_recipe(tiny_pair, other_student, tmp_path, teacher_cache=False)))
    assert online.returncode == 2 and "distill.teacher_cache: true" in " ".join(online.stderr.split())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uld", "hybrid"])
def test_cross_tokenizer_run_trains_from_the_cache_and_reports_alignment(tiny_pair, other_student, tmp_path, method):
    from minnow import pipeline
    from minnow.core.rundir import RunDir

    recipe = _recipe(tiny_pair, other_student, tmp_path, cross_tokenizer=method, lr=0.003, temperature=1.0)
    result = run_minnow("teacher-cache", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    prov = json.loads((run_dir / "teacher_cache/provenance.json").read_text())
    assert prov["complete"] and len(prov["student_tokenizer"]) == 64 and prov["student_tokenizer"] != prov["tokenizer"]
    shard = next((run_dir / "teacher_cache").glob("shard-*.safetensors"))
    with safe_open(shard, framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("/offsets"))
        offsets, ids = f.get_tensor(key), f.get_tensor(key.replace("/offsets", "/ids"))
    assert offsets.shape == (ids.shape[0], 2)

    pipeline.distill(RunDir.open(run_dir))
    d = json.loads((run_dir / "report.json").read_text())["distill"]
    cross = d["tokenizer"]["cross_tokenizer"]
    assert cross["method"] == method and d["loss"]["kd"] == method
    alignment = cross["alignment"]
    assert alignment["exact"] + alignment["merged"] + alignment["unaligned"] == pytest.approx(1.0)
    assert (
        alignment["exact"] > 0.3 and alignment["unaligned"] < 0.05
    )  # the student's smaller vocabulary splits words more
    before, after = d["eval_before"]["student"], d["eval"]["student"]
    assert after["loss"] < before["loss"] and after["uld_to_teacher"] < before["uld_to_teacher"]
    assert after["top1_agreement"] > before["top1_agreement"]
    assert d["eval"]["teacher"]["loss_per_char"] < after["loss_per_char"]
    assert d["steps"] == 30 and (run_dir / "student/model.safetensors").is_file()
