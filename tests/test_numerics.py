"""Numerics of the meta-step under mixed precision (issue 31): the frozen trunk runs in the same
autocast as the rest of the teacher, fp16 loss scaling grows with every pilot mode, the teacher's
learning-rate schedule counts teacher steps, the one-sided finite difference under bf16, and the
one fp16 overflow rule."""

from __future__ import annotations

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.forward import model_inputs
from metakd.models import tiny_classifier

from .conftest import make_batch


def _mixed(arch: str = "bert", precision: str = "bf16", **settings) -> MetaDistiller:
    """float32 tiny models (3-block teacher) under ``precision``."""
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1)
    student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2)
    cfg = dict(meta_update="lora", meta_grad="jvp", temperature=2.0, pilot_lr=0.5, teacher_lr=1e-2,
               precision=precision, progress=False)
    cfg.update(settings)
    return MetaDistiller(teacher, student, DistillConfig(**cfg))


# ---------------------------------------------------------------------------- 1. the trunk's autocast
def _block_output(d: MetaDistiller, batch, index: int) -> torch.Tensor:
    """Block ``index``'s output in a plain teacher forward (no trunk replayed) under ``d``'s autocast."""
    from metakd.models import find_layer_list

    found = []
    handle = find_layer_list(d.teacher)[1][index].register_forward_hook(
        lambda _m, _a, out: found.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad(), d.autocast():
            d.teacher(**model_inputs(batch, "teacher"))
    finally:
        handle.remove()
    return found[0]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_meta_step_teacher_runs_in_one_autocast_with_a_frozen_trunk(arch):
    """With ``teacher_layers: top:1`` the trunk runs once per meta-step and is replayed: under bf16
    its output is the one a plain KD step's teacher forward computes in the same autocast, and both
    meta-step teacher forwards (attached to φ, and the restore forward after the teacher step) give
    that forward's logits, bit for bit."""
    d = _mixed(arch, teacher_layers="top:1", pilot="restore")
    assert d.trunk is not None
    last = d.trunk.start - 1
    batch, quiz = make_batch(0), make_batch(1)
    trunks, seen = [], []
    real_outputs, real_trunk = d.teacher_outputs, d._run_trunk

    def recording(*args, **kwargs):
        out = real_outputs(*args, **kwargs)
        seen.append(out.logits.detach().clone())
        return out

    def recording_trunk(*args, **kwargs):
        out = real_trunk(*args, **kwargs)
        trunks.append(out)
        return out

    def plain() -> torch.Tensor:
        d.teacher.eval()
        with torch.no_grad():
            return real_outputs(batch).logits  # a plain KD step's teacher forward: no trunk replayed

    want_trunk = _block_output(d, batch, last)
    before = plain()
    d.teacher_outputs, d._run_trunk = recording, recording_trunk
    d.step(batch, quiz)
    del d.teacher_outputs, d._run_trunk
    after = plain()
    assert len(trunks) == 1 and len(seen) == 2 and before.dtype == torch.bfloat16
    got = trunks[0].outputs[last]
    torch.testing.assert_close(got[0] if isinstance(got, tuple) else got, want_trunk, rtol=0, atol=0)
    assert not torch.equal(before, after)  # the teacher stepped
    torch.testing.assert_close(seen[0], before, rtol=0, atol=0)
    torch.testing.assert_close(seen[1], after, rtol=0, atol=0)
    fp32 = d.trunk.run(model_inputs(batch, "teacher")).outputs[last]  # the test can tell fp32 from bf16
    assert not torch.equal(fp32[0] if isinstance(fp32, tuple) else fp32, want_trunk)
