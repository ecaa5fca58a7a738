"""Two processes (torchrun, gloo on CPU) distill into one run directory, as one process with doubled accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_minnow, tiny_recipe, write_recipe
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # trains the tiny pair through `minnow distill`


def test_two_processes_match_one_process_with_doubled_grad_accum(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "one", curriculum={"order": "random"})
    recipe["distill"] |= {"steps": 4, "batch_size": 4, "grad_accum": 2, "save_steps": 100, "device": "cpu"}
    one = run_minnow("distill", str(write_recipe(tmp_path / "one.yaml", recipe)))
    assert one.returncode == 0, one.stderr[-3000:]

    recipe["runs_dir"] = str(tmp_path / "two")
    recipe["distill"]["grad_accum"] = 1
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "minnow",
            "distill",
            str(write_recipe(tmp_path / "two.yaml", recipe)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    (run_one,) = (tmp_path / "one").iterdir()
    (run_two,) = (tmp_path / "two").iterdir()  # one run directory for both processes
    log_one = json.loads((run_one / "report.json").read_text())["distill"]["loss_log"]
    log_two = json.loads((run_two / "report.json").read_text())["distill"]["loss_log"]
    assert [e["step"] for e in log_one] == [e["step"] for e in log_two] == [1, 2, 3, 4]
    for a, b in zip(log_one, log_two):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(a["loss"]), (log_one, log_two)
    w_one, w_two = load_file(run_one / "student/model.safetensors"), load_file(run_two / "student/model.safetensors")
    for name, value in w_one.items():
        assert torch.allclose(value, w_two[name], atol=2e-4), name
