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


def fmt_bytes(n: float | None) -> str:
    """Bytes as B/KiB/MiB/GiB for tables and logs; "n/a" for None."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def cpu_seconds() -> float:
    """User + system CPU time of this process (children excluded)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process in bytes (Linux reports KiB, macOS bytes).

    A per-phase memory ``PhaseTimer`` resets the kernel's high-water mark, which lowers
    ``ru_maxrss`` too; the marks it read before each reset are folded back in here.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = int(peak) if sys.platform == "darwin" else int(peak) * 1024
    cpu = _HIGH_WATER.get("cpu")
    return max(peak, cpu.lifetime) if cpu is not None else peak


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


# ---------------------------------------------------------------------------- peak memory
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _vmhwm_bytes() -> int:
    """The kernel's resident-set high-water mark of this process (``VmHWM``), in bytes."""
    fd = os.open(_STATUS, os.O_RDONLY)
    try:
        text = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    i = text.index(b"VmHWM:")
    return int(text[i + 6:text.index(b"\n", i)].split()[0]) * 1024  # reported in kB


def _reset_vmhwm() -> None:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    fd = os.open(_CLEAR_REFS, os.O_WRONLY)
    try:
        os.write(fd, b"5")
    finally:
        os.close(fd)


class _Window:
    __slots__ = ("peak",)

    def __init__(self) -> None:
        self.peak = 0


class HighWater:
    """A resettable high-water mark of memory (CUDA ``max_memory_allocated`` of one device, or the
    process's VmHWM) shared by every block that reads it. Each block is a window: entering one
    resets the mark, so the mark at exit is the block's own peak; a reset first folds the mark
    into every window still open, so nested blocks (phases inside phases, phases inside a
    ``measure()``) keep their full peaks. ``lifetime`` is the largest mark ever folded (the kernel
    forgets it at a reset)."""

    def __init__(self, read: Callable[[], int], reset: Callable[[], None], source: str):
        self._read, self._reset, self.source = read, reset, source
        self._open: list[_Window] = []
        self.lifetime = 0

    def fold(self) -> int:
        """Read the mark and fold it into every open window; returns it."""
        mark = int(self._read())
        self.lifetime = max(self.lifetime, mark)
        for w in self._open:
            w.peak = max(w.peak, mark)
        return mark

    def enter(self) -> _Window:
        self.fold()
        self._reset()
        window = _Window()
        self._open.append(window)
        return window

    def exit(self, window: _Window) -> int:
        """Close ``window`` and return its peak (the outer windows have it too)."""
        self.fold()
        for i in range(len(self._open) - 1, -1, -1):  # by identity: windows are not values
            if self._open[i] is window:
                del self._open[i]
                break
        return window.peak


_HIGH_WATER: dict[str, HighWater | None] = {}
_NO_CLEAR_REFS = "n/a: per-phase peak RSS needs a writable /proc/self/clear_refs (Linux)"


def high_water(device: "torch.device | str | None" = None) -> HighWater | None:
    """The shared high-water mark of ``device`` (one per process and device), or None on a CPU
    where VmHWM cannot be reset (not Linux, or /proc/self/clear_refs not writable)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        key = str(dev)
        if key not in _HIGH_WATER:
            _HIGH_WATER[key] = HighWater(lambda: torch.cuda.max_memory_allocated(dev),
                                         lambda: torch.cuda.reset_peak_memory_stats(dev), "cuda max_memory_allocated")
        return _HIGH_WATER[key]
    if "cpu" not in _HIGH_WATER:
        try:
            mark = _vmhwm_bytes()
            _reset_vmhwm()  # the probe: fails where clear_refs is not writable
        except (OSError, ValueError, IndexError):
            _HIGH_WATER["cpu"] = None
        else:
            hw = HighWater(_vmhwm_bytes, _reset_vmhwm, "peak RSS (VmHWM, reset via /proc/self/clear_refs)")
            hw.lifetime = mark
            _HIGH_WATER["cpu"] = hw
    return _HIGH_WATER["cpu"]


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
            self.memory_source = self._high_water.source if self._high_water is not None else _NO_CLEAR_REFS
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
