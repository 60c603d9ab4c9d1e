"""What the user sees: messages (one line on stderr, said by the main process only — in a
multi-process run the others stay quiet — flushed at once so it interleaves with progress bars in
order), and Hugging Face's own progress bars, off where metakd's are."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def log(message: str) -> None:
    """Print ``message`` to stderr from the main process (rank 0) only."""
    from .distributed import env_rank

    if env_rank() == 0:  # multi-process runs: the main process speaks for all
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def hub_progress_bars(enabled: bool, datasets_too: bool = False) -> Iterator[None]:
    """Hugging Face's own progress bars (transformers' "Loading weights" and "Writing model shards",
    huggingface_hub's downloads, and with ``datasets_too`` those of ``datasets``) off unless
    ``enabled``; restored as they were afterwards."""
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    restore = []
    if hf_logging.is_progress_bar_enabled():
        restore.append(hf_logging.enable_progress_bar)
    if not hub_utils.are_progress_bars_disabled():
        restore.append(hub_utils.enable_progress_bars)
    hf_logging.disable_progress_bar()  # transformers' bars, and huggingface_hub's
    if datasets_too:
        from datasets.utils import logging as ds_logging

        if ds_logging.is_progress_bar_enabled():
            restore.append(ds_logging.enable_progress_bar)
        ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        for undo in restore:
            undo()


__all__ = ["hub_progress_bars", "log"]
