"""torch.autocast: rnnfused follows torch.nn's dtype rules for results, runs its kernels in the
autocast dtype (float32 accumulation), and its error against a float64 reference is at most
twice torch.nn's own error under the same autocast.

torch.nn's result dtypes on the CPU come from where its state updates run: matmuls in the low
dtype, the GRU's h and the LSTM's c updated in the promotion with the incoming state's dtype,
except oneDNN's LSTM (dense, unprojected), which runs wholly in the low dtype. On CUDA,
cuDNN and the autocast cell ops run wholly in the low dtype.
"""

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import (
    CELL_KINDS, INPUT_SIZE, MODULE_KINDS, flat_tensors, make_kind_twins, weighted_sum,
)

AUTOCAST = {"cpu": [torch.bfloat16], "cuda": [torch.float16, torch.bfloat16]}
FORMS = ["default_state", "float32_state", "low_state", "packed"]




def _arguments(module, form, cell, low, device):
    B, T = 3, 5
    x = torch.randn((B, INPUT_SIZE) if cell else (T, B, INPUT_SIZE), device=device)
    if form == "packed":
        return (pack_padded_sequence(x, torch.tensor([5, 3, 2])),)
    if form == "default_state":
        return (x,)
    dtype = low if form == "low_state" else torch.float32
    if cell:
        shape = (B, module.hidden_size)
    else:
        layers = module.num_layers * (2 if module.bidirectional else 1)
        shape = (layers, B, getattr(module, "proj_size", 0) or module.hidden_size)
    h = torch.randn(shape, device=device, dtype=dtype)
    if isinstance(module, (torch.nn.LSTM, torch.nn.LSTMCell)):
        c_shape = (*shape[:-1], module.hidden_size)
        return (x, (h, torch.randn(c_shape, device=device, dtype=dtype)))
    return (x, h)


def _dtypes_under_autocast(module, args, device, low):
    with torch.autocast(device, dtype=low):
        return [t.dtype for t in flat_tensors(module(*args))]


def _torch_nn(run, *args):
    """run(*args) for the torch.nn module, skipping where torch.nn itself cannot run
    the case on this CPU: its oneDNN LSTM in bfloat16 needs AVX-512 (on AVX2 CPUs,
    AMD EPYC Zen 2 measured, oneDNN refuses the primitive), while rnnfused runs it."""
    try:
        return run(*args)
    except RuntimeError as error:
        if "could not create a primitive descriptor" in str(error):
            pytest.skip(f"torch.nn cannot run this on this CPU: {error}")
        raise


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_result_dtypes_follow_torch(kind, form, device):
    cell = kind.endswith("_cell")
    if cell and form == "packed":
        pytest.skip("cells take no PackedSequence")
    ref, fused = make_kind_twins(kind, device=device, **({} if cell else dict(num_layers=2)))
    for low in AUTOCAST[device]:
        args = _arguments(ref, form, cell, low, device)
        expected = _torch_nn(_dtypes_under_autocast, ref, args, device, low)
        assert _dtypes_under_autocast(fused, args, device, low) == expected, low


def _errors(module, exact_module, x, device, low):
    """Relative errors (outputs, gradients) of module under autocast against exact_module in
    float64, over each group of tensors taken together (see test_low_precision.py)."""
    def run(m, x, autocast):
        x = x.detach().clone().requires_grad_(True)
        with torch.autocast(device, dtype=low, enabled=autocast):
            outs = [t.double() for t in flat_tensors(m(x))]
        grads = torch.autograd.grad(weighted_sum(outs), [x, *m.parameters()])
        return outs, [g.double() for g in grads]

    exact = run(exact_module, x.double(), False)
    actual = run(module, x, True)
    return [
        (sum(((a - e) ** 2).sum() for a, e in zip(got, want)) /
         sum((e ** 2).sum() for e in want)).sqrt().item()
        for got, want in zip(actual, exact)
    ]


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_error_within_twice_torch(kind, device):
    cell = kind.endswith("_cell")
    ref, fused = make_kind_twins(kind, device=device,
                                 **({} if cell else dict(num_layers=2, bidirectional=True)))
    exact = copy.deepcopy(ref).double()
    x = torch.randn((8, INPUT_SIZE) if cell else (12, 8, INPUT_SIZE), device=device)
    for low in AUTOCAST[device]:
        err_torch = _torch_nn(_errors, ref, exact, x, device, low)
        err_fused = _errors(fused, exact, x, device, low)
        # ReLU's gradient is discontinuous (see test_low_precision.py): forward only
        groups = 1 if "relu" in kind else 2
        for group, (e_fused, e_torch) in enumerate(zip(err_fused[:groups], err_torch)):
            assert e_fused <= max(2 * e_torch, torch.finfo(low).eps), (low, group, e_fused, e_torch)


def test_fused_kernel_runs_in_the_low_dtype(device, monkeypatch):
    """The op itself receives low-precision tensors (it is not run in float32 and cast)."""
    from rnnfused import functional, ops

    _, fused = make_kind_twins("gru", device=device)
    if functional.backend_for(device, torch.bfloat16) != "fused":
        pytest.skip("no fused kernel for bfloat16 here")
    seen = []
    original = ops.gru_stack  # the eager fused stack's one call: (input, batch_sizes, hx, weights, ...)

    def spy(input, batch_sizes, hx, flat_weights, *args):
        seen.append((input.dtype, hx.dtype, flat_weights[0].dtype))
        return original(input, batch_sizes, hx, flat_weights, *args)

    monkeypatch.setattr(ops, "gru_stack", spy)
    with torch.autocast(device, dtype=torch.bfloat16):
        fused(torch.randn(4, 2, INPUT_SIZE, device=device))
    # on CUDA torch.nn's layers run cuDNN in float16 under any autocast dtype, and so
    # does rnnfused (functional._stack_autocast_dtype)
    low = torch.float16 if device == "cuda" else torch.bfloat16
    assert seen == [(low,) * 3]
