"""The one-shot GPU suite: correctness on the device and KD vs LoRA vs full meta-update at LLM shapes
(see `metakd bench gpu --help`)."""

import sys

from metakd.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
