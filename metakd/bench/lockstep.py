"""Run benchmark configurations side by side, taking turns one step at a time.

Each configuration runs in its own worker process (``python -m MODULE --worker SPEC OUT``), so
its peak memory is its own. A coordinator lets the workers take one training step each in turn
(round-robin, the starting worker rotating every round), so only one of them computes at any
moment and a background load that comes and goes falls on every configuration in the same
rounds. The ratio of two configurations' step times *within a round* is then a paired
measurement a load cannot flip; ``paired_ratios`` summarises those ratios over the rounds
(median, quartiles, min and max).

Protocol: a worker ready for a step writes ``ready`` on the pipe whose descriptor
``$METAKD_TURN_FD`` names and waits for a ``go`` line on its stdin; after the step it answers
``done SECONDS``. The first round starts once every worker is ready (models loaded, initial
evaluations done), so no worker's setup overlaps another's timed step. A worker that finishes
its steps (or fails) ends, which closes its pipe.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

TURN_FD = "METAKD_TURN_FD"


class LockstepError(RuntimeError):
    """A worker failed, or the coordinator stopped before a worker's step."""


class Turns:
    """The worker's side: ``wait()`` before each step, ``done(seconds)`` after it."""

    def __init__(self, commands: IO[str], replies: IO[str]):
        self._commands, self._replies = commands, replies

    @classmethod
    def from_env(cls) -> "Turns | None":
        """The turns of a worker started by ``run_lockstep``; None for a process run on its own."""
        fd = os.environ.pop(TURN_FD, None)
        if not fd:
            return None
        return cls(sys.stdin, os.fdopen(int(fd), "w", buffering=1))

    def wait(self) -> None:
        self._replies.write("ready\n")
        self._replies.flush()
        line = self._commands.readline()
        if line.strip() != "go":
            raise LockstepError("the coordinator stopped before this worker's next step")

    def done(self, seconds: float) -> None:
        self._replies.write(f"done {seconds!r}\n")
        self._replies.flush()


@dataclass
class _Worker:
    label: str
    proc: subprocess.Popen
    replies: IO[str]
    out_path: Path
    finished: bool = False
    ready: bool = False

    def _read(self, expected: str) -> str | None:
        """The next reply (its first word must be ``expected``); None once the worker has ended."""
        line = self.replies.readline()
        if not line:
            self.finished = True
            if self.proc.wait() != 0:
                raise LockstepError(f"benchmark worker failed (exit {self.proc.returncode}) for {self.label}")
            return None
        if line.split()[0] != expected:
            raise LockstepError(f"benchmark worker for {self.label} answered {line.strip()!r}, not {expected!r}")
        return line

    def wait_ready(self) -> None:
        """Block until the worker waits for its next step (or has ended)."""
        if not self.ready and not self.finished:
            self.ready = self._read("ready") is not None

    def take_turn(self) -> float | None:
        """One step; its seconds, or None when the worker had no step left (it has ended)."""
        self.wait_ready()
        if self.finished:
            return None
        self.ready = False
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise LockstepError(f"benchmark worker for {self.label} ended before its step") from None
        line = self._read("done")
        if line is None:
            raise LockstepError(f"benchmark worker for {self.label} ended during a step")
        return float(line.split()[1])


def run_lockstep(module: str, specs: Sequence[dict[str, Any]], rounds: int,
                 on_round: Callable[[int, list[float | None]], None] | None = None,
                 on_start: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Run one worker per spec, ``rounds`` rounds of one step each in turn; return the workers'
    JSON results in the order of ``specs``. ``on_start()`` is called once every worker is ready
    for its first step, ``on_round(i, seconds)`` after round ``i`` (0-based) with each worker's
    step seconds (None for a worker that had ended). A worker that fails raises LockstepError
    (the others are killed)."""
    if not specs:
        return []
    workers: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="metakd-lockstep-") as tmp:
        try:
            for i, spec in enumerate(specs):
                spec_path, out_path = Path(tmp) / f"spec{i}.json", Path(tmp) / f"out{i}.json"
                spec_path.write_text(json.dumps(spec))
                read_fd, write_fd = os.pipe()
                env = dict(os.environ, PYTHONUNBUFFERED="1", **{TURN_FD: str(write_fd)})
                proc = subprocess.Popen([sys.executable, "-m", module, "--worker", str(spec_path), str(out_path)],
                                        stdin=subprocess.PIPE, text=True, env=env, pass_fds=(write_fd,))
                os.close(write_fd)
                workers.append(_Worker(str(spec.get("label", i)), proc, os.fdopen(read_fd), out_path))
            for w in workers:  # every worker set up before the first timed step
                w.wait_ready()
            if on_start is not None:
                on_start()
            n = len(workers)
            for r in range(rounds):
                seconds: list[float | None] = [None] * n
                for k in range(n):
                    i = (r + k) % n
                    if not workers[i].finished:
                        seconds[i] = workers[i].take_turn()
                if on_round is not None:
                    on_round(r, seconds)
            results = []
            for w in workers:
                w.proc.stdin.close()  # a worker still waiting for a turn stops with an error
                if w.proc.wait() != 0 or not w.out_path.is_file():
                    raise LockstepError(f"benchmark worker failed (exit {w.proc.returncode}) for {w.label}")
                results.append(json.loads(w.out_path.read_text()))
            return results
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
                w.replies.close()


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float] | None:
    """Per-round ratios ``numerator[r] / denominator[r]`` summarised: median, quartiles (q1, q3),
    min, max and the number of rounds; None when no round has both."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not ratios:
        return None
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3, "min": min(ratios), "max": max(ratios),
            "rounds": len(ratios)}
