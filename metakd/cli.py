"""The ``metakd`` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .bench import BENCHMARKS
from .config import ConfigError
from .data import DataError
from .models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="metakd", description="Learning-to-teach knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"metakd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark (prints a table, writes results/NAME.{json,md,png})",
                           add_help=False)
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    if not argv or argv[0] != "bench" or len(argv) < 2 or argv[1] not in BENCHMARKS:
        parser.parse_args(argv)  # prints usage / errors and exits
        return 2
    module = importlib.import_module(BENCHMARKS[argv[1]])
    try:
        return module.main(argv[2:])
    except USER_ERRORS as exc:
        print(f"metakd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
