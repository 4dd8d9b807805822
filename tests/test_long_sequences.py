"""T = 100,000 steps: no recursion or stack growth (run under a 1 MB stack limit),
inference memory constant in T beyond the output, training memory linear in T.

Each measurement runs in a fresh subprocess and reads its peak resident memory,
since torch's CPU allocations are invisible to tracemalloc: the high-water mark
(VmHWM) reset to the current RSS just before the call (`clear_refs` 5), so that a
peak left by the import or the warm-up cannot hide part of the call's growth
(ru_maxrss, which can't be reset, did: 3 MB measured for a 16 MB call)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
from helpers import subprocess_env

import rnnfused

pytestmark = pytest.mark.skipif(
    not rnnfused.backend_info()["extension"], reason="the compiled extension is not loaded"
)

I = H = 8

# Prints {"base": RSS before the call, "peak": the peak RSS after, "out": output bytes}.
SCRIPT = r"""
import json, sys
import torch, rnnfused
name, T, train = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
module = getattr(rnnfused, name)({I}, {H})
x = torch.randn(T, 1, {I}, requires_grad=train)
warm = module(x[:100])  # first-call allocations (BLAS buffers, dispatch tables)
del warm
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS")
peak = lambda: status("VmHWM")
if train:
    out, _ = module(x)
    out.sum().backward()
else:
    with torch.no_grad():
        out, _ = module(x)
assert torch.isfinite(out).all()
print(json.dumps(dict(base=base, peak=peak(), out=out.numel() * out.element_size())))
""".replace("{I}", str(I)).replace("{H}", str(H))


def _limit_stack():
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))


def measure(name: str, steps: int, train: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, str(steps), "1" if train else "0"],
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=240, preexec_fn=_limit_stack,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["growth"] = result["peak"] - result["base"]
    return result


@pytest.mark.parametrize("name", ["LSTM", "GRU"])  # RNN saves nothing beyond its output
def test_inference_memory_constant_in_T(name):
    """no_grad forward at T = 25,000 and 100,000: the peak grows by no more than the
    extra output (plus 4 MB of allocator slack). A saved workspace would add 4H or
    5H floats a step (12-16 MB more at T = 100,000)."""
    short, long = measure(name, 25_000, False), measure(name, 100_000, False)
    extra_out = long["out"] - short["out"]
    assert long["growth"] - short["growth"] <= extra_out + 4 * 2**20, (short, long)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_training_memory_linear_in_T(name):
    """forward + backward at T = 25,000 and 100,000: growth at most ~4x (linear, with
    25% slack) and at most 1 KB per step (B = 1, H = 8: what the backward needs is
    ~100 floats a step); the 1 MB stack limit shows there is no recursion over steps."""
    short, long = measure(name, 25_000, True), measure(name, 100_000, True)
    assert long["growth"] <= 5 * max(short["growth"], 2**20), (short, long)
    assert long["growth"] <= 100_000 * 1024, (short, long)
