"""The export quality gate: measured in onnxruntime-genai against PyTorch, passing on the trained tiny student and
failing loudly on a student whose weights int4 cannot represent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_minnow
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from minnow.core.errors import MinnowError
from minnow.core.recipe import Gate, PrecisionGate
from minnow.core.rundir import RunDir
from minnow.export import gate
from minnow.export.causal_lm import export_causal_lm

PROMPTS = ["My printer will not charge. What should I do?"]


def ticket_sequences(student: Path, data: Path) -> list[list[int]]:
    """Every distinct ticket of the tiny data as a chat, tokenized by the student's tokenizer (> 2k tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(student)
    rows = {line: json.loads(line) for line in data.read_text().splitlines()}.values()
    chats = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in rows]
    return [list(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in chats]


def test_pure_figures() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    logp = gate.log_softmax(logits)
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0)
    np.testing.assert_allclose(gate.token_kl(logp, logp), 0.0, atol=1e-12)
    uniform = gate.log_softmax(np.zeros((1, 3)))
    expected = float((np.exp(logp[0]) * (logp[0] - uniform[0])).sum())
    assert gate.token_kl(logp[:1], uniform)[0] == pytest.approx(expected) and expected > 0


def test_run_reports_gate_per_precision(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    held = gate.heldout_sequences(
        RunDir.open(tiny_run).recipe, AutoTokenizer.from_pretrained(tiny_run / "student"), 4096
    )
    fp32, int4 = report["export"]["fp32"]["gate"], report["export"]["int4"]["gate"]
    assert fp32["tokens"] == int4["tokens"] == sum(len(s) - 1 for s in held) > 500
    assert fp32["max_abs_logit_diff"] <= 1e-3 and fp32["top1_agreement"] == 1.0
    assert fp32["thresholds"] == {"max_abs_logit_diff": {"max": 1e-3}}
    assert int4["top1_agreement"] >= 0.9 and 0 < int4["kl"] <= 0.1
    assert int4["perplexity_onnx"] == pytest.approx(int4["perplexity_pytorch"] * (1 + int4["perplexity_increase"]))
    assert int4["thresholds"]["top1_agreement"] == {"min": Gate().int4.min_top1_agreement}
    assert "Quality gate" in (tiny_run / "report.md").read_text()


@pytest.fixture(scope="module")
def int8_int4(tiny_run: Path, tiny_pair: dict, tmp_path_factory) -> dict:
    """The trained tiny student exported at int8 and int4 with its gate over > 2k tokens."""
    root = tmp_path_factory.mktemp("gate")
    sequences = ticket_sequences(tiny_run / "student", tiny_pair["data"])
    results = export_causal_lm(
        tiny_run / "student", root / "onnx", ["int8", "int4"], PROMPTS, 8, gate=Gate(), gate_sequences=sequences
    )
    return {"results": results, "onnx": root / "onnx", "sequences": sequences}


def test_int8_and_int4_pass_their_gates_on_2k_tokens(int8_int4: dict) -> None:
    tokens = sum(len(s) - 1 for s in int8_int4["sequences"])
    assert tokens >= 2048
    int8, int4 = int8_int4["results"]["int8"]["gate"], int8_int4["results"]["int4"]["gate"]
    assert int8["tokens"] == int4["tokens"] == tokens
    assert int8["top1_agreement"] >= 0.98 and int8["kl"] <= 0.01
    assert int4["top1_agreement"] >= 0.9 and int4["kl"] <= 0.1
    assert int8["kl"] < int4["kl"]  # 8-bit weights stay closer to PyTorch than 4-bit ones


def test_gate_measures_like_pytorch_on_onnx_logits(int8_int4: dict, tiny_run: Path) -> None:
    """Recompute the int4 figures from raw logits: the gate measures what it says."""
    model = AutoModelForCausalLM.from_pretrained(tiny_run / "student").eval()
    import onnxruntime_genai as og

    onnx_model = og.Model(str(int8_int4["onnx"] / "int4"))
    ids = int8_int4["sequences"][0]
    with torch.inference_mode():
        reference = model(torch.tensor([ids])).logits[0, :-1].numpy()
    got = gate.onnx_logits(onnx_model, ids)[:-1]
    assert got.shape == reference.shape
    one = gate.measure(model, int8_int4["onnx"] / "int4", [ids])
    assert one["tokens"] == len(ids) - 1
    assert one["top1_agreement"] == pytest.approx((got.argmax(-1) == reference.argmax(-1)).mean())
    assert one["max_abs_logit_diff"] == pytest.approx(np.abs(got - reference).max(), rel=1e-5)


def outlier_student(student: Path, out: Path) -> Path:
    """A copy of ``student`` with one weight per 32-block of every MLP down-projection made 100x the largest:
    PyTorch still runs it, but int4's per-block scale then rounds the block's other weights to zero."""
    shutil.copytree(student, out)
    weights = load_file(out / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith("mlp.down_proj.weight"):
            tensor[:, ::32] = 100 * tensor.abs().max()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_int4_gate_fails_on_outlier_weights_and_writes_nothing(tiny_run: Path, tiny_pair: dict, tmp_path: Path) -> None:
    """A recipe's strict int4 gate stops the outlier student (about 0.81 top-1, KL 0.03, perplexity +15%). The
    default gate, set for the int4 loss of a real 135M model (see test_default_gates_follow_the_real_model), lets
    this mild case through."""
    broken = outlier_student(tiny_run / "student", tmp_path / "broken")
    sequences = ticket_sequences(broken, tiny_pair["data"])
    strict = Gate(int4=PrecisionGate(min_top1_agreement=0.9, max_kl=0.1, max_perplexity_increase=0.1))
    with pytest.raises(
        MinnowError, match=r"int4 ONNX export failed its quality gate: top1_agreement 0\.\d+ < threshold 0\.9"
    ):
        export_causal_lm(broken, tmp_path / "onnx", ["int4"], PROMPTS, 8, gate=strict, gate_sequences=sequences)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_default_gates_follow_the_real_model() -> None:
    """The default gates pass every healthy SmolLM2-135M export measured by benchmarks/real_llm/int4.py and stop
    its broken int4 (a wrong lm_head lookup)."""
    results = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "real_llm_int4.json").read_text())
    for name, row in results["variants"].items():
        precision = row["setting"]["precision"]
        for heldout in ("support", "general"):
            if "broken" in name:
                with pytest.raises(MinnowError, match="failed its quality gate"):
                    gate.check(row[heldout], Gate(), precision)
            else:
                gate.check(row[heldout], Gate(), precision)


