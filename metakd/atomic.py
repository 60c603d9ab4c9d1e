"""Write a directory all at once: a crash or kill mid-write leaves the previous version (or
nothing), never a half-written one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def directory_mode() -> int:
    """The mode ``mkdir`` gives a new directory under the process's umask (0o777 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; when the block ends without an error it
    replaces ``target`` (renames, so readers never see a partial directory), else it is removed.
    Between the two renames the previous version is ``.NAME.old`` (``metakd.checkpoint`` falls back
    to it after a kill in that instant)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(directory_mode())  # mkdtemp makes it 0700; the result gets the user's umask like any mkdir
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        old = target.with_name(f".{target.name}.old")
        if not target.exists() and old.exists():  # interrupted between the two renames: put the old one back
            old.rename(target)
        raise
