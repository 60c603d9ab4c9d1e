"""Does an anchored teacher objective make learning to teach help? (see `metakd bench anchored --help`)."""

import sys

from metakd.bench.anchored import main

if __name__ == "__main__":
    sys.exit(main())
