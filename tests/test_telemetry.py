import json
import sys

import pytest
import torch

from metakd import telemetry
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
    monkeypatch.setattr(telemetry, "cpu_seconds", lambda: clock[0])
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
    monkeypatch.setattr(telemetry, "POWERCAP_ROOT", tmp_path)
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
