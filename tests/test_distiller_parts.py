"""MetaDistiller is built from parts it owns (its training state, its meta-step) and a training loop
per ``fit``; these tests check the seams: a config set on the distiller reaches every part, a bad one
is refused, and the parts are objects of their own (no mixins sharing the distiller's attributes)."""

from __future__ import annotations

import copy

import pytest

from metakd import ConfigError, MetaDistiller, NumericalError
from metakd.meta_step import MetaStep
from metakd.training_state import TrainingState

from .conftest import make_batch
from .test_numerical_guards import _distiller, _poison_teacher


def test_the_distiller_owns_its_parts_and_mixes_nothing_in():
    d = _distiller("lora", meta_batch_size=2, meta_start=1)
    assert MetaDistiller.__mro__ == (MetaDistiller, object)
    assert isinstance(d.meta_step, MetaStep) and isinstance(d.state, TrainingState)
    assert d.meta_step.state is d.state  # one training state, advanced by the step
    assert d.meta_batch(make_batch(0))["labels"].shape[0] == 2  # the public names of the step, kept
    assert not d.teacher_learns()  # meta_start=1: not at step 0
    before = d.steps_done
    d.step(make_batch(0), make_batch(1))
    assert d.steps_done == d.state.steps_done == before + 1


def test_a_config_set_on_the_distiller_reaches_the_step_and_the_state():
    """``d.config = d.config.replace(...)`` between fits: the step stops at the new ``max_bad_steps``."""
    d = _distiller("none", max_bad_steps=5)
    d.config = d.config.replace(max_bad_steps=1)
    assert d.meta_step.config is d.config and d.state.config is d.config
    _poison_teacher(d)
    with pytest.raises(NumericalError, match="in 1 steps in a row"):
        d.step(make_batch(0))


def test_a_bad_config_set_on_the_distiller_is_refused_and_changes_nothing():
    d = _distiller("none")
    before = d.config
    bad = copy.copy(d.config)
    bad.temperature = -1.0  # set after construction: only the setter's check can catch it
    with pytest.raises(ConfigError, match="temperature"):
        d.config = bad
    assert d.config is before and d.meta_step.config is before and d.state.config is before


def test_a_timer_set_on_the_distiller_times_the_next_step():
    from metakd.telemetry import PhaseTimer

    d = _distiller("none")
    assert not any(k.startswith("time_") for k in d.step(make_batch(0)))
    d.timer = PhaseTimer(d.device)
    assert d.meta_step.timer is d.timer
    metrics = d.step(make_batch(1))
    assert metrics["time_teacher_forward"] > 0 and metrics["time_student_step"] > 0
