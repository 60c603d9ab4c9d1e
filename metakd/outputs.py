"""What a run may do with its output directory: continue a checkpoint only when asked (and
one exists), never overwrite a previous run unless asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoint import CheckpointError, has_checkpoint
from .config import ConfigError

PREVIOUS_RUN = ("metrics.json", "distilled", "checkpoint", "teacher_checkpoint")
"""What a distillation run leaves in its output directory (``teacher/`` is reused, not a run)."""


class OutputExistsError(ConfigError):
    """The output directory holds a previous run and neither resuming nor overwriting was asked."""


def resume_decision(output: str | Path, resume: bool = False, resume_if_present: bool = False,
                    overwrite: bool = False) -> bool:
    """Whether the run resumes, checked before any work: ``resume`` needs a checkpoint in
    ``output`` (of the distillation or of the teacher's fine-tuning), ``resume_if_present``
    resumes when there is one and starts afresh otherwise; a fresh run into a directory that
    holds a previous run needs ``overwrite``."""
    output = Path(output)
    from .finetune_checkpoint import finetune_checkpoint_settings

    present = (has_checkpoint(output / "checkpoint")
               or finetune_checkpoint_settings(output / "teacher_checkpoint") is not None)
    if resume and not present and not resume_if_present:
        raise CheckpointError(f"--resume: there is no checkpoint in {output} to continue from; run without --resume "
                              "to start afresh, or pass --resume-if-present to resume only when there is one")
    if resume or resume_if_present:
        if present:
            return True
        if resume_if_present:
            from .messages import log

            log(f"no checkpoint in {output}: starting from the beginning (--resume-if-present)")
    found = [name for name in PREVIOUS_RUN if (output / name).exists()]
    if found and not overwrite:
        raise OutputExistsError(f"{output} holds a previous run ({', '.join(found)}); pass --overwrite to replace it, "
                                "--resume to continue it, or choose another --output")
    for name in ("checkpoint", "teacher_checkpoint"):  # overwriting: no stale state for a later --resume
        shutil.rmtree(output / name, ignore_errors=True)
    return False


def _steps_done(meta_file: Path) -> str:
    try:
        return f" (step {int(json.loads(meta_file.read_text())['steps_done'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def stopped_state(output: str | Path, command: str) -> tuple[str, bool, str]:
    """After a run was stopped at once (a second signal): what its output directory really holds,
    in words; whether ``metakd COMMAND`` continues from there (else it starts again); and the flag
    that command needs: ``--resume``, ``--overwrite`` (a previous run is there) or ``""``."""
    from .checkpoint import META_FILE, located
    from .finetune_checkpoint import META_FILE as FINETUNE_META, finetune_checkpoint_settings

    output = Path(output)
    checkpoint = located(output / "checkpoint")
    if command == "distill" and has_checkpoint(checkpoint):
        return f"the last checkpoint in {checkpoint}{_steps_done(checkpoint / META_FILE)} is kept", True, "--resume"
    teacher = output / "teacher_checkpoint"
    if finetune_checkpoint_settings(teacher) is not None:
        return (f"the teacher's fine-tuning checkpoint in {teacher}{_steps_done(teacher / FINETUNE_META)} is kept",
                True, "--resume" if command == "distill" else "")  # finetune-teacher resumes it by itself
    previous = command == "distill" and any((output / name).exists() for name in PREVIOUS_RUN)
    return (f"no checkpoint was written yet, so there is nothing in {output} to resume", False,
            "--overwrite" if previous else "")
