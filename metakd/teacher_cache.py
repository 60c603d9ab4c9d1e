"""Fine-tuned teachers, reused safely: each is recorded with what it was trained from (the base
teacher, a fingerprint of the data, the label names, the seed, the dtype, the fine-tuning settings
and the version of the fine-tuning code),
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


HUB_NOTE = ("not in the local hub cache when the run started: keyed by its name only, so a new upload under "
            "this name is not noticed (delete the cache entry to fine-tune it again)")


def _files_under(path: Path) -> list[Path]:
    """Every file under ``path``, at any depth (hidden ones too), in a stable order."""
    return sorted(p for p in path.rglob("*") if p.is_file())


def hub_revision(repo_id: str) -> str | None:
    """The commit of the hub model ``repo_id`` in the local hub cache (the snapshot its config.json
    resolves to, without a request), or None when it is not there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id or cache: no revision, said in the note
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def source_identity(source: str) -> dict[str, Any]:
    """A model source: a local directory by its resolved path and the names (relative, at any
    depth), sizes and modification times of its files; a hub id by name and the commit of its
    snapshot in the local hub cache (else with ``HUB_NOTE``); new:ARCH by name."""
    from .data.hub import is_hub_id

    path = Path(source)
    if path.is_dir():
        files = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in _files_under(path)]
        return {"path": str(path.resolve()), "files": files}
    if not source.startswith("new:") and is_hub_id(source):
        revision = hub_revision(source)
        return {"name": source, "revision": revision} if revision else {"name": source, "note": HUB_NOTE}
    return {"name": source}


def data_identity(data: str | dict) -> dict[str, Any]:
    """The data spec and the SHA-256 of every local file it reads (of a directory: every file
    under it, at any depth)."""
    specs = list(data.values()) if isinstance(data, dict) else [data]
    files = {}
    for spec in specs:
        path = Path(spec)
        paths = _files_under(path) if path.is_dir() else [path] if path.is_file() else []
        files.update({str(p.resolve()): file_sha256(p) for p in paths})
    from .synthetic import splits_identity

    return {"spec": data, "files": files, **splits_identity(data)}


def finetune_identity(finetune: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning settings as keys record them: ``disjoint`` only when true, so teachers
    cached before it existed keep their key."""
    return {k: v for k, v in finetune.items() if k != "disjoint" or v}


def teacher_origin(run: "RunConfig", base: str, label_names: Sequence[str] | None) -> dict[str, Any]:
    """What a fine-tuned teacher is trained from: its cache key is a hash of this. ``code``: the
    fine-tuning code's version (``metakd.finetune.FINETUNE_VERSION``) and metakd's."""
    from . import __version__
    from .finetune import FINETUNE_VERSION

    return json.loads(json.dumps({
        "teacher": run.teacher, "base": source_identity(base), "teacher_config": run.teacher_config,
        "data": data_identity(run.data), "task": run.task, "text_column": run.text_column,
        "label_column": run.label_column, "header": run.header, "label_map": run.label_map,
        "label_names": list(label_names) if label_names is not None else None,
        "n_train": run.finetune.get("n_train") or run.n_train,  # the examples the teacher trains on
        "seed": run.distill.seed, "max_length": run.distill.max_length, "finetune": finetune_identity(run.finetune),
        "teacher_dtype": run.teacher_dtype or "fp32",  # the dtype the teacher is loaded and fine-tuned in
        "code": {"finetune": FINETUNE_VERSION, "metakd": __version__},
        # set only when used, so teachers cached before these settings existed keep their key
        **({"data_seed": run.data_seed} if run.data_seed is not None else {}),
        **({"distill_pool": run.n_train} if run.finetune.get("disjoint") else {}),
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
