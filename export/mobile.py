"""The phone artefact: the int4 onnxruntime-genai folder as an ORT-format model with an explicit ``max_length``.

``onnxruntime.tools.convert_onnx_models_to_ort`` writes ``model.ort`` (optimised for ARM, weights inside, no
external-data file) and ``model.required_operators.config``, the operator list a reduced onnxruntime build takes
(``--include_ops_by_config``). ``genai_config.json`` points at ``model.ort`` and caps the sequence at
``max_length``, so the KV cache a phone allocates is bounded. onnxruntime's mobile-usability checker then reads the
ONNX model the ORT file was made from; its verdict goes in the report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from minnow.core import children
from minnow.core.errors import MinnowError

ORT_MODEL = "model.ort"
OPERATORS_CONFIG = "model.required_operators.config"
CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
CHECKER = "onnxruntime.tools.check_onnx_model_mobile_usability"
DEFAULT_MAX_LENGTH = 2048


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return children.run(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )


def usability(model_file: Path) -> dict:
    """onnxruntime's mobile-usability checker on ``model_file``: its per-EP answers and its closing advice."""
    run = _run(CHECKER, str(model_file))
    lines = [line.removeprefix("INFO:").strip() for line in run.stdout.splitlines()]
    if run.returncode != 0:
        raise MinnowError(f"onnxruntime's mobile-usability checker rejected {model_file}:\n" + "\n".join(lines[-10:]))
    as_is = dict(re.findall(r"Model should perform well with (.+?) as is: (YES|NO)", run.stdout))
    advice = [line for line in lines if line.startswith(("For optimal performance", "As NNAPI or CoreML"))]
    return {
        "checker": CHECKER,
        "usable": True,
        "accelerators_recommended": {ep: answer == "YES" for ep, answer in as_is.items()},
        "verdict": advice[-1] if advice else lines[-1],
    }


def write_mobile(int4_dir: Path, out_dir: Path, max_length: int) -> dict:
    """Fill the existing ``out_dir`` with the phone folder made from ``int4_dir``; return what the report records."""
    with tempfile.TemporaryDirectory(prefix="minnow-ort-") as work:
        source = Path(work) / "model.onnx"
        shutil.copyfile(int4_dir / "model.onnx", source)
        data = int4_dir / "model.onnx.data"
        if data.is_file():
            shutil.copyfile(data, Path(work) / data.name)
        run = _run(CONVERTER, str(source), "--optimization_style", "Fixed", "--target_platform", "arm")
        if run.returncode != 0 or not (Path(work) / ORT_MODEL).is_file():
            raise MinnowError(f"{CONVERTER} failed on {int4_dir}:\n" + "\n".join(run.stdout.splitlines()[-10:]))
        for name in (ORT_MODEL, OPERATORS_CONFIG):
            shutil.copyfile(Path(work) / name, out_dir / name)
        verdict = usability(source)
    for file in int4_dir.iterdir():
        if file.is_file() and not file.name.startswith("model.onnx") and file.name != "genai_config.json":
            shutil.copyfile(file, out_dir / file.name)
    config = json.loads((int4_dir / "genai_config.json").read_text(encoding="utf-8"))
    length = min(max_length, config["model"]["context_length"])
    config["model"]["decoder"]["filename"] = ORT_MODEL
    config["model"]["context_length"] = length
    config["search"]["max_length"] = length
    (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return {
        "max_length": length,
        "model": ORT_MODEL,
        "operators_config": OPERATORS_CONFIG,
        "usability": verdict,
    }
