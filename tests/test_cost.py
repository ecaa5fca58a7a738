"""Cost figures: the arithmetic on fixed inputs, measured-vs-estimated labelling, offline metering, and the run's
report (report.json cost section, report.md table and chart)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from minnow.core.energy import EnergyMeter
from minnow.core.recipe import Cost
from minnow.core.report_schema import Report
from minnow.report.cost import break_even, cost_section, footprint

ESTIMATED = {"kwh": 0.002, "seconds": 7200.0, "measured": False, "source": "estimated: CPU estimated"}


def fixed_report() -> Report:
    """A run that spent 0.5 kWh distilling; the teacher uses 10x the student's energy per request."""
    energy = lambda kwh, seconds: {"kwh": kwh, "seconds": seconds, "measured": False, "source": "estimated"}  # noqa: E731
    row = lambda kwh, seconds: {  # noqa: E731
        "requests": 100,
        "tokens": 6400,
        "energy": energy(kwh, seconds),
        "size_bytes": 1,
        "speedup_vs_teacher": 1.0,
    }
    return Report.model_validate(
        {
            "energy": {"distill": energy(0.4, 3000.0), "export": energy(0.1, 600.0)},
            "variants": {
                "threads": 2,
                "variants": {
                    "teacher (PyTorch)": row(0.01, 200.0),
                    "student ONNX int4": row(0.001, 20.0),
                    "student (PyTorch)": row(0.02, 400.0),
                },
            },
        }
    )


def test_footprint_prices_energy_or_machine_time_and_scales():
    by_kwh = footprint(ESTIMATED, Cost(price_per_kwh=0.25, carbon_g_per_kwh=400))
    assert by_kwh["wh"] == pytest.approx(2.0)
    assert by_kwh["money"] == pytest.approx(0.0005)
    assert by_kwh["gco2e"] == pytest.approx(0.8)
    by_hour = footprint(ESTIMATED, Cost(price_per_hour=3.0), per=10)
    assert by_hour["money"] == pytest.approx(60.0)  # 2 h × 3/h × 10
    assert by_hour["wh"] == pytest.approx(20.0) and by_hour["seconds"] == pytest.approx(72000)
    assert by_hour["measured"] is False and by_hour["source"] == ESTIMATED["source"]


def test_break_even_is_one_off_over_saving_and_none_without_saving():
    assert break_even(10.0, teacher_per_request=0.03, student_per_request=0.01) == pytest.approx(500)
    assert break_even(10.0, teacher_per_request=0.01, student_per_request=0.01) is None
    assert break_even(10.0, teacher_per_request=0.01, student_per_request=0.02) is None


def test_cost_section_on_a_fixed_report():
    section = cost_section(fixed_report(), Cost(price_per_kwh=0.2, carbon_g_per_kwh=500, requests_per_day=1000))
    total = section["training_total"]
    assert (
        total["wh"] == pytest.approx(500)
        and total["money"] == pytest.approx(0.1)
        and total["gco2e"] == pytest.approx(250)
    )
    assert total["seconds"] == pytest.approx(3600) and total["measured"] is False
    teacher, int4, torch_student = (
        section["serving"][n] for n in ("teacher (PyTorch)", "student ONNX int4", "student (PyTorch)")
    )
    assert teacher["per_1k_requests"]["wh"] == pytest.approx(100)  # 10 Wh over 100 requests
    assert int4["per_1k_requests"]["money"] == pytest.approx(0.002)
    assert int4["per_1m_tokens"]["wh"] == pytest.approx(1000 / 6400 * 1e6 / 1000)
    # 0.5 kWh paid back at 0.09 Wh saved per request; money: 0.1 paid back at 0.2 × 0.09e-3 per request.
    assert int4["break_even_requests"] == {"wh": 5556, "money": 5556}
    assert int4["break_even_days"] == pytest.approx(5.556)
    assert torch_student["break_even_requests"] == {"wh": None, "money": None}
    assert "break_even_requests" not in teacher


def test_cost_section_needs_figures():
    assert cost_section(Report(), Cost()) is None
    only_training = cost_section(Report(energy=fixed_report().energy), Cost())
    assert only_training["serving"] == {} and only_training["training_total"]["wh"] == pytest.approx(500)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def counters_readable() -> bool:
    rapl = Path("/sys/class/powercap/intel-rapl")
    return rapl.is_dir() and any(p.name == "energy_uj" and p.stat().st_mode & 0o444 for p in rapl.rglob("energy_uj"))


@pytest.fixture(scope="module")
def meter() -> EnergyMeter:
    return EnergyMeter(Cost())


def test_meter_runs_offline_and_energy_grows_with_work(meter, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the energy meter tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with meter.task() as short:
        busy(0.3)
    with meter.task() as long:
        busy(1.5)
    assert 0 < short["kwh"] < long["kwh"]
    assert long["seconds"] == pytest.approx(1.5, abs=0.3)


def test_labels_say_measured_or_estimated(meter):
    with meter.task() as energy:
        busy(0.1)
    assert energy["measured"] == energy["source"].startswith("measured:")
    assert "CPU" in energy["source"] and "RAM estimated" in energy["source"]
    if not counters_readable():
        assert not energy["measured"] and "CPU estimated" in energy["source"]
    given = EnergyMeter(Cost(cpu_watts=65))
    with given.task() as energy:
        busy(0.1)
    assert not energy["measured"] and "CPU 65 W given in the recipe" in energy["source"]


def test_run_reports_cost_for_every_variant_and_stage(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    cost, variants = report["cost"], report["variants"]["variants"]
    assert (
        set(cost["serving"])
        == set(variants)
        == {"teacher (PyTorch)", "student (PyTorch)", "student ONNX fp32", "student ONNX int4"}
    )
    assert set(cost["training"]) == {"distill", "export"}
    assert cost["training_total"]["wh"] == pytest.approx(sum(t["wh"] for t in cost["training"].values()))
    for name, row in variants.items():
        serving = cost["serving"][name]["per_1k_requests"]
        assert serving["wh"] == pytest.approx(row["energy"]["kwh"] * 1e6 / row["requests"])
        assert serving["wh"] > 0 and row["tokens"] > 0
    # The tiny student is much smaller than the tiny teacher: its ONNX export needs less energy per request.
    assert (
        cost["serving"]["student ONNX int4"]["per_1k_requests"]["wh"]
        < cost["serving"]["teacher (PyTorch)"]["per_1k_requests"]["wh"]
    )
    markdown = (tiny_run / "report.md").read_text()
    assert "## Cost" in markdown and "](cost.png)" in markdown
    assert (tiny_run / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
