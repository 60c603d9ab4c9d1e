"""Plain KD vs LoRA meta-update vs full meta-update (see `metakd bench meta-update --help`)."""

import sys

from metakd.bench.meta_update import main

if __name__ == "__main__":
    sys.exit(main())
