"""Saving a distillation result with the Hugging Face and peft APIs (``MetaDistiller.save``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import has_lora

if TYPE_CHECKING:
    from .distiller import MetaDistiller


def save_distilled(d: "MetaDistiller", directory: str | Path, tokenizer: Any = None,
                   student_tokenizer: Any = None) -> Path:
    """Save the result with the Hugging Face / peft APIs, safetensors only, through
    ``atomic_directory`` (a crash mid-save leaves the previous save intact; a kill between its two
    renames leaves the previous save as ``.NAME.old``, which nothing here restores):

    - ``student/``: the distilled student (LoRA adapters merged in when ``student_lora``),
      reloadable with ``AutoModel*.from_pretrained``; ``student_adapters/`` holds the bare
      adapters too (``PeftModel.from_pretrained`` on the original student);
    - ``teacher_adapters/`` (lora mode: ``PeftModel.from_pretrained(base_teacher, ...)``) or
      ``teacher/`` (full mode: the whole meta-updated teacher); nothing for plain KD;
    - ``feature_projections.safetensors`` when feature distillation learned projections;
    - ``distill_config.yaml``; ``tokenizer`` in ``teacher*/`` and in ``student/`` (where
      ``student_tokenizer``, when the student tokenizes differently, takes its place).
    """
    from safetensors.torch import save_file

    from .atomic import atomic_directory

    target = Path(directory)
    with atomic_directory(target) as tmp:
        student = d.student
        if has_lora(student):
            student.save_pretrained(str(tmp / "student_adapters"), safe_serialization=True)
            student = copy.deepcopy(student).merge_and_unload()
        student.save_pretrained(str(tmp / "student"), safe_serialization=True)
        teacher_dir = None
        if d.config.meta_update == "lora":
            teacher_dir = tmp / "teacher_adapters"
        elif d.config.meta_update == "full":
            teacher_dir = tmp / "teacher"
        if teacher_dir is not None:
            d.teacher.save_pretrained(str(teacher_dir), safe_serialization=True)
        if student_tokenizer is not None or tokenizer is not None:
            (student_tokenizer or tokenizer).save_pretrained(str(tmp / "student"))
        if tokenizer is not None and teacher_dir is not None:
            tokenizer.save_pretrained(str(teacher_dir))
        if len(d._student.projections):
            save_file({k: v.detach().cpu().contiguous() for k, v in d._student.projections.state_dict().items()},
                      str(tmp / "feature_projections.safetensors"))
        d.config.save_yaml(tmp / "distill_config.yaml")
    return target
