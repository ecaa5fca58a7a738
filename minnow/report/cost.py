"""What the student saves: energy, money and carbon per 1k requests and per training run, from the energy
figures in ``report.json`` (metered by :mod:`minnow.core.energy`) and the recipe's ``cost`` section.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from minnow.core.recipe import Cost
from minnow.core.report_schema import TEACHER, CostSection, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def money(kwh: float, seconds: float, cost: Cost) -> float:
    """The machine's price for ``seconds`` when the recipe gives one per hour, else the electricity's price."""
    if cost.price_per_hour is not None:
        return seconds / 3600 * cost.price_per_hour
    return kwh * cost.price_per_kwh


def carbon_g(kwh: float, cost: Cost) -> float:
    """gCO2e of ``kwh`` at the recipe's grid intensity."""
    return kwh * cost.carbon_g_per_kwh


def footprint(energy: dict[str, Any], cost: Cost, per: float = 1.0) -> dict[str, Any]:
    """Wh, money and gCO2e of a metered block, scaled by ``per`` (e.g. 1000 / requests for "per 1k requests")."""
    kwh, seconds = energy["kwh"], energy["seconds"]
    return {
        "wh": kwh * 1000 * per,
        "money": money(kwh, seconds, cost) * per,
        "gco2e": carbon_g(kwh, cost) * per,
        "seconds": seconds * per,
        "measured": energy["measured"],
        "source": energy["source"],
    }


def break_even(one_off: float, teacher_per_request: float, student_per_request: float) -> float | None:
    """Requests served by the student instead of the teacher until ``one_off`` (distillation) is paid back;
    None when the student is not cheaper per request."""
    saving = teacher_per_request - student_per_request
    return one_off / saving if saving > 0 else None


def cost_section(report: Report, cost: Cost) -> dict[str, Any] | None:
    """The report's ``cost`` section from its metered stages (``energy``) and variants (``variants``).

    Per variant: per 1k requests (and per 1M generated tokens for causal-LM runs); training: per stage and in
    total; the break-even point in requests (and days, given ``requests_per_day``) by money and by energy.
    """
    variants = report.variants.variants if report.variants else {}
    stages = {stage: energy.model_dump() for stage, energy in report.energy.items()}
    if not variants and not stages:
        return None
    training = {stage: footprint(energy, cost) for stage, energy in stages.items()}
    total = _total(list(stages.values()), cost) if stages else None
    serving = {}
    for name, row in variants.items():
        if not row.requests:
            continue
        energy = row.energy.model_dump()
        serving[name] = {"requests": row.requests, "per_1k_requests": footprint(energy, cost, 1000 / row.requests)}
        if row.tokens:
            serving[name]["per_1m_tokens"] = footprint(energy, cost, 1e6 / row.tokens)
    teacher = serving.get(TEACHER)
    if total and teacher:
        for s in serving.values():
            if s is teacher:
                continue
            s["break_even_requests"] = {
                key: _rounded(
                    break_even(total[key], teacher["per_1k_requests"][key] / 1000, s["per_1k_requests"][key] / 1000)
                )
                for key in ("money", "wh")
            }
            if cost.requests_per_day and s["break_even_requests"]["money"] is not None:
                s["break_even_days"] = s["break_even_requests"]["money"] / cost.requests_per_day
    return {
        "assumptions": cost.model_dump(),
        "money_basis": "machine price per hour" if cost.price_per_hour is not None else "electricity price per kWh",
        "training": training,
        "training_total": total,
        "serving": serving,
    }


def _total(energies: list[dict[str, Any]], cost: Cost) -> dict[str, Any]:
    summed = {
        "kwh": sum(e["kwh"] for e in energies),
        "seconds": sum(e["seconds"] for e in energies),
        "measured": all(e["measured"] for e in energies),
        "source": "; ".join(sorted({e["source"] for e in energies})),
    }
    return footprint(summed, cost)


def _rounded(requests: float | None) -> int | None:
    return None if requests is None else math.ceil(requests)


def serving_table(section: CostSection) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the per-variant serving figures: per 1k requests, per 1M tokens, break-even, label."""
    currency = section.assumptions["currency"]
    header = [
        "variant",
        "Wh / 1k requests",
        f"{currency} / 1k requests",
        "gCO2e / 1k requests",
        "Wh / 1M tokens",
        "break-even (requests)",
        "energy",
    ]
    rows = []
    for name, s in section.serving.items():
        k, tokens = s.per_1k_requests, s.per_1m_tokens
        rows.append(
            [
                name,
                k.wh,
                k.money,
                k.gco2e,
                tokens.wh if tokens else None,
                (s.break_even_requests or {}).get("money"),
                "measured" if k.measured else "estimated",
            ]
        )
    return header, rows


def cost_figure(section: CostSection) -> Figure:
    """Bars per variant: Wh and money per 1k requests; the training run's total is given in the title."""
    from matplotlib.figure import Figure

    serving = section.serving
    names = list(serving)
    currency = section.assumptions["currency"]
    fig = Figure(figsize=(11, 1.4 + 0.45 * len(names)), layout="constrained")
    energy_ax, money_ax = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(len(names))]
    energy_ax.barh(names, [serving[n].per_1k_requests.wh for n in names], color=colors)
    energy_ax.set(xlabel="Wh per 1k requests", title="energy")
    money_ax.barh(names, [serving[n].per_1k_requests.money for n in names], color=colors)
    money_ax.set(xlabel=f"{currency} per 1k requests", title=f"money ({section.money_basis})")
    money_ax.tick_params(labelleft=False)
    money_ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    for ax in (energy_ax, money_ax):
        ax.invert_yaxis()
    total = section.training_total
    if total:
        fig.suptitle(
            f"distilling this student: {total.wh:.3g} Wh, {total.money:.3g} {currency}, "
            f"{total.gco2e:.3g} gCO2e ({'measured' if total.measured else 'estimated'})"
        )
    return fig
