"""CPU time and peak memory of this process: its lifetime peak RSS, and resettable high-water marks
(CUDA ``max_memory_allocated`` of a device, or the kernel's VmHWM) that nested blocks share.
Nothing here touches the network or the rest of ``metakd`` (see ``telemetry``)."""

from __future__ import annotations

import os
import resource
import sys
from typing import Callable

import torch


def cpu_seconds() -> float:
    """User + system CPU time of this process (children excluded)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------- peak memory
def peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process in bytes (Linux reports KiB, macOS bytes).

    A per-phase memory ``PhaseTimer`` resets the kernel's high-water mark, which lowers
    ``ru_maxrss`` too; the marks it read before each reset are folded back in here.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = int(peak) if sys.platform == "darwin" else int(peak) * 1024
    cpu = _HIGH_WATER.get("cpu")
    return max(peak, cpu.lifetime) if cpu is not None else peak


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
NO_CLEAR_REFS = "n/a: per-phase peak RSS needs a writable /proc/self/clear_refs (Linux)"


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
