"""Wall time, CPU time, peak memory and energy for training runs and benchmark phases.

Every optional backend (zeus, pynvml, RAPL files) degrades gracefully: a missing import, file
or permission moves on to the next one, and the last resort is an estimate that is always
labelled as such. Nothing here touches the network or the rest of ``metakd``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch

from .energy import BACKENDS, POWERCAP_ROOT, EnergyCounter, EnergyMeter, NvmlCounter, RaplCounter
from .process_usage import NO_CLEAR_REFS, HighWater, cpu_seconds, high_water, peak_rss_bytes

# energy.py (the meters) and process_usage.py (CPU time, peak memory) hold the parts that measure and
# measure() and PhaseTimer build on; their names are this module's too
__all__ = [
    "BACKENDS", "POWERCAP_ROOT", "EnergyCounter", "EnergyMeter", "HighWater", "Measurement", "NvmlCounter",
    "PhaseTimer", "RaplCounter", "cpu_seconds", "fmt_bytes", "high_water", "machine_info", "measure",
    "package_version", "peak_rss_bytes",
]


def fmt_bytes(n: float | None) -> str:
    """Bytes as B/KiB/MiB/GiB for tables and logs; "n/a" for None."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


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


@contextmanager
def measure(device: "torch.device | str | None" = None,
            energy: EnergyMeter | None = None) -> Iterator[Measurement]:
    """Yields a Measurement that is filled in when the block exits (also on an exception).

    On CUDA the peak memory is ``torch.cuda.max_memory_allocated`` after a reset at entry (phases
    timed inside the block, which reset it again, are folded in). On CPU it is the process's peak
    RSS, a *lifetime* peak that can never go down: the benchmarks run each configuration in its
    own subprocess for that reason. Energy is measured only when an ``EnergyMeter`` is given;
    otherwise it stays ``None``/"n/a".
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = dev.type == "cuda"
    result = Measurement()
    window = hw = None
    if cuda:
        torch.cuda.synchronize(dev)
        hw = high_water(dev)
        window = hw.enter()
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
            result.peak_memory_bytes = hw.exit(window)
            result.memory_source = "cuda max_memory_allocated"
        else:
            result.peak_memory_bytes = peak_rss_bytes()
            result.memory_source = "peak RSS (ru_maxrss)"


class PhaseTimer:
    """Accumulates wall time per named phase: ``with timer.phase("teacher_forward"): ...``; also
    CPU seconds per phase, and on request the peak memory and the energy of each phase.

    Synchronizes CUDA before reading the clock when the device is CUDA. Nested phases are allowed
    and measured independently (an outer phase includes the time, CPU time, energy and peak
    memory of its inner ones).

    ``memory=True``: the peak memory of each block; ``peaks()`` is the largest over the blocks of a
    phase. On CUDA ``torch.cuda.max_memory_allocated`` (reset at every phase entry); on a CPU the
    process's peak RSS, by resetting the kernel's high-water mark VmHWM at every phase entry
    (``/proc/self/clear_refs``) and reading it at the exit; where that file is not writable the
    peaks are None and ``memory_source`` says why. Peaks are absolute (everything allocated,
    models included), not increments over the phase's start. ``peak_rss_bytes()`` and
    ``measure()`` stay correct around such a timer.

    ``energy=EnergyMeter(...)``: the energy of each block, from the meter's cumulative counter
    (NVML, then RAPL) read at phase boundaries, else ``cpu_seconds x watts_per_core`` labelled
    estimated (``energy_estimated``; per phase in ``report()``).
    """

    def __init__(self, device: "torch.device | str | None" = None, memory: bool = False,
                 energy: EnergyMeter | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._totals: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._cpu: dict[str, float] = defaultdict(float)
        self._peaks: dict[str, int] = {}
        self._energy: dict[str, float] = defaultdict(float)
        self._estimated: set[str] = set()
        self.memory = bool(memory)
        self._high_water = high_water(self.device) if memory else None
        if not memory:
            self.memory_source = "n/a"
        else:
            self.memory_source = self._high_water.source if self._high_water is not None else NO_CLEAR_REFS
        self.energy_meter = energy
        self._counter = energy.open_counter() if energy is not None else None
        self._estimating = energy is not None and self._counter is None
        if energy is None:
            self.energy_source = "n/a"
        else:
            self.energy_source = self._counter.source if self._counter is not None else energy.estimate_source

    @property
    def tracks_memory(self) -> bool:
        """Whether ``peaks()`` holds numbers."""
        return self._high_water is not None

    @property
    def tracks_energy(self) -> bool:
        """Whether ``energy()`` holds numbers (measured or estimated)."""
        return self.energy_meter is not None

    @property
    def energy_estimated(self) -> bool:
        """True when any phase's energy since the last reset (or the backend) is an estimate."""
        return self.energy_meter is not None and (self._estimating or bool(self._estimated))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read_energy(self) -> float | None:
        if self._counter is None:
            return None
        try:
            return self._counter.read()
        except Exception:  # a counter that fails mid-way: estimates from here on
            self._counter, self._estimating = None, True
            self.energy_source = f"{self.energy_source}, then {self.energy_meter.estimate_source} after a failed read"
            return None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to phase ``name``."""
        self._sync()
        window = self._high_water.enter() if self._high_water is not None else None
        e0 = self._read_energy()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            seconds = time.perf_counter() - t0
            cpu = cpu_seconds() - cpu0
            self._totals[name] += seconds
            self._counts[name] += 1
            self._cpu[name] += cpu
            if self.energy_meter is not None:
                e1 = self._read_energy() if e0 is not None else None
                if e1 is not None:
                    self._energy[name] += e1 - e0
                else:
                    self._energy[name] += self.energy_meter.estimate(cpu)
                    self._estimated.add(name)
            if window is not None:
                peak = self._high_water.exit(window)
                self._peaks[name] = max(self._peaks.get(name, 0), peak)

    def totals(self) -> dict[str, float]:
        """Seconds per phase."""
        return dict(self._totals)

    def counts(self) -> dict[str, int]:
        """Number of completed blocks per phase."""
        return dict(self._counts)

    def means(self) -> dict[str, float]:
        """Mean seconds per block, per phase."""
        return {k: self._totals[k] / self._counts[k] for k in self._counts}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system, this process) per phase."""
        return dict(self._cpu)

    def peaks(self) -> dict[str, int | None]:
        """Peak memory in bytes per phase: the largest over its blocks (None when not tracked)."""
        return {k: self._peaks.get(k) for k in self._counts}

    def energy(self) -> dict[str, float]:
        """Joules per phase (empty without an EnergyMeter); see ``energy_estimated``."""
        return dict(self._energy) if self.energy_meter is not None else {}

    def report(self) -> dict:
        """Everything per phase, JSON-serialisable."""
        cpu, peaks, energy = self.cpu_seconds(), self.peaks(), self.energy()
        phases = {}
        for k, n in self._counts.items():
            phases[k] = {"count": n, "seconds": self._totals[k], "mean_seconds": self._totals[k] / n,
                         "cpu_seconds": cpu[k], "peak_memory_bytes": peaks[k], "energy_joules": energy.get(k),
                         "energy_estimated": k in self._estimated if self.energy_meter is not None else None}
        return {"device": str(self.device), "memory_source": self.memory_source, "energy_source": self.energy_source,
                "energy_estimated": self.energy_estimated, "phases": phases}

    to_dict = report

    def reset(self) -> None:
        """Forget all phases (the energy counter stays open)."""
        for d in (self._totals, self._counts, self._cpu, self._peaks, self._energy):
            d.clear()
        self._estimated.clear()

    def close(self) -> None:
        """Release the energy counter (NVML); later phases estimate their energy."""
        if self._counter is not None:
            self._counter.close()
            self._counter = None


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


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (None: not installed)."""
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
        "packages": {name: package_version(name) for name in ("transformers", "peft", "higher")},
    }
