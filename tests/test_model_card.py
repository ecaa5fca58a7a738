"""The student folder's model card, for both tasks, from a report and a resolved recipe."""

from __future__ import annotations

import yaml

from minnow.core.report_schema import Report
from minnow.report.model_card import model_card

DISTILL = {
    "parameters": {"teacher": 22_700_000, "student": 15_200_000},
    "examples": {"train": 3000},
    "steps": 300,
    "train_seconds": 250.0,
    "device": "cpu",
    "curriculum": {},
    "eval_before": {},
    "eval": {},
    "parity_prompts": [],
}
MEASURED = {"requests": 500, "energy": {"kwh": 1e-5, "seconds": 2.0, "measured": False, "source": "estimated"}}


def recipe(task: str) -> dict:
    return {
        "name": "demo",
        "task": task,
        "teacher": {"path": "org/teacher"},
        "student": {"from_teacher": {"layers": [0, 5]}},
        "data": {"builtin": "python-docstrings"},
    }


def test_embedding_card_has_front_matter_table_loading_and_recipe():
    variants = {
        "threads": 2,
        "batch_size": 16,
        "texts": 500,
        "timed_texts": 256,
        "unseen_texts": 400,
        "variants": {
            "teacher (PyTorch)": {
                "size_bytes": 91_600_000,
                "sentences_per_s": 40.0,
                "speedup_vs_teacher": 1.0,
                "mean_cosine": 1.0,
                "spearman_pairwise": 1.0,
                "top10_overlap": 1.0,
                "unseen": {"spearman_pairwise": 1.0, "top10_overlap": 1.0},
                **MEASURED,
            },
            "student ONNX int8": {
                "size_bytes": 16_500_000,
                "sentences_per_s": 200.0,
                "speedup_vs_teacher": 5.0,
                "mean_cosine": 0.9,
                "spearman_pairwise": 0.95,
                "top10_overlap": 0.8,
                "unseen": {"spearman_pairwise": 0.9, "top10_overlap": 0.7},
                **MEASURED,
            },
        },
    }
    card = model_card(
        Report.model_validate({"distill": DISTILL, "variants": variants}), recipe("embedding"), "runs/demo/student"
    )
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "sentence-transformers" and front["base_model"] == "org/teacher"
    assert "cut from the teacher (layers: [0, 5])" in card and "15.2 M parameters" in card
    assert "| student ONNX int8 | 16.50 MB | 200 | 5 | 0.9 | 0.95 | 0.8 | 0.9 | 0.7 |" in card
    assert 'SentenceTransformer("runs/demo/student")' in card and "onnx/model_quantized.onnx" in card
    assert yaml.safe_load(card.split("```yaml\n")[1].split("```")[0]) == recipe("embedding")


def test_causal_card_before_measurement():
    card = model_card(Report.model_validate({"distill": DISTILL}), recipe("causal-lm"), "student")
    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "text-generation"
    assert 'AutoModelForCausalLM.from_pretrained("student")' in card and "Not measured yet" in card
