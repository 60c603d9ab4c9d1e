"""The names, phases and default settings of ``metakd bench meta-grad`` (shared by its runs and report,
and by the benchmarks that reuse its phases)."""

from __future__ import annotations

NAME = "meta_grad_backends"
BACKENDS = ("higher", "jvp", "finite_diff")
MODES = ("lora", "full")
PILOTS = ("restore", "reuse")
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
          "student_step")
PHASE_LABELS = {"teacher_forward": "teacher fwd", "pilot": "pilot", "quiz": "quiz",
                "directional_derivative": "dir. deriv.", "teacher_backward": "teacher bwd",
                "teacher_step": "teacher step", "student_step": "student step"}
EVERY = (2, 4)

FULL = dict(steps=5, warmup=2, batch_size=32, seq_len=64, depths=(2, 6))
QUICK = dict(steps=2, warmup=1, batch_size=8, seq_len=16, depths=(1, 2))
