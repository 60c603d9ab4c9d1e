"""Messages to the user: one line on stderr, said by the main process only (in a multi-process
run the others stay quiet), flushed at once so it interleaves with progress bars in order."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """Print ``message`` to stderr from the main process (rank 0) only."""
    from .distributed import env_rank

    if env_rank() == 0:  # multi-process runs: the main process speaks for all
        print(message, file=sys.stderr, flush=True)


__all__ = ["log"]
