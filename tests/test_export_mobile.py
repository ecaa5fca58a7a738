"""The phone artefact: the int4 folder as an ORT-format model with a bounded length, accepted by onnxruntime's
mobile-usability checker and generating like the int4 folder it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_recipe

from minnow.core.errors import MinnowError
from minnow.core.recipe import Gate, load_recipe
from minnow.core.rundir import RunDir
from minnow.export.causal_lm import export_causal_lm, stream_generate
from minnow.export.gate import heldout_sequences

PROMPTS = ["My printer will not charge. What should I do?", "My router is very slow. What should I do?"]


@pytest.fixture(scope="module")
def mobile(tiny_run: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mobile")
    from transformers import AutoTokenizer

    sequences = heldout_sequences(
        RunDir.open(tiny_run).recipe, AutoTokenizer.from_pretrained(tiny_run / "student"), 4096
    )
    results = export_causal_lm(
        tiny_run / "student",
        root / "onnx",
        ["int4"],
        PROMPTS,
        12,
        gate=Gate(),
        gate_sequences=sequences,
        targets=["cpu", "mobile"],
        max_length=128,
    )
    return {"results": results, "root": root}


def test_mobile_folder_is_ort_format_with_bounded_length(mobile: dict) -> None:
    folder = mobile["root"] / "mobile"
    names = {p.name for p in folder.iterdir()}
    assert {"model.ort", "model.required_operators.config", "genai_config.json", "tokenizer.json"} <= names
    assert not any(name.startswith("model.onnx") for name in names)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "model.ort"
    assert config["search"]["max_length"] == config["model"]["context_length"] == 128
    operators = (folder / "model.required_operators.config").read_text()
    assert "MatMulNBits" in operators and "GroupQueryAttention" in operators
    cpu = json.loads((mobile["root"] / "onnx" / "int4" / "genai_config.json").read_text())
    assert cpu["search"]["max_length"] == 128  # export.max_length caps the cpu folders too


def test_mobile_artefact_passes_the_checker_and_its_gate(mobile: dict) -> None:
    entry = mobile["results"]["mobile"]
    assert entry["path"] == "mobile" and entry["max_length"] == 128
    usability = entry["usability"]
    assert usability["usable"] is True
    assert usability["verdict"].startswith(("For optimal performance", "As NNAPI or CoreML"))
    assert set(usability["accelerators_recommended"]) >= {"NNAPI", "CoreML NeuralNetwork"}
    assert entry["gate"]["top1_agreement"] >= 0.9
    assert entry["gate"]["thresholds"]["top1_agreement"] == {"min": Gate().int4.min_top1_agreement}


def test_mobile_generates_like_the_int4_folder(mobile: dict) -> None:
    from transformers import AutoTokenizer

    from minnow.export.causal_lm import encode_prompt

    ids = encode_prompt(AutoTokenizer.from_pretrained(mobile["root"] / "mobile"), PROMPTS[0])
    assert list(stream_generate(mobile["root"] / "mobile", ids, 12)) == list(
        stream_generate(mobile["root"] / "onnx" / "int4", ids, 12)
    )
    assert mobile["results"]["mobile"]["parity"] == mobile["results"]["int4"]["parity"]


def test_mobile_needs_int4(tiny_pair: dict, tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["export"] = {"precisions": ["fp32"], "targets": ["cpu", "mobile"]}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    with pytest.raises(MinnowError, match="mobile.*int4"):
        load_recipe(path)
