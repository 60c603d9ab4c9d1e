"""Memory and time of the chunked token-level loss (see `metakd bench lm-chunking --help`)."""

import sys

from metakd.bench.lm_chunking import main

if __name__ == "__main__":
    sys.exit(main())
