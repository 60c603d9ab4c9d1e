"""torch.profiler over the phases of a meta-step (see `metakd bench profile-meta-step --help`)."""

import sys

from metakd.bench.profile_meta_step import main

if __name__ == "__main__":
    sys.exit(main())
