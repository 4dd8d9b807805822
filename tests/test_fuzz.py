"""The property-based fuzz run (tests/fuzz_cases.py) in a subprocess per CPU
instruction set, so that a crash (a signal) fails this test instead of killing
the test run. A few thousand derandomized cases per instruction set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import subprocess_env

import rnnfused

HERE = os.path.dirname(os.path.abspath(__file__))
# Examples per property (op; module, cell and backward-op garbage draw fewer): about
# 3,000 cases and 20 s per instruction set on one core.
EXAMPLES = 1500

pytestmark = pytest.mark.skipif(
    not rnnfused.backend_info()["extension"], reason="the compiled extension is not loaded"
)


# avx512 is the default where the CPU has it (the variable caps, never raises, the ISA);
# avx2 is the other vectorised kernel. "scalar" covers the loop CUDA's indexing shares.
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_fuzz_ops_and_modules(isa):
    # MALLOC_PERTURB_: glibc fills every allocation with garbage, so a kernel that
    # reads memory it never wrote gets garbage, not a lucky earlier tensor's values
    env = subprocess_env(RNNFUSED_CPU_ISA=isa, OMP_NUM_THREADS="1", MALLOC_PERTURB_="165")
    examples = EXAMPLES if isa != "scalar" else EXAMPLES // 3
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "fuzz_cases.py"), "--examples", str(examples)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode >= 0, f"the fuzz process died of signal {-proc.returncode}\n{report}"
    assert proc.returncode == 0, report
    order = ["scalar", "avx2", "avx512"]
    ran = proc.stdout.split("cpu_isa=", 1)[1].split()[0]
    assert order.index(ran) <= order.index(isa), report  # the variable caps the ISA
    assert "cases run:" in proc.stdout, report
