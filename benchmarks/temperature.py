"""Distillation temperature sweep (see `metakd bench temperature --help`)."""

import sys

from metakd.bench.temperature import main

if __name__ == "__main__":
    sys.exit(main())
