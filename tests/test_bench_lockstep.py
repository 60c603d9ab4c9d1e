"""Interleaved benchmark workers (metakd.bench.lockstep): steps never overlap, rounds rotate,
setup finishes before the first timed step, ratios are paired by round, failures surface."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from metakd.bench import lockstep as lockstep_module
from metakd.bench.lockstep import LockstepError, paired_ratios, run_lockstep

# A worker module like the benchmarks' (``python -m MODULE --worker SPEC OUT``): it sleeps
# ``setup`` seconds, then takes ``steps`` turns of ``step`` seconds each, recording when each
# step ran on the system-wide monotonic clock, and fails at step ``fail_at`` if given. It loads
# lockstep.py (standard library only) by path: importing the metakd package costs seconds of torch.
PROBE = textwrap.dedent('''
    import importlib.util, json, sys, time
    spec = importlib.util.spec_from_file_location("lockstep", %r)
    lockstep = sys.modules["lockstep"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lockstep)
    Turns = lockstep.Turns
''' % lockstep_module.__file__ + '''

    def main():
        spec = json.loads(open(sys.argv[2]).read())
        turns = Turns.from_env()
        time.sleep(spec["setup"])
        ready = time.monotonic()
        steps = []
        for i in range(spec["steps"]):
            turns.wait()
            if i == spec.get("fail_at"):
                raise SystemExit(3)
            start = time.monotonic()
            time.sleep(spec["step"])
            steps.append((start, time.monotonic()))
            turns.done(steps[-1][1] - start)
        open(sys.argv[3], "w").write(json.dumps({"name": spec["label"], "ready": ready, "steps": steps}))

    main()
''')


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "lockstep_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return "lockstep_probe"


def test_workers_take_turns_one_step_at_a_time(probe):
    specs = [{"label": "a", "setup": 0.0, "step": 0.02, "steps": 4},
             {"label": "b", "setup": 0.6, "step": 0.06, "steps": 4},  # slow setup: the first round waits for it
             {"label": "c", "setup": 0.0, "step": 0.02, "steps": 4}]
    seen = []
    started = []
    results = run_lockstep(probe, specs, rounds=4, on_round=lambda r, secs: seen.append((r, secs)),
                           on_start=lambda: started.append(time.monotonic()))
    assert [r["name"] for r in results] == ["a", "b", "c"]
    steps = sorted((s, e, r["name"]) for r in results for s, e in r["steps"])
    assert len(steps) == 12
    for (_, end, _), (start, _, _) in zip(steps, steps[1:]):
        assert start >= end  # only one worker computes at a time
    assert steps[0][0] >= max(r["ready"] for r in results)  # no timed step overlaps another's setup
    assert len(started) == 1 and started[0] <= steps[0][0]
    # round r starts with worker r mod 3
    order = "".join(name for _, _, name in steps)
    assert order == "abc" + "bca" + "cab" + "abc"
    assert [r for r, _ in seen] == [0, 1, 2, 3]
    for r, secs in seen:
        assert len(secs) == 3 and all(s is not None and s > 0 for s in secs)
    assert seen[0][1][1] == pytest.approx(results[1]["steps"][0][1] - results[1]["steps"][0][0])
    ratio = paired_ratios([s[1] for _, s in seen], [s[0] for _, s in seen])
    assert ratio["rounds"] == 4 and ratio["median"] > 1.5  # b sleeps 3x as long as a per step


def test_failing_worker_raises_and_stops_the_others(probe):
    specs = [{"label": "ok", "setup": 0.0, "step": 0.01, "steps": 50},
             {"label": "broken", "setup": 0.0, "step": 0.01, "steps": 50, "fail_at": 2}]
    start = time.monotonic()
    with pytest.raises(LockstepError, match="broken"):
        run_lockstep(probe, specs, rounds=50)
    assert time.monotonic() - start < 60


def test_worker_with_fewer_steps_ends_early(probe):
    specs = [{"label": "short", "setup": 0.0, "step": 0.01, "steps": 2},
             {"label": "long", "setup": 0.0, "step": 0.01, "steps": 3}]
    seen = []
    results = run_lockstep(probe, specs, rounds=3, on_round=lambda r, secs: seen.append(secs))
    assert [len(r["steps"]) for r in results] == [2, 3]
    assert seen[2][0] is None and seen[2][1] is not None


def test_paired_ratios_pair_rounds():
    # a load that doubles both configurations' steps in some rounds leaves the paired ratio alone
    fast = [1.0, 2.0, 1.0, 4.0, 1.0]
    slow = [2.0, 4.0, 2.0, 8.0, 2.0]
    r = paired_ratios(fast, slow)
    assert r == {"median": 0.5, "q1": 0.5, "q3": 0.5, "min": 0.5, "max": 0.5, "rounds": 5}
    r = paired_ratios([1.0, 3.0], [1.0, 1.0])
    assert (r["median"], r["min"], r["max"], r["q1"], r["q3"]) == (2.0, 1.0, 3.0, 1.5, 2.5)
    assert paired_ratios([], []) is None
    json.dumps(r)  # plain floats, ready for the JSON report
