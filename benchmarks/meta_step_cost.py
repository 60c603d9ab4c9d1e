"""Meta-step cost vs plain KD with teacher_layers, meta_every, meta_batch_size (see `metakd bench meta-step-cost --help`)."""

import sys

from metakd.bench.meta_step_cost import main

if __name__ == "__main__":
    sys.exit(main())
