"""Plain KD vs LoRA meta-KD vs full meta-KD across seeds (see `metakd bench kd-vs-meta --help`)."""

import sys

from metakd.bench.kd_vs_meta import main

if __name__ == "__main__":
    sys.exit(main())
