"""Student LoRA vs full fine-tuning, with a LoRA rank grid (see `metakd bench student-lora-vs-full --help`)."""

import sys

from metakd.bench.student_lora_vs_full import main

if __name__ == "__main__":
    sys.exit(main())
