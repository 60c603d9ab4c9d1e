"""Energy over an interval or at phase boundaries: zeus, NVML's and RAPL's cumulative counters, and a
labelled estimate from CPU time. Every optional backend degrades gracefully (see ``telemetry``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from .process_usage import cpu_seconds

POWERCAP_ROOT = Path("/sys/class/powercap")
BACKENDS = ("zeus", "nvml", "rapl", "estimate")
_RAPL_TOP_ZONE = re.compile(r"intel-rapl:\d+")  # packages only; "intel-rapl:0:1" is a sub-zone


class EnergyCounter:
    """A cumulative energy reading in joules since the counter was opened: ``read()`` at two
    moments and subtract. Shared by ``EnergyMeter`` (whole intervals) and ``PhaseTimer`` (one
    reading per phase boundary); ``close()`` releases the backend."""

    source = "n/a"

    def read(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NvmlCounter(EnergyCounter):
    """Sum over every GPU of NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
    mJ since the driver loaded; needs the optional ``pynvml``)."""

    source = "nvml"

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        try:
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                raise RuntimeError("no NVML devices")
            self._start_mj = self._raw()
        except Exception:
            pynvml.nvmlShutdown()
            raise

    def _raw(self) -> list[int]:
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]

    def read(self) -> float:
        return sum(e - s for s, e in zip(self._start_mj, self._raw())) / 1e3

    def close(self) -> None:
        if self._handles is not None:
            self._handles = None
            self._nvml.nvmlShutdown()


class RaplCounter(EnergyCounter):
    """Sum over the RAPL package zones of ``/sys/class/powercap/intel-rapl:N/energy_uj``; a counter
    that went down wrapped around at ``max_energy_range_uj`` (every read folds the wrap in, so a
    reading at least once per wrap period stays exact). Sub-zones (``intel-rapl:N:M``) are part of
    their package and skipped. Package energy: every process on the socket, not only this one."""

    source = "rapl (powercap)"

    def __init__(self, powercap_root: str | Path | None = None):
        root = Path(powercap_root) if powercap_root is not None else POWERCAP_ROOT
        zones = sorted(p for p in root.glob("intel-rapl:*") if _RAPL_TOP_ZONE.fullmatch(p.name))
        self._zones: list[list] = []  # [zone, last raw µJ, µJ accumulated since opening]
        for zone in zones:
            try:
                self._zones.append([zone, int((zone / "energy_uj").read_text()), 0])
            except (OSError, ValueError):  # root-only on most modern kernels
                continue
        if not self._zones:
            raise RuntimeError(f"no readable RAPL zones under {root}")

    def read(self) -> float:
        for entry in self._zones:
            zone, last, _ = entry
            raw = int((zone / "energy_uj").read_text())
            delta = raw - last
            if delta < 0:  # the counter wrapped around
                delta += int((zone / "max_energy_range_uj").read_text())
            entry[1], entry[2] = raw, entry[2] + delta
        return sum(e[2] for e in self._zones) / 1e6


class EnergyMeter:
    """Energy over an interval; backends tried in order: zeus (optional import
    ``zeus.monitor.ZeusMonitor``, only when a CUDA GPU is present), direct NVML (optional
    ``pynvml``, ``nvmlDeviceGetTotalEnergyConsumption``, mJ), RAPL via
    ``/sys/class/powercap/intel-rapl:*/energy_uj`` (wraparound handled with
    ``max_energy_range_uj``; sub-zones skipped to avoid double counting), and finally an estimate
    ``cpu_seconds x watts_per_core`` (default 10.0 W) that is always labelled estimated.

    ``prefer`` forces one backend by name (one of ``BACKENDS``); if that backend is unavailable
    the meter still falls back to the estimate rather than failing. ``open_counter()`` gives the
    cumulative counter behind the NVML and RAPL backends, for readings at many moments
    (``PhaseTimer`` reads it at every phase boundary).
    """

    def __init__(self, watts_per_core: float = 10.0, prefer: str | None = None,
                 powercap_root: str | Path | None = None):
        if prefer is not None and prefer not in BACKENDS:
            raise ValueError(f"unknown energy backend {prefer!r}; expected one of {BACKENDS}")
        self.watts_per_core = float(watts_per_core)
        self.prefer = prefer
        self.powercap_root = Path(powercap_root) if powercap_root is not None else POWERCAP_ROOT
        self._finish: Callable[[], float] | None = None
        self._source = "n/a"
        self._cpu0: float | None = None

    @property
    def estimate_source(self) -> str:
        """The label of the estimate backend."""
        return f"estimated: cpu_seconds x {self.watts_per_core} W/core"

    def estimate(self, cpu: float) -> float:
        """Joules estimated for ``cpu`` CPU seconds."""
        return cpu * self.watts_per_core

    def _counter(self, name: str) -> EnergyCounter:
        if name == "nvml":
            return NvmlCounter()
        if name == "rapl":
            return RaplCounter(self.powercap_root)
        raise ValueError(f"{name!r} has no cumulative counter")

    def open_counter(self) -> EnergyCounter | None:
        """The first cumulative counter that works, NVML then RAPL (zeus reads the same NVML
        counter, so ``prefer="zeus"`` means NVML here); None where only the estimate is left."""
        order = {"zeus": ["nvml"], "nvml": ["nvml"], "rapl": ["rapl"], "estimate": []}.get(self.prefer, ["nvml", "rapl"])
        for name in order:
            try:
                return self._counter(name)
            except Exception:  # optional backend unavailable: try the next one
                continue
        return None

    def start(self) -> None:
        """Begin an interval with the first backend that works."""
        order = [self.prefer] if self.prefer else list(BACKENDS)
        self._finish, self._source = None, "n/a"
        for name in order:
            if name == "estimate":
                continue
            try:
                self._finish, self._source = self._open_zeus() if name == "zeus" else self._open_counter(name)
                break
            except Exception:  # optional backend unavailable: try the next one
                continue
        self._cpu0 = cpu_seconds()

    def stop(self) -> tuple[float | None, str, bool]:
        """End the interval; returns ``(joules, source, estimated)``."""
        if self._cpu0 is None:
            raise RuntimeError("EnergyMeter.stop() called before start()")
        cpu = cpu_seconds() - self._cpu0
        finish, self._finish, self._cpu0 = self._finish, None, None
        if finish is not None:
            try:
                return float(finish()), self._source, False
            except Exception:  # a backend that failed mid-way falls back to the estimate
                pass
        return self.estimate(cpu), self.estimate_source, True

    def _open_zeus(self) -> tuple[Callable[[], float], str]:
        if not torch.cuda.is_available():
            raise RuntimeError("zeus is only used with a CUDA GPU")
        from zeus.monitor import ZeusMonitor

        monitor = ZeusMonitor(gpu_indices=list(range(torch.cuda.device_count())))
        window = f"metakd-{id(self)}"
        monitor.begin_window(window)
        return (lambda: monitor.end_window(window).total_energy), "zeus (NVML)"

    def _open_counter(self, name: str) -> tuple[Callable[[], float], str]:
        counter = self._counter(name)

        def finish() -> float:
            try:
                return counter.read()
            finally:
                counter.close()

        return finish, counter.source
