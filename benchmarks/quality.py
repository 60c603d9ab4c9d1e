"""Does learning to teach make a better student? (see `metakd bench quality --help`)."""

import sys

from metakd.bench.quality import main

if __name__ == "__main__":
    sys.exit(main())
