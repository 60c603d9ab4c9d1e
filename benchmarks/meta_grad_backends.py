"""Cost of the meta-gradient backends higher / jvp / finite_diff (see `metakd bench meta-grad --help`)."""

import sys

from metakd.bench.meta_grad import main

if __name__ == "__main__":
    sys.exit(main())
