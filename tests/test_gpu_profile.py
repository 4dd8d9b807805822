"""benchmarks/gpu_profile.py, which gpu_check.sh runs on a GPU machine, as a CPU dry
run: it must not rot between the rare sessions that have a GPU."""

import os
import re
import subprocess
import sys

from helpers import TESTS_DIR, subprocess_env

SCRIPT = os.path.join(os.path.dirname(TESTS_DIR), "benchmarks", "gpu_profile.py")


def test_gpu_profile_dry_run_reports_every_contender():
    done = subprocess.run(
        [sys.executable, SCRIPT, "--device", "cpu", "--shape", "4,2,8,8"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    headers = re.findall(r"^## (\S+) (\S+) (\S+): ([0-9.]+) us a step", done.stdout, re.M)
    expected = {(kind, who, mode) for kind in ("rnn_tanh", "lstm", "gru")
                for who in ("rnnfused", "torch.nn") for mode in ("fwd", "fwdbwd")}
    assert {h[:3] for h in headers} == expected
    assert all(float(h[3]) > 0 for h in headers)
    # each contender's table names its op: the fused layer op for rnnfused
    assert "rnnfused::lstm_layer" in done.stdout and "rnnfused::gru_layer" in done.stdout
