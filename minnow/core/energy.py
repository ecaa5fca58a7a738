"""Energy metering with codecarbon in offline mode (nothing is looked up over the network): measured from power
counters where the machine exposes them (Intel RAPL for the CPU, NVML for NVIDIA GPUs), otherwise estimated by
codecarbon's power model (the process's CPU load × the CPU's TDP, RAM power from its size). Every figure carries
which of the two it is.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from .recipe import Cost

MEASURED_CPU_MODES = {
    "intel_rapl": "RAPL",
    "windows_emi": "Windows EMI",
    "intel_power_gadget": "Intel Power Gadget",
    "apple_powermetrics": "powermetrics",
}


@dataclass(frozen=True)
class Energy:
    """Energy of one metered block, and where its figures come from."""

    kwh: float
    seconds: float
    measured: bool
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyMeter:
    """One codecarbon tracker for the process; :meth:`task` meters a block of code."""

    def __init__(self, cost: Cost):
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code="USA",  # required offline; its carbon figure is not used (see carbon_g below)
            output_methods=[],  # nothing written: the figures go to report.json
            tracking_mode="process",
            log_level="error",
            allow_multiple_runs=True,
            **({"force_cpu_power": cost.cpu_watts} if cost.cpu_watts else {}),
            **({"force_ram_power": cost.ram_watts} if cost.ram_watts else {}),
        )
        self._given = {"CPU": cost.cpu_watts, "RAM": cost.ram_watts}

    @contextmanager
    def task(self) -> Iterator[dict[str, Any]]:
        """Meter the block; the yielded dict holds the :class:`Energy` fields once the block has finished."""
        result: dict[str, Any] = {}
        self._tracker.start_task()  # the first call also detects the hardware: start the clock after it
        started = time.perf_counter()
        try:
            yield result
        finally:
            data = self._tracker.stop_task()
            seconds = time.perf_counter() - started
            measured, source = self.source()
            kwh = data.energy_consumed if data is not None else math.nan
            result.update(Energy(kwh, seconds, measured, source).to_dict())

    def source(self) -> tuple[bool, str]:
        """Whether the CPU (and GPU) energy was read from counters, and a label saying how each part was obtained."""
        parts, measured = [], True
        for hardware in sorted(self._tracker._hardware, key=lambda h: type(h).__name__ == "RAM"):
            kind = type(hardware).__name__
            if self._given.get(kind):
                parts.append(f"{kind} {self._given[kind]:g} W given in the recipe")
                measured &= kind == "RAM"
            elif kind == "CPU":
                mode = getattr(hardware, "_mode", None)
                if mode in MEASURED_CPU_MODES:
                    parts.append(f"CPU measured ({MEASURED_CPU_MODES[mode]})")
                else:
                    parts.append(f"CPU estimated (codecarbon: load × {getattr(hardware, '_tdp', '?')} W TDP)")
                    measured = False
            elif kind == "GPU":
                parts.append("GPU measured (NVML)")
            elif kind == "RAM":
                parts.append("RAM estimated (codecarbon: by size)")
        return measured, ("measured" if measured else "estimated") + ": " + "; ".join(parts)


def energy_meter(cost: Cost) -> EnergyMeter:
    """The process's meter for these settings (codecarbon detects the hardware once, on the first task)."""
    return _meter(cost.model_dump_json())


@functools.cache
def _meter(cost_json: str) -> EnergyMeter:
    return EnergyMeter(Cost.model_validate_json(cost_json))
