"""bitsandbytes stays out of a run that does not ask for a quantized model, and its kernel-hub
message ("Failed to load CPU gemm_4bit_forward from kernels-community") never reaches the user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_and_help_do_not_import_bitsandbytes():
    proc = _python(
        "import sys, contextlib, io\n"
        "import metakd\n"
        "assert 'bitsandbytes' not in sys.modules, 'import metakd'\n"
        "from metakd.cli import main\n"
        "for argv in (['--help'], ['bench', 'meta-update', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    assert 'bitsandbytes' not in sys.modules, argv\n"
        "print('clean')\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "clean", proc.stderr[-2000:]


@pytest.mark.slow
def test_4bit_load_prints_no_kernel_hub_message():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the 'quant' extra")
    proc = _python(
        "import torch\n"
        "from metakd.models import tiny_classifier\n"
        "from metakd.quantization import quantize\n"
        "q = quantize(tiny_classifier('bert', hidden_size=64), 4, device='cpu').eval()\n"
        "with torch.no_grad():\n"
        "    q(input_ids=torch.ones(1, 4, dtype=torch.long))\n"
        "print('quantized', q.is_loaded_in_4bit)\n")
    assert proc.returncode == 0 and "quantized True" in proc.stdout, proc.stderr[-2000:]
    assert "kernels-community" not in proc.stderr and "gemm_4bit_forward" not in proc.stderr, proc.stderr[-2000:]
