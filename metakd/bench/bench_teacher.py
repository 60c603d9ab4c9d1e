"""The benchmarks' task teacher: the base run's teacher fine-tuned on its task once and cached under
``$METAKD_CACHE/bench-teachers`` by the settings that shape it (``prepare_teacher``); a tiny random
BERT for ``teacher: tiny``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError

TEACHER_CACHE_VERSION = 1


def _tiny_teacher_dir(root: Path, num_labels: int) -> Path:
    """A tiny random BERT classifier with the bundled teacher's tokenizer, saved under ``root``."""
    from transformers import AutoTokenizer

    from ..models import embedded_teacher_path, tiny_classifier

    target = root / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_teacher_path()))
    model = tiny_classifier("bert", vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=4, num_heads=4,
                            num_labels=num_labels, max_positions=128, seed=0)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


def prepare_teacher(run, fine_tune: bool = True, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the base run's teacher on its task once; cached under ``METAKD_CACHE`` by the
    settings that shape it. Returns where the task teacher lies, how it scored and how many training
    examples it fine-tuned on (``n_train``; None for a teacher used as it is)."""
    from ..finetune import cache_dir, cache_key
    from ..run import finetune_teacher, label_count, load_data
    from ..teacher_cache import finetune_identity
    from ..synthetic import splits_identity

    if not fine_tune:
        if run.teacher == "tiny" or run.teacher.startswith("new:"):
            raise ConfigError(f"--no-finetune needs a trained teacher; {run.teacher!r} is trained by the sweep")
        return {"teacher_dir": run.teacher, "cached": False, "seconds": 0.0, "eval": None, "n_train": None}
    key = cache_key(kind="sweep-teacher", version=TEACHER_CACHE_VERSION, teacher=run.teacher, task=run.task,
                    data=run.data, text_column=run.text_column, label_column=run.label_column,
                    n_train=run.finetune["n_train"] or run.n_train, n_eval=run.n_eval,
                    finetune=finetune_identity(run.finetune),
                    **({"data_seed": run.data_seed} if run.data_seed is not None else {}),
                    **({"distill_pool": run.n_train} if run.finetune["disjoint"] else {}),
                    teacher_config=run.teacher_config, max_length=run.distill.max_length, seed=run.distill.seed,
                    **splits_identity(run.data))
    target = cache_dir() / "bench-teachers" / key
    report_path = target / "teacher" / "metakd_finetune.json"
    start = time.perf_counter()
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        return {"teacher_dir": str(target / "teacher"), "cached": True, "seconds": time.perf_counter() - start,
                "eval": report.get("eval"), "n_train": report.get("n_train")}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        source = run
        if run.teacher == "tiny":
            splits = load_data(run)
            source = replace(run, teacher=str(_tiny_teacher_dir(tmp, label_count(run, splits))))
        print(f"fine-tuning the teacher ({run.teacher}) on the task once; cached in {target}", file=sys.stderr)
        report = finetune_teacher(replace(source, output=str(tmp)), progress=progress)
        report_file = tmp / "teacher" / "metakd_finetune.json"
        report_file.write_text(json.dumps(dict(report, saved=str(target / "teacher")), indent=2, default=str))
        if target.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"teacher_dir": str(target / "teacher"), "cached": False, "seconds": time.perf_counter() - start,
            "eval": report["eval"], "n_train": report.get("n_train")}


__all__ = ["TEACHER_CACHE_VERSION", "prepare_teacher"]
