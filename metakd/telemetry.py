"""Wall time, CPU time, peak memory and energy for training runs and benchmark phases.

Every optional backend (zeus, pynvml, RAPL files) degrades gracefully: a missing import, file
or permission moves on to the next one, and the last resort is an estimate that is always
labelled as such. Nothing here touches the network or the rest of ``metakd``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import torch

POWERCAP_ROOT = Path("/sys/class/powercap")
BACKENDS = ("zeus", "nvml", "rapl", "estimate")
_RAPL_TOP_ZONE = re.compile(r"intel-rapl:\d+")  # packages only; "intel-rapl:0:1" is a sub-zone


def cpu_seconds() -> float:
    """User + system CPU time of this process (children excluded)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class Measurement:
    """Resources used by one ``measure()`` block; filled in when the block exits."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    energy_joules: float | None = None
    energy_source: str = "n/a"
    energy_estimated: bool = False
    peak_memory_bytes: int | None = None
    memory_source: str = "n/a"

    def to_dict(self) -> dict:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)


class EnergyMeter:
    """Energy over an interval; backends tried in order: zeus (optional import
    ``zeus.monitor.ZeusMonitor``, only when a CUDA GPU is present), direct NVML (optional
    ``pynvml``, ``nvmlDeviceGetTotalEnergyConsumption``, mJ), RAPL via
    ``/sys/class/powercap/intel-rapl:*/energy_uj`` (wraparound handled with
    ``max_energy_range_uj``; sub-zones skipped to avoid double counting), and finally an estimate
    ``cpu_seconds x watts_per_core`` (default 10.0 W) that is always labelled estimated.

    ``prefer`` forces one backend by name (one of ``BACKENDS``); if that backend is unavailable
    the meter still falls back to the estimate rather than failing.
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

    def start(self) -> None:
        """Begin an interval with the first backend that works."""
        openers = {"zeus": self._open_zeus, "nvml": self._open_nvml, "rapl": self._open_rapl}
        order = [self.prefer] if self.prefer else list(BACKENDS)
        self._finish, self._source = None, "n/a"
        for name in order:
            if name not in openers:
                continue
            try:
                self._finish, self._source = openers[name]()
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
        source = f"estimated: cpu_seconds x {self.watts_per_core} W/core"
        return cpu * self.watts_per_core, source, True

    def _open_zeus(self) -> tuple[Callable[[], float], str]:
        if not torch.cuda.is_available():
            raise RuntimeError("zeus is only used with a CUDA GPU")
        from zeus.monitor import ZeusMonitor

        monitor = ZeusMonitor(gpu_indices=list(range(torch.cuda.device_count())))
        window = f"metakd-{id(self)}"
        monitor.begin_window(window)
        return (lambda: monitor.end_window(window).total_energy), "zeus (NVML)"

    def _open_nvml(self) -> tuple[Callable[[], float], str]:
        import pynvml

        pynvml.nvmlInit()
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                       for i in range(pynvml.nvmlDeviceGetCount())]
            if not handles:
                raise RuntimeError("no NVML devices")
            start_mj = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
        except Exception:
            pynvml.nvmlShutdown()
            raise

        def finish() -> float:
            try:
                end_mj = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
            finally:
                pynvml.nvmlShutdown()
            return sum(e - s for s, e in zip(start_mj, end_mj)) / 1e3

        return finish, "nvml"

    def _open_rapl(self) -> tuple[Callable[[], float], str]:
        zones = sorted(p for p in self.powercap_root.glob("intel-rapl:*")
                       if _RAPL_TOP_ZONE.fullmatch(p.name))
        readable = []
        for zone in zones:
            try:
                readable.append((zone, int((zone / "energy_uj").read_text())))
            except (OSError, ValueError):  # root-only on most modern kernels
                continue
        if not readable:
            raise RuntimeError(f"no readable RAPL zones under {self.powercap_root}")

        def finish() -> float:
            total_uj = 0
            for zone, start in readable:
                end = int((zone / "energy_uj").read_text())
                if end < start:  # counter wrapped around
                    end += int((zone / "max_energy_range_uj").read_text())
                total_uj += end - start
            return total_uj / 1e6

        return finish, "rapl (powercap)"


@contextmanager
def measure(device: "torch.device | str | None" = None,
            energy: EnergyMeter | None = None) -> Iterator[Measurement]:
    """Yields a Measurement that is filled in when the block exits (also on an exception).

    On CUDA the peak memory is ``torch.cuda.max_memory_allocated`` after a reset at entry. On
    CPU it is the process's peak RSS (``ru_maxrss``), which is a *lifetime* peak that can never
    go down: the benchmarks run each configuration in its own subprocess for that reason.
    Energy is measured only when an ``EnergyMeter`` is given; otherwise it stays ``None``/"n/a".
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = dev.type == "cuda"
    result = Measurement()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    if energy is not None:
        energy.start()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize(dev)
        result.seconds = time.perf_counter() - t0
        result.cpu_seconds = cpu_seconds() - cpu0
        if energy is not None:
            joules, result.energy_source, result.energy_estimated = energy.stop()
            result.energy_joules = joules
        if cuda:
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev))
            result.memory_source = "cuda max_memory_allocated"
        else:
            result.peak_memory_bytes = peak_rss_bytes()
            result.memory_source = "peak RSS (ru_maxrss)"


class PhaseTimer:
    """Accumulates wall time per named phase: ``with timer.phase("teacher_forward"): ...``.

    Synchronizes CUDA before reading the clock when the device is CUDA. Nested phases are allowed
    and measured independently (an outer phase includes the time of its inner ones).
    """

    def __init__(self, device: "torch.device | str | None" = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._totals: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to phase ``name``."""
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._totals[name] += time.perf_counter() - t0
            self._counts[name] += 1

    def totals(self) -> dict[str, float]:
        """Seconds per phase."""
        return dict(self._totals)

    def counts(self) -> dict[str, int]:
        """Number of completed blocks per phase."""
        return dict(self._counts)

    def means(self) -> dict[str, float]:
        """Mean seconds per block, per phase."""
        return {k: self._totals[k] / self._counts[k] for k in self._counts}

    def reset(self) -> None:
        """Forget all phases."""
        self._totals.clear()
        self._counts.clear()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Hardware and software description of this machine, for benchmark reports."""
    cuda = torch.cuda.is_available()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(affinity(0)) if affinity else None,
        "memory_total_bytes": _memory_total_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        "packages": {name: _version(name) for name in ("transformers", "peft", "higher")},
    }
