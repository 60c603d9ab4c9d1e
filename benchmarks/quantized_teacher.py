"""A quantized teacher under the LoRA meta-update: fp32 / bf16 / 8-bit / 4-bit NF4 / FP4
(see `metakd bench quantized-teacher --help`)."""

import sys

from metakd.bench.quantized_teacher import main

if __name__ == "__main__":
    sys.exit(main())
