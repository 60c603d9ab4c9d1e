import json
import sys

import pytest
import torch

from metakd import energy, process_usage, telemetry
from metakd.telemetry import EnergyMeter, Measurement, PhaseTimer, machine_info, measure


def _workload() -> float:
    x = torch.randn(256, 256)
    for _ in range(20):
        x = torch.tanh(x @ x.T / 256)
    return float(x.sum())


def _write_zone(root, name, energy_uj, max_range_uj=None):
    zone = root / name
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range_uj is not None:
        (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")


def _fake_rapl_tree(root):
    _write_zone(root, "intel-rapl:0", 999_000_000, 1_000_000_000)  # about to wrap
    _write_zone(root, "intel-rapl:0:0", 5, 1_000_000_000)  # sub-zone: must be ignored
    _write_zone(root, "intel-rapl:1", 100, 1_000_000_000)


def _advance_fake_rapl_tree(root):
    _write_zone(root, "intel-rapl:0", 500_000)  # wrapped: 1.0 J to the top + 0.5 J
    _write_zone(root, "intel-rapl:0:0", 900_000_000)
    _write_zone(root, "intel-rapl:1", 2_000_100)  # 2.0 J


def test_measure_cpu_workload():
    with measure("cpu") as m:
        _workload()
    assert m.seconds > 0
    assert m.cpu_seconds >= 0
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes > 0
    assert "RSS" in m.memory_source
    assert m.energy_joules is None and m.energy_source == "n/a"
    d = m.to_dict()
    assert d["seconds"] == m.seconds and set(d) == set(Measurement.__dataclass_fields__)
    json.dumps(d)


def test_measure_fills_in_on_exception():
    with pytest.raises(RuntimeError):
        with measure() as m:
            _workload()
            raise RuntimeError("boom")
    assert m.seconds > 0 and m.peak_memory_bytes > 0


def test_peak_rss_is_in_bytes():
    big = b"x" * (64 * 1024 * 1024)  # touched, so resident
    assert telemetry.peak_rss_bytes() >= len(big)


def test_estimate_backend_equals_cpu_seconds_times_watts(monkeypatch):
    clock = [10.0]
    monkeypatch.setattr(telemetry, "cpu_seconds", lambda: clock[0])  # measure()'s
    monkeypatch.setattr(energy, "cpu_seconds", lambda: clock[0])  # the meter's
    with measure("cpu", energy=EnergyMeter(watts_per_core=7.5, prefer="estimate")) as m:
        clock[0] = 12.5
    assert m.cpu_seconds == pytest.approx(2.5)
    assert m.energy_joules == pytest.approx(m.cpu_seconds * 7.5)
    assert m.energy_estimated is True
    assert m.energy_source.startswith("estimated") and "7.5 W" in m.energy_source


def test_estimate_backend_real_clock():
    meter = EnergyMeter(watts_per_core=3.0, prefer="estimate")
    meter.start()
    _workload()
    joules, source, estimated = meter.stop()
    assert joules >= 0 and estimated is True and "3.0 W/core" in source


def test_rapl_with_wraparound_skips_subzones(tmp_path):
    _fake_rapl_tree(tmp_path)
    meter = EnergyMeter(prefer="rapl", powercap_root=tmp_path)
    meter.start()
    _advance_fake_rapl_tree(tmp_path)
    joules, source, estimated = meter.stop()
    assert joules == pytest.approx(3.5)
    assert source == "rapl (powercap)"
    assert estimated is False


def test_default_order_uses_module_powercap_root(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # rules out zeus
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, rules out NVML
    _fake_rapl_tree(tmp_path)
    with measure(energy=EnergyMeter()) as m:
        _advance_fake_rapl_tree(tmp_path)
    assert m.energy_joules == pytest.approx(3.5)
    assert m.energy_source == "rapl (powercap)" and m.energy_estimated is False


def test_missing_rapl_falls_back_to_estimate(tmp_path):
    (tmp_path / "intel-rapl:0").mkdir()  # zone without a readable energy_uj
    meter = EnergyMeter(watts_per_core=2.0, prefer="rapl", powercap_root=tmp_path)
    meter.start()
    joules, source, estimated = meter.stop()
    assert estimated is True and source.startswith("estimated") and joules >= 0


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="bogus"):
        EnergyMeter(prefer="bogus")


def test_stop_before_start_raises():
    with pytest.raises(RuntimeError):
        EnergyMeter().stop()


def test_phase_timer_accumulates_and_counts():
    timer = PhaseTimer("cpu")
    for _ in range(2):
        with timer.phase("teacher_forward"):
            _workload()
    with timer.phase("student_step"):
        with timer.phase("inner"):
            _workload()
    totals, counts = timer.totals(), timer.counts()
    assert counts == {"teacher_forward": 2, "student_step": 1, "inner": 1}
    assert set(totals) == set(counts) and all(v > 0 for v in totals.values())
    assert totals["student_step"] >= totals["inner"]
    assert timer.means()["teacher_forward"] == pytest.approx(totals["teacher_forward"] / 2)
    timer.reset()
    assert timer.totals() == {} and timer.counts() == {} and timer.means() == {}


# ---------------------------------------------------------------------------- per-phase memory, CPU, energy
MiB = 1024 * 1024


def _cpu_high_water_or_skip():
    if telemetry.high_water("cpu") is None:
        pytest.skip("per-phase peak RSS needs a writable /proc/self/clear_refs (Linux); not available here")


def _fake_clock(monkeypatch, start=0.0):
    clock = [start]
    monkeypatch.setattr(telemetry, "cpu_seconds", lambda: clock[0])
    return clock


def test_high_water_nesting_with_a_fake_mark():
    """The fold logic shared by CUDA and VmHWM: a reset never loses an open window's peak."""
    mark = [100]

    def reset():
        mark[0] = current[0]

    current = [100]
    hw = telemetry.HighWater(lambda: mark[0], reset, "fake")

    def alloc(n):
        current[0] += n
        mark[0] = max(mark[0], current[0])

    outer = hw.enter()
    alloc(50)                 # 150 inside outer only
    current[0] -= 50
    inner = hw.enter()        # resets the mark to 100: the 150 is folded into outer first
    alloc(20)
    current[0] -= 20
    assert hw.exit(inner) == 120
    later = hw.enter()        # a later sibling that allocates nothing
    assert hw.exit(later) == 100
    assert hw.exit(outer) == 150
    assert hw.lifetime == 150


def test_phase_timer_cpu_seconds_per_phase(monkeypatch):
    clock = _fake_clock(monkeypatch, 5.0)
    timer = PhaseTimer()
    with timer.phase("outer"):
        clock[0] += 1.0
        with timer.phase("inner"):
            clock[0] += 2.0
    with timer.phase("inner"):
        clock[0] += 0.5
    assert timer.cpu_seconds() == pytest.approx({"outer": 3.0, "inner": 2.5})
    assert timer.energy() == {} and timer.energy_source == "n/a" and timer.energy_estimated is False
    assert timer.peaks() == {"outer": None, "inner": None} and timer.memory_source == "n/a"


def test_phase_timer_real_cpu_seconds():
    timer = PhaseTimer()
    with timer.phase("work"):
        _workload()
    assert timer.cpu_seconds()["work"] > 0


def test_phase_timer_energy_estimate_is_labelled(monkeypatch):
    clock = _fake_clock(monkeypatch)
    timer = PhaseTimer(energy=EnergyMeter(watts_per_core=4.0, prefer="estimate"))
    assert timer.energy_estimated is True and timer.energy_source.startswith("estimated")
    with timer.phase("a"):
        clock[0] += 1.5
    with timer.phase("b"):
        clock[0] += 0.25
    assert timer.energy() == pytest.approx({"a": 6.0, "b": 1.0})
    assert "4.0 W/core" in timer.energy_source
    report = timer.report()
    assert report["energy_estimated"] is True
    assert all(p["energy_estimated"] is True for p in report["phases"].values())


def test_phase_timer_energy_from_fake_rapl_per_phase(tmp_path):
    _fake_rapl_tree(tmp_path)
    timer = PhaseTimer(energy=EnergyMeter(prefer="rapl", powercap_root=tmp_path))
    assert timer.energy_source == "rapl (powercap)" and timer.energy_estimated is False
    with timer.phase("outer"):
        with timer.phase("inner"):
            _advance_fake_rapl_tree(tmp_path)  # 3.5 J, one zone wrapping around
        with timer.phase("idle"):
            pass
    with timer.phase("later"):
        _write_zone(tmp_path, "intel-rapl:1", 3_000_100)  # +1.0 J
    energy = timer.energy()
    assert energy["inner"] == pytest.approx(3.5) and energy["outer"] == pytest.approx(3.5)
    assert energy["idle"] == pytest.approx(0.0) and energy["later"] == pytest.approx(1.0)
    assert timer.energy_estimated is False
    assert not any(p["energy_estimated"] for p in timer.report()["phases"].values())


def test_energy_counter_is_shared_with_the_meter(tmp_path):
    _fake_rapl_tree(tmp_path)
    counter = EnergyMeter(prefer="rapl", powercap_root=tmp_path).open_counter()
    assert counter.source == "rapl (powercap)" and counter.read() == 0.0
    _advance_fake_rapl_tree(tmp_path)
    assert counter.read() == pytest.approx(3.5)
    _write_zone(tmp_path, "intel-rapl:0", 1_500_000)
    assert counter.read() == pytest.approx(4.5)  # readings accumulate across a wrap
    assert EnergyMeter(prefer="estimate").open_counter() is None


def test_phase_timer_energy_falls_back_when_the_counter_fails(tmp_path):
    _fake_rapl_tree(tmp_path)
    timer = PhaseTimer(energy=EnergyMeter(watts_per_core=1.0, prefer="rapl", powercap_root=tmp_path))
    with timer.phase("broken"):
        (tmp_path / "intel-rapl:1" / "energy_uj").unlink()
    assert timer.energy_estimated is True and "estimated" in timer.energy_source
    assert timer.report()["phases"]["broken"]["energy_estimated"] is True


def test_phase_timer_cpu_peak_memory_per_phase():
    _cpu_high_water_or_skip()
    timer = PhaseTimer("cpu", memory=True)
    assert timer.tracks_memory and "VmHWM" in timer.memory_source
    with timer.phase("outer"):
        with timer.phase("alloc"):
            big = torch.ones(64 * MiB)  # 256 MiB of float32, touched
            del big
        with timer.phase("idle"):
            pass
    with timer.phase("later"):
        pass
    peaks = timer.peaks()
    assert all(isinstance(v, int) and v > 0 for v in peaks.values())
    assert peaks["alloc"] >= peaks["idle"] + 200 * MiB
    assert peaks["alloc"] >= peaks["later"] + 200 * MiB
    assert peaks["outer"] >= peaks["alloc"] and peaks["outer"] >= peaks["idle"]
    # resetting the kernel's mark must not lose the lifetime peak that measure() reports
    assert telemetry.peak_rss_bytes() >= peaks["alloc"]


def test_measure_around_a_memory_timer_keeps_the_lifetime_peak():
    _cpu_high_water_or_skip()
    timer = PhaseTimer("cpu", memory=True)
    with measure("cpu") as m:
        big = torch.ones(64 * MiB)  # 256 MiB
        del big
        with timer.phase("idle"):
            pass
    assert m.peak_memory_bytes >= timer.peaks()["idle"] + 200 * MiB


def test_phase_timer_memory_unavailable_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(process_usage, "_HIGH_WATER", {})
    monkeypatch.setattr(process_usage, "_CLEAR_REFS", str(tmp_path / "no" / "clear_refs"))
    timer = PhaseTimer("cpu", memory=True)
    with timer.phase("a"):
        pass
    assert timer.tracks_memory is False and timer.peaks() == {"a": None}
    assert timer.memory_source.startswith("n/a") and "clear_refs" in timer.memory_source


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_phase_timer_cuda_peak_memory_per_phase():
    timer = PhaseTimer("cuda", memory=True)
    with timer.phase("outer"):
        with timer.phase("alloc"):
            big = torch.ones(64 * MiB, device="cuda")
            del big
        with timer.phase("idle"):
            pass
    peaks = timer.peaks()
    assert peaks["alloc"] >= peaks["idle"] + 200 * MiB
    assert peaks["outer"] >= peaks["alloc"]
    assert timer.memory_source == "cuda max_memory_allocated"


def test_phase_timer_reset_and_report(tmp_path):
    _fake_rapl_tree(tmp_path)
    timer = PhaseTimer(memory=True, energy=EnergyMeter(prefer="rapl", powercap_root=tmp_path))
    with timer.phase("a"):
        _workload()
    report = timer.report()
    json.dumps(report)
    assert set(report["phases"]["a"]) == {"count", "seconds", "mean_seconds", "cpu_seconds", "peak_memory_bytes",
                                          "energy_joules", "energy_estimated"}
    assert report["phases"]["a"]["count"] == 1 and report["energy_source"] == "rapl (powercap)"
    assert timer.to_dict() == report
    timer.reset()
    assert timer.totals() == timer.counts() == timer.cpu_seconds() == timer.peaks() == timer.energy() == {}
    assert timer.report()["phases"] == {}
    with timer.phase("b"):  # still works after a reset, counter included
        _advance_fake_rapl_tree(tmp_path)
    assert timer.energy() == pytest.approx({"b": 3.5})


def test_meta_distiller_step_reports_memory_and_energy_per_phase():
    from metakd import DistillConfig, MetaDistiller
    from metakd.models import tiny_classifier

    from .conftest import make_batch

    timer = PhaseTimer(memory=True, energy=EnergyMeter(prefer="estimate"))
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", pilot_lr=0.5, progress=False)
    d = MetaDistiller(tiny_classifier("bert", num_layers=3, seed=1), tiny_classifier("bert", num_layers=2, seed=2),
                      cfg, timer=timer)
    metrics = d.step(make_batch(0), make_batch(1))
    phases = {k[len("time_"):] for k in metrics if k.startswith("time_")}
    assert {"teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
            "student_step"} <= phases
    for p in phases:
        assert metrics[f"energy_{p}"] >= 0 and metrics[f"cpu_{p}"] >= 0
        if timer.tracks_memory:
            assert metrics[f"mem_{p}"] > 0
    # a timer reset at every step: the next (plain) step reports only its own phases
    plain = MetaDistiller(tiny_classifier("bert", num_layers=3, seed=1), tiny_classifier("bert", num_layers=2, seed=2),
                          DistillConfig(meta_update="none", progress=False), timer=timer)
    metrics = plain.step(make_batch(2))
    assert {k for k in metrics if k.startswith("energy_")} == {"energy_teacher_forward", "energy_student_step"}


def test_machine_info_keys():
    info = machine_info()
    expected = {"cpu_model", "logical_cores", "usable_cores", "memory_total_bytes", "os",
                "python", "torch", "cuda_available", "gpus", "packages"}
    assert expected <= set(info)
    assert isinstance(info["cpu_model"], str)
    assert info["logical_cores"] >= 1
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert set(info["packages"]) == {"transformers", "peft", "higher"}
    json.dumps(info)
