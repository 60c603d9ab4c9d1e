"""Fine-tuned teachers, reused safely: each is recorded with what it was trained from (the base
teacher, a fingerprint of the data, the label names, the seed and the fine-tuning settings),
cached under ``$METAKD_CACHE/finetuned/KEY`` so any output directory reuses it, and checked when
``OUTPUT/teacher`` is picked up, so a teacher fine-tuned for another run is never taken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .atomic import atomic_directory
from .checkpoint import file_sha256
from .finetune import cache_dir, cache_key

if TYPE_CHECKING:
    from .run import RunConfig

RECORD = "metakd_finetune.json"


def source_identity(source: str) -> dict[str, Any]:
    """A model source: a local directory by its resolved path and its files' names, sizes and
    modification times; anything else (a hub id, new:ARCH) by name."""
    path = Path(source)
    if path.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
        return {"path": str(path.resolve()), "files": files}
    return {"name": source}


def data_identity(data: str | dict) -> dict[str, Any]:
    """The data spec and the SHA-256 of every local file it reads (of a directory: every file in it)."""
    specs = list(data.values()) if isinstance(data, dict) else [data]
    files = {}
    for spec in specs:
        path = Path(spec)
        paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        files.update({str(p.resolve()): file_sha256(p) for p in paths})
    from .synthetic import splits_identity

    return {"spec": data, "files": files, **splits_identity(data)}


def teacher_origin(run: "RunConfig", base: str, label_names: Sequence[str] | None) -> dict[str, Any]:
    """What a fine-tuned teacher is trained from: its cache key is a hash of this."""
    return json.loads(json.dumps({
        "teacher": run.teacher, "base": source_identity(base), "teacher_config": run.teacher_config,
        "data": data_identity(run.data), "task": run.task, "text_column": run.text_column,
        "label_column": run.label_column, "header": run.header, "label_map": run.label_map,
        "label_names": list(label_names) if label_names is not None else None,
        "n_train": run.finetune.get("n_train") or run.n_train,  # the examples the teacher trains on
        "seed": run.distill.seed, "max_length": run.distill.max_length, "finetune": run.finetune,
    }, default=str))


def origin_difference(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields in which two origins differ (the file list of the base teacher counts as 'base')."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def recorded_origin(teacher_dir: Path) -> dict[str, Any] | None:
    """The origin a saved fine-tuned teacher records (None: no record, e.g. saved by hand or by an
    older metakd)."""
    path = Path(teacher_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("origin")
    except json.JSONDecodeError:
        return None


def cached_teacher(origin: dict[str, Any]) -> Path | None:
    """The cached fine-tuned teacher for ``origin``, if there is one."""
    target = cache_dir() / "finetuned" / cache_key(**origin)
    return target if (target / RECORD).is_file() and (target / "config.json").is_file() else None


def copy_teacher(source: Path, target: Path) -> Path:
    """Copy a saved teacher directory, all at once."""
    with atomic_directory(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def store_teacher(teacher_dir: Path, origin: dict[str, Any]) -> Path:
    """Put a copy of the fine-tuned teacher in ``teacher_dir`` into the cache under its origin's key."""
    return copy_teacher(teacher_dir, cache_dir() / "finetuned" / cache_key(**origin))
