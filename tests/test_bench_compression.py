"""`metakd bench compression`: its variants, its flags, and the --quick run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metakd.bench import compression
from metakd.compress.config import CompressConfig


def _bench(*args, tmp_path, timeout=300):
    env = dict(os.environ, METAKD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "metakd", "bench", "compression", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("quick", [True, False])
def test_variants_are_valid_distinct_and_cover_every_method(quick):
    chosen = compression.variants(recovery=7, quick=quick)
    labels = [label for label, _, _ in chosen]
    assert len(labels) == len(set(labels))
    configs = [CompressConfig.from_dict(settings) for _, _, settings in chosen]
    assert {c.prune for c in configs} >= {"magnitude", "structured"}
    assert {c.quantize for c in configs} >= {"minmax", "dynamic_int8"}
    for (label, family, _), c in zip(chosen, configs):
        assert family in ("pruning", "quantization", "combined")
        assert ("recovery" in label) == bool(c.recovery_steps)
        assert c.recovery_steps in (0, 7)
        assert (family == "combined") == (c.prune != "none" and c.quantize != "none")


@pytest.mark.parametrize("argv,message", [
    (["--only", "no-such-variant"], "--only"),
    (["--recovery-steps", "0"], "--recovery-steps"),
    (["--seeds", "0,1"], "one seed"),
    (["--set", "distill.temperature=-1"], "temperature"),
])
def test_bad_flags_exit_2_before_any_work(argv, message, tmp_path):
    proc = _bench("--quick", *argv, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = _bench("--quick", "--threads", "1", "--no-progress", "--out", str(out), tmp_path=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| distilled (fp32) |" in proc.stdout and "reload" in proc.stdout
    assert (out / "compression.png").stat().st_size > 1000
    payload = json.loads((out / "compression.json").read_text())
    rows = {r["label"]: r for r in payload["variants"]}
    assert list(rows) == [label for label, _, _ in compression.variants(4, quick=True)]
    base = payload["distilled"]
    for r in rows.values():
        assert r["reloaded"]["max_abs_difference"] < 1e-6
        assert r["final"]["eval"]["tokens_per_second"] > 0
        assert r["size_ratio"] == pytest.approx(r["final"]["bytes_on_disk"] / base["bytes_on_disk"])
    assert rows["heads+neurons 50% + recovery"]["final"]["params"] < base["params"]
    assert rows["magnitude 50%"]["final"]["nonzero_params"] < base["nonzero_params"]
    # 4-bit Linear and embedding codes: far below a quarter of the fp32 bytes
    assert rows["magnitude 50% + minmax 4-bit + emb"]["size_ratio"] < 0.25
    assert payload["machine"]["torch"]
