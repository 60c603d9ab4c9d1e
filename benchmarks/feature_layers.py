"""Feature distillation from shallow / middle / deep teacher layers (see `metakd bench feature-layers --help`)."""

import sys

from metakd.bench.feature_layers import main

if __name__ == "__main__":
    sys.exit(main())
