"""How the cost of a meta-step grows with the teacher (see `metakd bench scaling --help`)."""

import sys

from metakd.bench.scaling import main

if __name__ == "__main__":
    sys.exit(main())