def test_impossible_threshold_fails_minnow_export(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("onnx", "checkpoints"))
    (run / "report.json").write_text(
        json.dumps({k: v for k, v in json.loads((run / "report.json").read_text()).items() if k != "export"})
    )
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    resolved["export"]["gate"]["int4"]["max_kl"] = 0.0
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved))
    result = run_minnow("export", str(run))
    assert result.returncode == 2
    assert "int4 ONNX export failed its quality gate: kl" in result.stderr and "threshold 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (run / "onnx").iterdir()) == ["fp32"]
    assert "export" not in json.loads((run / "report.json").read_text())


def test_run_reports_figures_per_artefact(tiny_run: Path) -> None:
    export = json.loads((tiny_run / "report.json").read_text())["export"]
    for name in ("fp32", "int4"):
        figures = export[name]["figures"]
        assert figures["size_bytes"] == sum(f.stat().st_size for f in (tiny_run / "onnx" / name).iterdir())
        assert figures["prompt_64_tokens"] == 64 and 64 < figures["prompt_512_tokens"] < 256  # the context is 256
        assert figures["ttft_512_ms"] > 0 and figures["ttft_64_ms"] > 0 and figures["load_s"] > 0
        assert figures["decode_tokens_per_s_1_thread"] > 0 and figures["decode_tokens_per_s_2_threads"] > 0
        assert (
            20 < figures["peak_rss_mb"] < 300
        )  # the folder's own process, not the 600 MB `minnow run` that started it
    assert "Speed and memory" in (tiny_run / "report.md").read_text()
