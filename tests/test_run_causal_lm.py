"""`minnow run` end to end on the tiny causal-LM recipe: run directory, learning, export parity, report."""

import json

import pytest
import yaml
from conftest import run_minnow, tiny_recipe, write_recipe
from safetensors import safe_open


def test_run_directory_holds_every_stage_output(tiny_run):
    for path in [
        "recipe.resolved.yaml",
        "report.json",
        "report.md",
        "data/quality.jsonl",
        "student/model.safetensors",
        "student/tokenizer.json",
        "onnx/fp32/model.onnx",
        "onnx/fp32/genai_config.json",
        "onnx/int4/model.onnx",
    ]:
        assert (tiny_run / path).is_file(), path
    resolved = yaml.safe_load((tiny_run / "recipe.resolved.yaml").read_text())
    assert resolved["distill"]["temperature"] == 2.0 and resolved["export"]["precisions"] == ["fp32", "int4"]
    assert not list(tiny_run.rglob("*.tmp")), "no temporary files left behind"


def test_student_learned_the_teacher(tiny_run):
    d = json.loads((tiny_run / "report.json").read_text())["distill"]
    before, after = d["eval_before"]["student"], d["eval"]["student"]
    assert after["kl_to_teacher"] < 0.6 * before["kl_to_teacher"]
    assert after["top1_agreement"] > before["top1_agreement"] + 0.2
    assert d["eval"]["teacher"]["perplexity"] < after["perplexity"]
    assert d["steps"] == 40 and d["parameters"]["student"] < d["parameters"]["teacher"]


def test_training_order_is_teacher_scored_best_first(tiny_run):
    scores = {r["id"]: r["score"] for r in map(json.loads, (tiny_run / "data/quality.jsonl").read_text().splitlines())}
    first = json.loads((tiny_run / "report.json").read_text())["distill"]["curriculum"]["first_ids"]
    assert [scores[i] for i in first] == sorted(scores.values())[: len(first)]


def test_export_sizes_and_parity_reported(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    export = report["export"]
    fp32 = export["fp32"]["parity"]
    assert fp32["exact_matches"] == fp32["prompts"] >= 1 and fp32["token_agreement"] == 1.0
    assert 0 < export["int4"]["size_bytes"] < export["fp32"]["size_bytes"]
    md = (tiny_run / "report.md").read_text()
    for needle in ["student after", "KL(teacher‖model)", "int4", "fp32", "MB"]:
        assert needle in md


@pytest.mark.slow
def test_side_by_side_scores_each_variants_answers_against_the_teachers(tiny_run):
    rows = json.loads((tiny_run / "report.json").read_text())["variants"]["variants"]
    assert rows["teacher (PyTorch)"]["rouge_l_vs_teacher"] == 1.0
    # The fp32 export reproduces the PyTorch student's greedy text (parity gate), so their scores are equal.
    assert rows["student ONNX fp32"]["rouge_l_vs_teacher"] == rows["student (PyTorch)"]["rouge_l_vs_teacher"]
    assert all(0 <= row["rouge_l_vs_teacher"] <= 1 and 0 <= row["seq_rep_3"] < 1 for row in rows.values())
    assert rows["student ONNX fp32"]["seq_rep_3"] == rows["student (PyTorch)"]["seq_rep_3"]
    assert "ROUGE-L vs teacher" in (tiny_run / "report.md").read_text()


def test_lora_student_is_merged_into_plain_weights(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs", lora={"r": 8, "alpha": 16, "dropout": 0.0})
    recipe["distill"] |= {"steps": 6, "save_steps": 100}
    result = run_minnow("distill", str(write_recipe(tmp_path / "lora.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-2000:]
    student = next((tmp_path / "runs").iterdir()) / "student"
    assert not (student / "adapter_config.json").exists()
    with safe_open(student / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k for k in keys)
    assert json.loads((student / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]


def test_resume_skips_a_checkpoint_killed_while_being_written(tmp_path):
    from minnow.distill.training import last_complete_checkpoint

    for step, state in ((5, "{}"), (10, '{"global_step": 10}'), (15, '{"global_st'), (20, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert last_complete_checkpoint(tmp_path / "checkpoint-20") is None
