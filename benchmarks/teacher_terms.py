"""What the anchored teacher-objective terms add to a LoRA meta-step (see `metakd bench teacher-terms --help`)."""

import sys

from metakd.bench.teacher_terms import main

if __name__ == "__main__":
    sys.exit(main())
