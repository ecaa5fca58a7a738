"""The curriculum inside a real `minnow distill` on the tiny pair: online selection through the Trainer, the static
filter, the realised schedule, scores and costs in the run directory, the plot in report.md and the Report tab."""

import json
import math

import pytest
from conftest import minnow_here, run_minnow, tiny_recipe, write_recipe

pytestmark = pytest.mark.slow  # trains the tiny pair through `minnow distill`


def test_online_selection_trains_on_the_kept_examples_and_reports_them(tiny_pair, tmp_path):
    recipe = tiny_recipe(tiny_pair, tmp_path / "runs")
    recipe["distill"] |= {"steps": 6, "save_steps": 100, "batch_size": 4}
    recipe["curriculum"] = {"order": "online", "keep": 0.75, "refresh_steps": 2, "select_ratio": 0.5}
    result = run_minnow("distill", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()

    scores = {r["id"]: r for r in map(json.loads, (run_dir / "data/quality.jsonl").read_text().splitlines())}
    c = json.loads((run_dir / "report.json").read_text())["distill"]["curriculum"]
    assert c["order"] == "online" and c["score"] == "teacher-nll"
    assert c["kept"] == math.ceil(0.75 * (c["examples"] - c["dropped"].get("near-duplicate", 0)))
    assert c["dropped"]["below keep"] == c["examples"] - c["kept"] - c["dropped"].get("near-duplicate", 0)
    worst_kept = sorted(r["score"] for r in scores.values())[c["kept"] - 1]

    steps = [json.loads(line) for line in (run_dir / "data/schedule.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(6)) and all(len(s["ids"]) == 4 for s in steps)
    assert all(scores[i]["score"] <= worst_kept for s in steps for i in s["ids"]), "nothing below `keep` is trained on"
    assert c["first_ids"] == steps[0]["ids"]
    for row in scores.values():
        assert row["teacher_nll"] > 0 and row["teacher_entropy"] > 0 and 0 < row["teacher_confidence"] <= 1
        assert row["score"] == row["teacher_nll"] and 0 <= row["heuristic"] <= 1
    costs = c["scorers"]
    assert (
        costs["teacher forward"]["kind"] == "teacher-forward" and costs["teacher forward"]["examples"] == c["examples"]
    )
    assert (
        costs["online learnability"]["kind"] == "student-forward" and costs["online learnability"]["examples"] == 3 * 16
    )
    assert costs["heuristic rules"]["kind"] == "cheap" and all(v["seconds"] >= 0 for v in costs.values())

    # `minnow report` refuses a run that was only distilled (it names what is missing); the report stage's own
    # function renders what there is.
    unfinished = minnow_here("report", str(run_dir))
    assert unfinished.returncode == 2 and "no export section" in unfinished.stderr
    from minnow.core.rundir import RunDir
    from minnow.report.markdown import write_markdown
    from minnow.serve.report import report_parts

    write_markdown(RunDir.open(run_dir))
    md = (run_dir / "report.md").read_text()
    assert "![score distribution" in md and "(curriculum.png)" in md and "online learnability" in md
    assert (run_dir / "curriculum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_dir / "curriculum.png" in report_parts(RunDir.open(run_dir))
