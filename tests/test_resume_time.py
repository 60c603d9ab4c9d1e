"""After a resume, the training seconds in metrics.json are the sum over the run's segments."""

from __future__ import annotations

import json
from types import SimpleNamespace

from metakd.run import _train_time

from .test_checkpoint import EXAMPLES, _distiller


def test_resumed_training_seconds_sum_the_segments(tmp_path):
    first = _distiller("none", 3)
    first.state.start_clock()
    first.state.clock -= 100.0  # as if the first segment had trained for 100 s
    first.fit(EXAMPLES, checkpoint_dir=tmp_path)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["train_seconds"]
    assert 100.0 <= saved < 160.0
    resumed = _distiller("none", 6)
    resumed.state.start_clock()
    resumed.fit(EXAMPLES, checkpoint_dir=tmp_path, resume=True)
    assert resumed.state.seconds_before == saved
    segment = SimpleNamespace(to_dict=lambda: {"seconds": 2.5, "cpu_seconds": 2.0})
    assert _train_time(segment, resumed) == {"seconds": saved + 2.5, "segment_seconds": 2.5, "cpu_seconds": 2.0}
    # a run that did not resume reports its own seconds only
    assert _train_time(segment, first) == {"seconds": 2.5, "cpu_seconds": 2.0}
