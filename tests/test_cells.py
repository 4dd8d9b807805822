"""rnnfused.RNNCell / LSTMCell / GRUCell against torch.nn cells holding the same weights."""

import copy
import pickle

import pytest
import torch

import rnnfused
from helpers import (
    CELL_KINDS,
    HIDDEN_SIZE,
    INPUT_SIZE,
    SEQ_LEN,
    assert_results_equal,
    make_kind_twins,
    module_spec,
    run_cell_loop,
    tolerances,
)

DTYPES = [torch.float32, torch.float64]
KIND = pytest.mark.parametrize("kind", CELL_KINDS)


def make_hx(kind, batch, device, dtype):
    """Initial state(s) as a tuple: (h,) or (h, c); batch None means unbatched (1-D)."""
    shape = (HIDDEN_SIZE,) if batch is None else (batch, HIDDEN_SIZE)
    n = 2 if kind == "lstm_cell" else 1
    return tuple(torch.randn(shape, device=device, dtype=dtype) for _ in range(n))


# Full product: 4 kinds x 2 x 2 x 2 x 2 = 64 cheap cases per device.
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@KIND
def test_cell_loop_matches_torch(kind, batched, with_hx, bias, dtype, device):
    """Python loop over SEQ_LEN steps, weighted loss over every step's state(s); compares the
    states of every step and the gradients of every x_t, of hx and of every parameter."""
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype, bias=bias)
    batch = 3 if batched else None
    xshape = (SEQ_LEN, batch, INPUT_SIZE) if batched else (SEQ_LEN, INPUT_SIZE)
    xs = torch.randn(xshape, device=device, dtype=dtype)
    hx = make_hx(kind, batch, device, dtype) if with_hx else None
    expected = run_cell_loop(ref, xs, hx)
    actual = run_cell_loop(fused, xs, hx)
    assert_results_equal(actual, expected, dtype, context=kind)
    # shapes: unbatched input gives unbatched state
    assert actual["state[0]"].shape == ((batch, HIDDEN_SIZE) if batched else (HIDDEN_SIZE,))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@KIND
def test_cell_single_step(kind, dtype, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype)
    x = torch.randn(4, INPUT_SIZE, device=device, dtype=dtype)
    hx = make_hx(kind, 4, device, dtype)
    state = hx if kind == "lstm_cell" else hx[0]
    out_ref = ref(x, state)
    out_fused = fused(x, state)
    assert type(out_fused) is type(out_ref)
    if isinstance(out_ref, tuple):
        assert len(out_fused) == len(out_ref)
    else:
        out_ref, out_fused = (out_ref,), (out_fused,)
    for a, b in zip(out_fused, out_ref):
        torch.testing.assert_close(a, b, **tolerances(dtype))


@KIND
def test_cell_zero_batch(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64)
    xs = torch.randn(2, 0, INPUT_SIZE, device=device, dtype=torch.float64)
    hx = make_hx(kind, 0, device, torch.float64)
    expected = run_cell_loop(ref, xs, hx)
    actual = run_cell_loop(fused, xs, hx)
    assert_results_equal(actual, expected, torch.float64, context=kind)
    assert actual["state[0]"].shape == (0, HIDDEN_SIZE)


@KIND
def test_cell_larger_input_than_hidden(kind, device):
    name, extra = module_spec(kind)
    ref = getattr(torch.nn, name)(13, 5, device=device, dtype=torch.float64, **extra)
    fused = getattr(rnnfused, name)(13, 5, device=device, dtype=torch.float64, **extra)
    fused.load_state_dict(ref.state_dict())
    xs = torch.randn(3, 2, 13, device=device, dtype=torch.float64)
    expected = run_cell_loop(ref, xs, None)
    actual = run_cell_loop(fused, xs, None)
    assert_results_equal(actual, expected, torch.float64, context=kind)


@KIND
def test_cell_plumbing(kind):
    ref, fused = make_kind_twins(kind, bias=False)
    name, _ = module_spec(kind)
    assert isinstance(fused, getattr(torch.nn, name))
    assert isinstance(fused, torch.nn.RNNCellBase)
    assert fused.extra_repr() == ref.extra_repr()
    assert repr(fused).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert list(fused.state_dict()) == list(ref.state_dict())
    # state_dict loads back into torch.nn
    other = getattr(torch.nn, name)(INPUT_SIZE, HIDDEN_SIZE, bias=False,
                                    **module_spec(kind)[1])
    other.load_state_dict(fused.state_dict())
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert type(clone) is type(fused)
        x = torch.randn(2, INPUT_SIZE)
        out_clone, out_other = clone(x), other(x)
        if not isinstance(out_clone, tuple):
            out_clone, out_other = (out_clone,), (out_other,)
        for a, b in zip(out_clone, out_other, strict=True):
            torch.testing.assert_close(a, b, **tolerances(torch.float32))


@KIND
def test_cell_double_conversion(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float32)
    ref.double()
    fused.double()
    xs = torch.randn(3, 2, INPUT_SIZE, device=device, dtype=torch.float64)
    assert_results_equal(run_cell_loop(fused, xs, None), run_cell_loop(ref, xs, None),
                         torch.float64, context=kind)


@KIND
def test_cell_parametrized_weight(kind, device):
    """weight_norm on weight_hh (not a plain parameter: the forward reads it through
    the parametrization): outputs and the gradient of the parametrization's
    parameters equal torch.nn's under the same parametrization."""
    from torch.nn.utils.parametrizations import weight_norm

    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64)
    ref, fused = weight_norm(ref, "weight_hh"), weight_norm(fused, "weight_hh")
    x = torch.randn(3, INPUT_SIZE, device=device, dtype=torch.float64)
    results = []
    for cell in (ref, fused):
        out = cell(x)
        out = out[0] if isinstance(out, tuple) else out
        original = cell.parametrizations.weight_hh.original0
        results.append((out, *torch.autograd.grad(out.square().sum(), [original])))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, **tolerances(torch.float64))


@pytest.mark.parametrize("hidden", [128, 512])
def test_gru_cell_one_row_state_gradient_as_accurate_as_torch_nn(hidden):
    """A GRUCell's state gradient is its direct part (z * d_h') plus d_recurrent @ W_hh.
    For one row the product is ATen's (MKL's gemv); added to the direct part as
    C += A B (addmm_), MKL summed the product's terms onto that large part, 2.3-3.1
    times as far from float64 as torch.nn's (RMS; H 512, 128). Formed apart and then
    added (CpuLaunch::gemm_nn), it is as close as torch.nn's: within 1.5 times here."""
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(64, hidden)
    fused = rnnfused.GRUCell(64, hidden)
    fused.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x, h, grad = torch.randn(1, 64), torch.randn(1, hidden) * 3, torch.randn(1, hidden)

    def state_gradient(module, dtype):
        h_in = h.to(dtype).requires_grad_()
        out = module(x.to(dtype), h_in)
        return torch.autograd.grad(out, h_in, grad.to(dtype))[0].double()

    exact = state_gradient(ref64, torch.float64)
    ours = (state_gradient(fused, torch.float32) - exact).pow(2).mean().sqrt()
    theirs = (state_gradient(ref, torch.float32) - exact).pow(2).mean().sqrt()
    assert ours <= 1.5 * theirs, f"RMS error {ours:.3g}, torch.nn's {theirs:.3g}"
