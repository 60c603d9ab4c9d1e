"""Compression of the distilled student: pruning and quantization vs accuracy and size (see
`metakd bench compression --help`)."""

import sys

from metakd.bench.compression import main

if __name__ == "__main__":
    sys.exit(main())
