import os
import sys
import zlib

import pytest
import torch

# helpers.py (next to this file) holds the twin builder make_twins(name, *args, device=,
# dtype=, **kwargs) -> (torch.nn module, rnnfused module with the same weights) and the
# comparison helpers; make it importable under any pytest import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CUDA = torch.cuda.is_available()

# torch.nn's float32 RNNs on CUDA run in cuDNN, which rounds its products' inputs to
# TF32 (10-bit mantissa) by default: errors near 1e-3, where float32 gives 1e-6.
# rnnfused's GEMMs follow torch.backends.cuda.matmul (full float32 by default), so
# float32 results are compared with cuDNN's full-precision float32.
torch.backends.cudnn.allow_tf32 = False

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device present")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every test runs on the CPU, and on CUDA when a GPU is present."""
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test, different between tests so that they see different data."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
