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


def follow_umask(root: str | Path) -> None:
    """Give every file under ``root`` the mode ``open`` gives a new file under the process's umask
    (0o666 & ~umask, execute bits kept) and every directory ``directory_mode()``. Writers that go
    through a temporary file (safetensors' ``save_file`` and so ``save_pretrained`` write
    ``*.safetensors`` via ``mkstemp``, which makes them 0600) would otherwise leave weight files
    readable by their owner only, unlike the JSON beside them."""
    dirs = directory_mode()
    mask = 0o777 & ~dirs
    for path in [Path(root), *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(dirs)
        elif path.is_file():
            path.chmod((0o666 | (path.stat().st_mode & 0o111)) & ~mask)


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
        follow_umask(tmp)
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
