"""The torch.ops.rnnfused.* layer ops themselves: against the reference path,
gradcheck in float64, opcheck (schema, fake kernel, autograd registration), the
gradient mask, and garbage arguments raising Python errors."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import rnnfused
from rnnfused import ops, reference

from helpers import BackwardSpy, cpu_flags_and_vendor

pytestmark = pytest.mark.skipif(
    not rnnfused.backend_info()["extension"], reason="the compiled extension is not loaded"
)

I, H, P, B, T = 3, 4, 2, 3, 4
LENGTHS = [4, 2, 2]  # a packed batch: B sequences, non-increasing lengths
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_proj": 4, "gru": 3}


def make_args(kind: str, packed: bool, bias: bool, device: str, dtype=torch.float64, grad=True):
    """Random arguments of the kind's forward op (without the trailing flags)."""
    gates = GATES[kind]
    out = P if kind == "lstm_proj" else H

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)

    if packed:
        batch_sizes = torch.tensor(
            [sum(length > t for length in LENGTHS) for t in range(max(LENGTHS))], dtype=torch.long
        )
        input = rand(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        input = rand(T, B, I)
    args = dict(
        input=input, batch_sizes=batch_sizes, hx=rand(B, out),
        w_ih=rand(gates * H, I), w_hh=rand(gates * H, out),
        b_ih=rand(gates * H) if bias else None, b_hh=rand(gates * H) if bias else None,
    )
    if kind.startswith("lstm"):
        args["cx"] = rand(B, H)
        args["w_hr"] = rand(P, H) if kind == "lstm_proj" else None
    return args


def run(kind: str, fn_module, args: dict, reverse: bool):
    """Calls rnnfused.ops or rnnfused.reference with `args`; returns the outputs."""
    a = args
    if kind.startswith("lstm"):
        return fn_module.lstm_layer(
            a["input"], a["batch_sizes"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"],
            a["b_hh"], a["w_hr"], reverse,
        )
    if kind == "gru":
        return fn_module.gru_layer(
            a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
            reverse,
        )
    return fn_module.rnn_layer(
        a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
        kind == "rnn_relu", reverse,
    )


GRID = list(itertools.product(KINDS, [False, True], [False, True], [True, False]))
GRID_IDS = [f"{k}-{'packed' if p else 'dense'}-{'rev' if r else 'fwd'}-{'bias' if b else 'nobias'}"
            for k, p, r, b in GRID]


@pytest.mark.parametrize("kind,packed,reverse,bias", GRID, ids=GRID_IDS)
def test_matches_reference(kind, packed, reverse, bias, device):
    """Outputs and every gradient equal the pure-PyTorch reference (float64)."""
    args = make_args(kind, packed, bias, device)
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    results = []
    for fn_module in (ops, reference):
        outputs = run(kind, fn_module, args, reverse)
        weights = [torch.randn_like(o) for o in outputs] if not results else results[0][1]
        loss = sum((o * w).sum() for o, w in zip(outputs, weights))
        results.append((outputs, weights, torch.autograd.grad(loss, leaves)))
    (fused_out, _, fused_grads), (ref_out, _, ref_grads) = results
    for got, want in zip(fused_out, ref_out):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind,packed,reverse,bias", GRID, ids=GRID_IDS)
def test_gradcheck(kind, packed, reverse, bias, device):
    """Finite differences agree with the fused backward op for every input."""
    args = make_args(kind, packed, bias, device)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]

    def fn(*tensors):
        return run(kind, ops, {**args, **dict(zip(names, tensors))}, reverse)

    assert torch.autograd.gradcheck(fn, [args[n] for n in names], eps=1e-6, atol=1e-7)


def _op_args(kind: str, args: dict, reverse: bool, need_workspace: bool = True) -> tuple:
    a = args
    if kind.startswith("lstm"):
        return (a["input"], a["batch_sizes"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"],
                a["b_hh"], a["w_hr"], reverse, need_workspace)
    if kind == "gru":
        return (a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                a["b_hh"], reverse, need_workspace)
    return (a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
            kind == "rnn_relu", reverse)


def _op(kind: str):
    name = "lstm_layer" if kind.startswith("lstm") else "gru_layer" if kind == "gru" else "rnn_layer"
    return getattr(torch.ops.rnnfused, name).default


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_opcheck_forward(kind, packed, device):
    """Schema, fake kernel (incl. dynamic shapes) and autograd registration of the forward ops."""
    args = make_args(kind, packed, True, device)
    torch.library.opcheck(_op(kind), _op_args(kind, args, reverse=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_opcheck_backward(kind, packed, device):
    """The backward ops under opcheck, called with what the forward saved."""
    args = make_args(kind, packed, True, device, grad=False)
    fwd = _op(kind)(*_op_args(kind, args, reverse=False))
    output = fwd[0]
    a = args
    mask = [True] * 6 + [kind == "lstm_proj"]
    if kind.startswith("lstm"):
        op = torch.ops.rnnfused.lstm_layer_backward.default
        bargs = (torch.randn_like(output), torch.randn_like(a["hx"]), torch.randn_like(a["cx"]),
                 a["input"], a["batch_sizes"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["w_hr"],
                 output, fwd[3], fwd[4], False, mask)
    elif kind == "gru":
        op = torch.ops.rnnfused.gru_layer_backward.default
        bargs = (torch.randn_like(output), torch.randn_like(a["hx"]), a["input"], a["batch_sizes"],
                 a["hx"], a["w_ih"], a["w_hh"], output, fwd[2], False, mask)
    else:
        op = torch.ops.rnnfused.rnn_layer_backward.default
        bargs = (torch.randn_like(output), torch.randn_like(a["hx"]), a["input"], a["batch_sizes"],
                 a["hx"], a["w_ih"], a["w_hh"], output, kind == "rnn_relu", False, mask)
    torch.library.opcheck(op, bargs, test_utils=("test_schema", "test_faketensor"))
    # Each gradient is formed exactly where the mask asks for it.
    for off in range(len(mask)):
        partial = [m and i != off for i, m in enumerate(mask)]
        grads = op(*bargs[:-1], partial)
        full = op(*bargs)
        index = {0: [0], 1: [1, 2] if kind.startswith("lstm") else [1]}.get(off)
        if index is None:
            index = [off + 1] if kind.startswith("lstm") else [off]
        for i in index:
            if mask[off]:
                assert grads[i].numel() == 0 and full[i].numel() > 0, (off, i)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_mask(kind, device):
    """Only hx needs a gradient: the backward op forms that one (equal to the
    reference) and returns empty tensors for the input and the weights."""
    args = make_args(kind, False, True, device, grad=False)
    args["hx"].requires_grad_(True)
    with BackwardSpy() as spy:
        outputs = run(kind, ops, args, reverse=False)
        (grad,) = torch.autograd.grad(outputs[0].sum(), [args["hx"]])
    (expected,) = torch.autograd.grad(run(kind, reference, args, False)[0].sum(), [args["hx"]])
    torch.testing.assert_close(grad, expected)
    (mask, grads), = spy.calls
    assert list(mask) == [False, True, False, False, False, False, False]
    assert grads[0].numel() == 0  # input
    assert all(g.numel() == 0 for g in grads[2 if kind == "gru" or kind.startswith("rnn") else 3 :])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("create_graph", [False, True], ids=["fused", "graph"])
def test_loss_on_one_output(kind, create_graph, device):
    """A loss on one output only (the others' gradients arrive undefined and the
    backward takes zeros for them): every gradient equals the reference's, on the
    fused backward and on the differentiable one (create_graph)."""
    args = make_args(kind, True, True, device)
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    for which in range(3 if kind.startswith("lstm") else 2):
        results = []
        for fn_module in (ops, reference):
            output = run(kind, fn_module, args, reverse=True)[which]
            results.append(torch.autograd.grad((output * output).sum(), leaves,
                                               create_graph=create_graph))
        for got, want in zip(*results, strict=True):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_runs_fused(kind, dtype, device):
    """float32/bfloat16 (float32 accumulation) stay close to the float64 result."""
    args = make_args(kind, True, True, device, dtype=torch.float64, grad=False)
    want = run(kind, ops, args, reverse=True)
    low = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
           for k, v in args.items()}
    got = run(kind, ops, low, reverse=True)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)


# ---------------------------------------------------------------- garbage in, errors out


def _bad_cases(device):
    """(description, callable, expected fragment of the message)."""
    def lstm(*args):
        return torch.ops.rnnfused.lstm_layer.default(*args, True)

    def gru(*args):
        return torch.ops.rnnfused.gru_layer.default(*args, True)

    f = dict(device=device, dtype=torch.float32)
    x, h, c = torch.randn(T, B, I, **f), torch.randn(B, H, **f), torch.randn(B, H, **f)
    w_ih, w_hh = torch.randn(4 * H, I, **f), torch.randn(4 * H, H, **f)
    bs = torch.tensor([3, 2, 2, 1])
    xp = torch.randn(8, I, **f)
    return [
        ("input 2-D without batch_sizes", lambda: lstm(x[0], None, h, c, w_ih, w_hh, None, None, None, False), "'input' to have 3 dimensions"),
        ("input size mismatch", lambda: lstm(x[..., :2], None, h, c, w_ih, w_hh, None, None, None, False), "input"),
        ("w_ih not a multiple of 4", lambda: lstm(x, None, h, c, w_ih[:5], w_hh, None, None, None, False), "multiple of 4"),
        ("w_hh wrong shape", lambda: lstm(x, None, h, c, w_ih, w_hh[:, :2], None, None, None, False), "'w_hh' of shape"),
        ("hx wrong batch", lambda: lstm(x, None, h[:2], c, w_ih, w_hh, None, None, None, False), "the batch size"),
        ("cx wrong shape", lambda: lstm(x, None, h, c[:, :2], w_ih, w_hh, None, None, None, False), "'cx' of shape"),
        ("bias wrong size", lambda: lstm(x, None, h, c, w_ih, w_hh, torch.randn(3, **f), None, None, False), "'b_ih' of shape"),
        ("dtype mismatch", lambda: lstm(x, None, h.double(), c, w_ih, w_hh, None, None, None, False), "dtype"),
        ("integer input", lambda: lstm(x.long(), None, h, c, w_ih, w_hh, None, None, None, False), "floating"),
        ("batch_sizes increasing", lambda: lstm(xp, torch.tensor([1, 2, 2, 3]), h, c, w_ih, w_hh, None, None, None, False), "batch_sizes"),
        ("batch_sizes too long", lambda: lstm(xp, torch.tensor([3, 3, 3, 3]), h, c, w_ih, w_hh, None, None, None, False), "sum('batch_sizes')"),
        ("batch_sizes negative", lambda: lstm(xp, torch.tensor([3, -1, 3, 3]), h, c, w_ih, w_hh, None, None, None, False), "batch_sizes"),
        ("batch_sizes float", lambda: lstm(xp, bs.float(), h, c, w_ih, w_hh, None, None, None, False), "int64"),
        ("batch_sizes first != B", lambda: lstm(xp, torch.tensor([2, 2, 2, 2]), h, c, w_ih, w_hh, None, None, None, False), "batch_sizes'[0]"),
        ("gru with lstm weights", lambda: gru(x, None, h, w_ih[:10], w_hh[:10], None, None, False), "multiple of 3"),
        ("w_hr wrong width", lambda: lstm(x, None, h[:, :2], c, w_ih, w_hh[:, :2], None, None, torch.randn(2, 3, **f), False), "'w_hr'"),
    ]


def test_bad_arguments_raise(device):
    """Every malformed call raises a RuntimeError naming the argument; none crashes."""
    for description, call, fragment in _bad_cases(device):
        with pytest.raises(RuntimeError, match=None) as info:
            call()
        assert fragment in str(info.value), f"{description}: {info.value}"


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_inference_saves_no_workspace(kind, packed, device):
    """need_workspace=False (no backward to follow) returns the same outputs and
    empty workspaces: inference memory does not grow with the saved gates."""
    args = make_args(kind, packed, True, device, grad=False)
    saved = _op(kind)(*_op_args(kind, args, reverse=True, need_workspace=True))
    lean = _op(kind)(*_op_args(kind, args, reverse=True, need_workspace=False))
    n_out = 3 if kind.startswith("lstm") else 2
    for got, want in zip(lean[:n_out], saved[:n_out]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert all(w.numel() == 0 for w in lean[n_out:])
    assert all(w.numel() > 0 for w in saved[n_out:])
    torch.library.opcheck(_op(kind), _op_args(kind, args, reverse=True, need_workspace=False))


def test_zero_sizes(device):
    """Zero batch and zero steps return empty outputs and the initial states."""
    f = dict(device=device, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4 * H, I, **f), torch.randn(4 * H, H, **f)
    h, c = torch.randn(0, H, **f), torch.randn(0, H, **f)
    out, h_n, c_n = ops.lstm_layer(torch.randn(T, 0, I, **f), None, h, c, w_ih, w_hh, None, None, None, False)
    assert out.shape == (T, 0, H) and h_n.shape == (0, H) and c_n.shape == (0, H)
    h, c = torch.randn(B, H, **f), torch.randn(B, H, **f)
    out, h_n, c_n = ops.lstm_layer(torch.randn(0, B, I, **f), None, h, c, w_ih, w_hh, None, None, None, False)
    assert out.shape == (0, B, H)
    torch.testing.assert_close(h_n, h)
    torch.testing.assert_close(c_n, c)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_long_packed_sequence_spans_projection_chunks(kind, reverse, device):
    """Enough rows (> 512) that the input projection is formed in several chunks,
    with batch sizes changing inside and across chunks."""
    lengths = [700, 433, 432, 5, 1]
    batch_sizes = torch.tensor(
        [sum(length > t for length in lengths) for t in range(max(lengths))], dtype=torch.long
    )
    args = make_args(kind, True, True, device)
    gates = GATES[kind]
    args["input"] = torch.randn(int(batch_sizes.sum()), I, device=device, dtype=torch.float64,
                                requires_grad=True)
    args["batch_sizes"] = batch_sizes
    args["hx"] = torch.randn(len(lengths), args["hx"].size(1), device=device, dtype=torch.float64,
                             requires_grad=True)
    if "cx" in args:
        args["cx"] = torch.randn(len(lengths), H, device=device, dtype=torch.float64)
    # Small recurrent weights keep 700 steps away from saturation.
    args["w_hh"] = (0.3 * torch.randn(gates * H, args["hx"].size(1), device=device,
                                      dtype=torch.float64)).requires_grad_(True)
    leaves = [args["input"], args["hx"], args["w_ih"], args["w_hh"]]
    results = []
    for fn_module in (ops, reference):
        outputs = run(kind, fn_module, args, reverse)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)).sum()
                   for o in outputs)
        results.append((outputs, torch.autograd.grad(loss, leaves)))
    for got, want in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden,batch", [(16, 1), (40, 5), (64, 9), (21, 11), (29, 7)])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_float32_tiles(kind, hidden, batch, packed, device):
    """float32 forward and backward at sizes with whole and partial tiles (16 units
    with AVX-512, 8 with AVX2; 32- and 16-unit blocks in the backward; 21: a partial
    tile, and a reduction that ends inside an 8 x 8 block of the AVX2 packing; with
    AVX2 an RNN's tiles go two at a time, 29 ending a pair with a partial tile and 40
    leaving one alone), row blocks with remainders of every size the ISAs' blocks
    leave at these batches, and (at 64 x 9) two threads: the CPU's persistent fused
    loops, against the float64 reference."""
    torch.manual_seed(hidden * 100 + batch)
    gates = GATES[kind]
    out = hidden if kind != "lstm_proj" else hidden // 2
    f64 = dict(device=device, dtype=torch.float64)
    if packed:
        # lengths 4..6 (the persistent loop takes >= 4 steps per sequence on average),
        # with the batch shrinking, so that in reverse rows join with their h0
        lengths = sorted(torch.randint(4, 7, (batch,)).tolist(), reverse=True)
        lengths[0], lengths[-1] = 6, min(lengths[-1], 4 if batch > 1 else 6)
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(6)])
        input = torch.randn(int(batch_sizes.sum()), 8, **f64)
    else:
        batch_sizes, input = None, torch.randn(6, batch, 8, **f64)
    args = dict(input=input, batch_sizes=batch_sizes, hx=torch.randn(batch, out, **f64),
                w_ih=torch.randn(gates * hidden, 8, **f64) / 3,
                w_hh=torch.randn(gates * hidden, out, **f64) / hidden ** 0.5,
                b_ih=torch.randn(gates * hidden, **f64), b_hh=torch.randn(gates * hidden, **f64))
    if kind.startswith("lstm"):
        args["cx"] = torch.randn(batch, hidden, **f64)
        args["w_hr"] = torch.randn(out, hidden, **f64) / hidden ** 0.5 if kind == "lstm_proj" else None
    for v in args.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v.requires_grad_(True)
    low = {k: v.detach().float().requires_grad_(True)
           if isinstance(v, torch.Tensor) and v.is_floating_point() else v
           for k, v in args.items()}
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    for reverse in (False, True):
        want = run(kind, reference, args, reverse)
        got = run(kind, ops, low, reverse)
        weights = [torch.randn_like(w) for w in want]
        want_grads = torch.autograd.grad(sum((w * c).sum() for w, c in zip(want, weights)),
                                         [args[n] for n in names])
        got_grads = torch.autograd.grad(sum((g * c.float()).sum() for g, c in zip(got, weights)),
                                        [low[n] for n in names])
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, atol=2e-5, rtol=1e-4)
        for name, g, w in zip(names, got_grads, want_grads):
            torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


class _RecordingMode(TorchFunctionMode):
    """A __torch_function__ mode that records the functions it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.funcs: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.funcs.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", KINDS)
def test_typed_binding_or_torch_ops(kind, device, monkeypatch):
    """Eager calls take rnnfused._C's typed binding of the op (no boxing) and give
    what torch.ops gives; where __torch_function__ applies (here a mode), the call
    goes through torch.ops, and the mode sees the op."""
    args = make_args(kind, packed=False, bias=True, device=device, dtype=torch.float32)
    name = "lstm_layer" if kind.startswith("lstm") else kind.split("_")[0] + "_layer"
    typed_calls = []
    typed = getattr(ops._C, name)
    monkeypatch.setattr(ops._C, name, lambda *a: typed_calls.append(1) or typed(*a))
    got = run(kind, ops, args, reverse=True)
    assert typed_calls == [1]

    with _RecordingMode() as seen:
        again = run(kind, ops, args, reverse=True)
    assert typed_calls == [1]
    assert getattr(torch.ops.rnnfused, name).default in seen.funcs
    for g, a in zip(got, again):
        torch.testing.assert_close(g, a, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["lstm_cell", "gru_cell", "rnn_cell"])
def test_cell_binding_or_torch_ops(name, device, monkeypatch):
    """A cell module's step takes rnnfused._C's typed cell binding (the layer op on a
    one-step sequence, viewed in C++) and gives torch.nn's values and gradients; under
    __torch_function__ (a mode) the functional step goes through torch.ops, and gives
    the same (the module then runs torch.nn's forward, as for any mode)."""
    torch.manual_seed(0)
    cls = {"lstm_cell": "LSTMCell", "gru_cell": "GRUCell", "rnn_cell": "RNNCell"}[name]
    want_cell = getattr(torch.nn, cls)(5, 7).to(device)
    cell = getattr(rnnfused, cls)(5, 7).to(device)
    cell.load_state_dict(want_cell.state_dict())
    x = torch.randn(3, 5, device=device, requires_grad=True)
    state = (torch.randn(3, 7, device=device), torch.randn(3, 7, device=device))
    hx = state if name == "lstm_cell" else state[0]

    def step(module, functional=False):
        weights = (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
        out = getattr(rnnfused.functional, name)(x, hx, *weights) if functional else module(x, hx)
        outs = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [x, *weights])
        return [o.detach() for o in outs] + list(grads)

    typed_calls = []
    typed = getattr(ops._C, name)
    monkeypatch.setattr(ops._C, name, lambda *a: typed_calls.append(1) or typed(*a))
    got = step(cell)
    assert typed_calls == [1]
    for g, w in zip(got, step(want_cell)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)

    with _RecordingMode() as seen:
        again = step(cell, functional=True)
    assert typed_calls == [1]
    layer = name.replace("cell", "layer")
    assert getattr(torch.ops.rnnfused, layer).default in seen.funcs
    for g, a in zip(got, again):
        torch.testing.assert_close(g, a, atol=0, rtol=0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 32, 64, 300])
def test_gemm_nt(rows, bias, device):
    """The product a @ w^T (+ bias) that the layer ops form their input projections
    and per-step products with (on the CPU with AVX-512, few rows or small products
    take the library's own kernels: dot products below 4 rows, w transposed a 32-row
    panel of 256 columns at a time from 4 rows, in 12-row blocks, two threads from 2^18
    multiply-adds;
    on AVX2 CPUs other than Intel's, from 2 rows: up to 16 (and 32, in two groups)
    the transposed kernel, 4 rows at 2 depths a vector (2 or 4 vectors) against 6 or
    3 of w's rows, 24 columns a unit, an odd last depth alone; otherwise a 16-row
    panel of 256 columns at a time, 6-row blocks):
    against float64 at widths with partial panels, blocks and vectors, odd depths,
    depths past one buffered panel, and K = 0."""
    torch.manual_seed(rows)
    shapes = list(itertools.product([1, 15, 16, 17, 33, 70], [0, 1, 15, 17, 128, 130, 300]))
    shapes.append((530, 130))  # wide: 64-column slices (1-3 rows) split over two threads
    for n, k in shapes:
        a = torch.randn(rows, k, device=device)
        w = torch.randn(n, k, device=device)
        b = torch.randn(n, device=device) if bias else None
        got = torch.ops.rnnfused._gemm_nt(a, w, b)
        want = a.double() @ w.double().t() + (b.double() if bias else 0)
        torch.testing.assert_close(got.double(), want, atol=1e-4 * (k + 1) ** 0.5, rtol=1e-5,
                                   msg=lambda m: f"{rows} x {k} x {n}: {m}")


@pytest.mark.parametrize("layout", ["rows", "columns", "strided"])
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 8, 9, 17, 64, 300])
def test_gemm_nn(rows, layout, device):
    """(c +) a @ w with w stored [K, N], as the backward ops form d_pre @ W_hh,
    grad_input and the weight gradients (on the CPU with AVX-512, float32 products
    of 2 rows or more up to 2^23 multiply-adds take the library's kernel, a's rows
    or columns contiguous: `columns` is the weight gradients' d_pre^T; `strided`,
    neither, goes to ATen; on AVX2 CPUs other than Intel's, 4 rows or more by rows or
    columns):
    against float64, with and without c, at widths with partial panels and depths
    past one buffered panel."""
    torch.manual_seed(rows)
    for n, k in itertools.product([1, 17, 33, 70], [0, 1, 17, 130, 300]):
        if layout == "rows":
            a = torch.randn(rows, k, device=device)
        elif layout == "columns":
            a = torch.randn(k, rows, device=device).t()
        else:
            a = torch.randn(rows, 2 * k, device=device)[:, ::2]
        w = torch.randn(k, n, device=device)
        for c in (None, torch.randn(rows, n, device=device)):
            got = torch.ops.rnnfused._gemm_nn(a, w, c)
            want = a.double() @ w.double() + (c.double() if c is not None else 0)
            torch.testing.assert_close(got.double(), want, atol=1e-4 * (k + 1) ** 0.5, rtol=1e-5,
                                       msg=lambda m: f"{rows} x {k} x {n}: {m}")
    # the sizes printed in full: an extension linked to a second, static libstdc++
    # printed "got [" here on the CPU and crashed on CUDA (seen on an H200's image)
    with pytest.raises(RuntimeError, match=r"expected a \[M, K\] and w \[K, N\], got \[2, 3\] and \[4, 5\]"):
        torch.ops.rnnfused._gemm_nn(torch.randn(2, 3, device=device), torch.randn(4, 5, device=device), None)
    with pytest.raises(RuntimeError, match=r"expected c of shape \[2, 5\]"):
        torch.ops.rnnfused._gemm_nn(torch.randn(2, 3, device=device), torch.randn(3, 5, device=device),
                                    torch.randn(2, 4, device=device))


def test_gemm_large_products(device):
    """Products past 2^23 multiply-adds, as the layers' input projections and
    weight gradients are (on AMD's CPUs the library's kernel takes them, AVX-512 or
    AVX2, in row blocks of ~100+ rows, several to a thread, taller for TN from 1024
    rows; elsewhere ATen): NT, NN and TN (a by columns), with partial row blocks,
    panels and depths."""
    torch.manual_seed(0)
    M, K, N = 1031, 263, 113
    a = torch.randn(M, K, device=device)
    w = torch.randn(N, K, device=device)
    b = torch.randn(N, device=device)
    want = a.double() @ w.double().t() + b.double()
    tol = dict(atol=1e-4 * K**0.5, rtol=1e-5)
    torch.testing.assert_close(torch.ops.rnnfused._gemm_nt(a, w, b).double(), want, **tol)
    w_kn = w.t().contiguous()
    c = torch.randn(M, N, device=device)
    torch.testing.assert_close(torch.ops.rnnfused._gemm_nn(a, w_kn, c).double(),
                               a.double() @ w_kn.double() + c.double(), **tol)
    a_t = torch.randn(K, M, device=device)  # a_t.t(): [M, K] by columns
    torch.testing.assert_close(torch.ops.rnnfused._gemm_nn(a_t.t(), w_kn, None).double(),
                               a_t.double().t() @ w_kn.double(), **tol)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_nn_at_aliasing_strides(threads, device):
    """Products whose `a` has a stride the AVX-512 kernel copies it at on CPUs with
    a 32 KB L1 (Zen 4: gemm_avx512.cpp's packs_a): by rows, from 9 rows, with a row
    stride of a multiple of 4 KB (a block's 12 rows transposed into depth-major
    order, 16 depths at a time; 5 rows read in place), by columns with a stride of
    2, 4 or 8 KB in units of 4 panels or more (all the unit's rows a depth at a
    time; 1536 floats read in place); elsewhere read in place.
    Against float64, with and without c, at partial register blocks, panels, 16-depth
    blocks and depths past one buffered panel, one thread and two."""
    torch.manual_seed(threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cases = [  # (M, K, N, a's stride in floats, by columns)
            (37, 300, 33, 1024, False), (300, 1030, 70, 2048, False), (9, 17, 130, 1024, False),
            (5, 17, 130, 1024, False),
            (1031, 600, 300, 1536, True), (1031, 600, 300, 2048, True), (100, 270, 520, 512, True),
            (13, 515, 256, 512, True)]
        for M, K, N, stride, by_columns in cases:
            if by_columns:
                a = torch.randn(K, stride, device=device)[:, :M].t()  # strides (1, stride)
            else:
                a = torch.randn(M, stride, device=device)[:, :K]  # strides (stride, 1)
            w = torch.randn(K, N, device=device)
            for c in (None, torch.randn(M, N, device=device)):
                got = torch.ops.rnnfused._gemm_nn(a, w, c)
                want = a.double() @ w.double() + (c.double() if c is not None else 0)
                torch.testing.assert_close(
                    got.double(), want, atol=1e-4 * (K + 1) ** 0.5, rtol=1e-5,
                    msg=lambda m: f"{M} x {K} x {N}, stride {stride}: {m}")
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("input_size", [37, 300])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_projection_over_chunks_matches_reference(kind, input_size, device):
    """A layer whose input projection spans several chunks of ~512 rows (here 1100
    rows: three) forms each chunk's product with W_ih packed once for all of them
    where the library's GEMM takes them (AVX-512 CPUs other than Intel's, and AVX2
    ones: its panels, NtProduct::w_panels), with partial panels (4 x 19 columns),
    depths (37) and a depth past the GEMM's 256 (300, read from the second depth of
    each packed panel): torch.nn's outputs and gradients with the same weights."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(input_size, 19).to(device)
    ours = getattr(rnnfused, kind)(input_size, 19).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(100, 11, input_size, device=device)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    for model, inp in zip((theirs, ours), xs):
        out, _ = model(inp)
        out.square().sum().backward()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-4, rtol=1e-4)
    for (name, theirs_p), ours_p in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(ours_p.grad, theirs_p.grad, atol=1e-3, rtol=1e-4, msg=name)


def assert_float32_training_matches(theirs, ours, x, forward=lambda model, inp: model(inp)[0]):
    """A training step of each module (forward(model, input), the output's squares
    summed, backward): rnnfused's output, input gradient and parameter gradients
    against torch.nn's, within float32's rounding of their different sums."""
    results = []
    for model in (theirs, ours):
        inp = x.clone().requires_grad_()
        out = forward(model, inp)
        out.square().sum().backward()
        results.append((out, inp.grad, [p.grad for p in model.parameters()]))
    (out_t, gx_t, gp_t), (out_o, gx_o, gp_o) = results
    torch.testing.assert_close(out_o, out_t, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(gx_o, gx_t, atol=2e-4, rtol=1e-4)
    for (name, _), theirs_g, ours_g in zip(theirs.named_parameters(), gp_t, gp_o):
        torch.testing.assert_close(ours_g, theirs_g, atol=2e-3, rtol=1e-4, msg=name)


@pytest.mark.parametrize("form", ["dense", "packed", "bidirectional", "no_bias"])
@pytest.mark.parametrize("input_size", [709, 1024])
@pytest.mark.parametrize("kind,hidden", [("LSTM", 37), ("GRU", 64), ("RNN", 70), ("RNN", 96)])
def test_projection_in_loop_matches_torch_nn(kind, hidden, input_size, form, device):
    """float32 layers whose step's input projection takes 2^22 multiply-adds or more
    (the widest step's rows x G*H x I; here 96 rows) form it inside the fused forward
    loop (fused_forward_cpu.h's forms_projection_in_loop): depths past one summed
    block of 512 (709, 1024), partial tiles (37 and 70 units), RNN's tile pairs with
    an odd tile left (70: 5 tiles of 16) and without (96), no bias, packed sequences
    whose batch shrinks, the reverse direction (RNN's in the loop; a bidirectional
    LSTM's and GRU's directions run a thread each, inside a parallel region, where the
    chunks' GEMM forms the projection): torch.nn's outputs and gradients."""
    torch.manual_seed(0)
    options = dict(bidirectional=form == "bidirectional", bias=form != "no_bias")
    theirs = getattr(torch.nn, kind)(input_size, hidden, **options).to(device)
    ours = getattr(rnnfused, kind)(input_size, hidden, **options).to(device)
    ours.load_state_dict(theirs.state_dict())
    T, B = 8, 96
    x = torch.randn(T, B, input_size, device=device)
    # T down to 5: enough rows (4 steps' worth of the widest) for the fused loop
    lengths = torch.tensor([T - (b * 4) // B for b in range(B)])

    def forward(model, inp):
        if form != "packed":
            return model(inp)[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(inp, lengths)
        return torch.nn.utils.rnn.pad_packed_sequence(model(packed)[0])[0]

    assert_float32_training_matches(theirs, ours, x, forward)


def l2_cache_bytes() -> int:
    """A core's L2 as the library reads it (glibc's sysconf, `getconf LEVEL2_CACHE_SIZE`;
    1 MB where unknown, as simd.cpp's l2_cache_bytes)."""
    try:
        size = int(subprocess.run(["getconf", "LEVEL2_CACHE_SIZE"], capture_output=True,
                                  text=True, timeout=10).stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        size = 0
    return size if size > 0 else 1 << 20


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("form", ["dense", "packed"])
@pytest.mark.parametrize("kind,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_projection_formed_ahead_at_the_barrier(kind, gates, form, threads):
    """A float32 layer that forms its input projection in the fused forward loop, with W_ih
    and W_hh past half a core's L2 (so the tiles split among the threads, a barrier after
    every step) and each thread's share at most half of its own (I = H sized from this
    host's L2: the weights 3/4 of it, LSTM H 221, GRU 256, RNN 443 at 2 MB), forms each
    step's projection ahead, each thread its share while it waits at the barrier before the
    step, into the buffer of the step's parity (fused_loop.h's fused_steps): on 2 and 3
    threads (the tiles left over shared by rows; RNN's in pairs), dense and packed (a step's
    rows 96, 96, 96, 96, 72, 48, 24, 24, 24, 24: the shares change where sequences end), the
    first step's formed in the step. Outputs and gradients equal torch.nn's."""
    hidden = int((0.75 * l2_cache_bytes() / (8 * gates)) ** 0.5)  # 8 G H^2 bytes
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(hidden)
        theirs = getattr(torch.nn, kind)(hidden, hidden)
        ours = getattr(rnnfused, kind)(hidden, hidden)
        ours.load_state_dict(theirs.state_dict())
        T, B = 10, 96  # 2^22 multiply-adds a step's projection or more down to a 512 KB L2
        x = torch.randn(T, B, hidden)
        lengths = torch.tensor([10] * 24 + [4] * 24 + [5] * 24 + [6] * 24)

        def forward(model, inp):
            if form == "dense":
                return model(inp)[0]
            packed = torch.nn.utils.rnn.pack_padded_sequence(inp, lengths, enforce_sorted=False)
            return torch.nn.utils.rnn.pad_packed_sequence(model(packed)[0])[0]

        assert_float32_training_matches(theirs, ours, x, forward)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("hidden", [256, 250])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_large_saved_workspace_matches_torch_nn(kind, hidden, device):
    """A float32 training step whose saved workspace (LSTM: gates and cells, 5H a row;
    GRU 4H) takes 8-10 MB, past two cores' L2: on AVX-512 CPUs the fused
    loop streams it to memory (non-temporal stores of whole 64-byte lines,
    fused_forward_cpu.h's stream_saved), plain stores for the lines H 250 leaves
    unaligned. The backward reads it back: torch.nn's outputs and gradients."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(64, hidden).to(device)
    ours = getattr(rnnfused, kind)(64, hidden).to(device)
    ours.load_state_dict(theirs.state_dict())
    assert_float32_training_matches(theirs, ours, torch.randn(64, 32, 64, device=device))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 17])
def test_gemm_nt_16bit(rows, dtype, device):
    """bfloat16 and float16 products (a 16-bit layer's per-step GEMMs, a cell's step):
    within the output's rounding of the exact result (products and sums in float32).
    On the CPU with AVX-512, up to 16 rows run the library's kernel on the widened
    values, so the result is the float32 product of the same values, rounded once:
    bitwise. On CUDA cuBLAS may round partial sums to 16 bits (torch's default
    allow_{bf16,fp16}_reduced_precision_reduction; seen on an H200 at k = 300): errors
    up to a few roundings of the sum of the terms' magnitudes are allowed there."""
    torch.manual_seed(rows)
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    partial_sums = ulp if device != "cpu" else 1e-5  # per unit of sum |a_k w_k|
    for n, k in [(1, 1), (37, 20), (256, 64), (530, 130), (17, 300), (40, 0)]:
        a = torch.randn(rows, k, device=device).to(dtype)
        w = torch.randn(n, k, device=device).to(dtype)
        for b in (torch.randn(n, device=device).to(dtype), None):
            got = torch.ops.rnnfused._gemm_nt(a, w, b)
            assert got.dtype == dtype and got.shape == (rows, n)
            want = a.double() @ w.double().t() + (b.double() if b is not None else 0)
            bound = ulp * want.abs() + partial_sums * (a.double().abs() @ w.double().abs().t() + 1)
            assert ((got.double() - want).abs() <= bound).all(), (n, k)
            widened = rows <= 16 and torch.ops.rnnfused.cpu_isa() == "avx512"
            # past 16 rows float16 goes to ATen, except where its GEMM is a loop of dot
            # products (no AVX512-FP16 / AMX-FP16): float32 over widened copies there
            widened = widened or (rows > 16 and dtype == torch.float16 and _cpu_lacks_fp16_gemm())
            if device == "cpu" and widened:
                wide = torch.ops.rnnfused._gemm_nt(a.float(), w.float(), None if b is None else b.float())
                assert torch.equal(got, wide.to(dtype)), (n, k)


def _cpu_lacks_fp16_gemm():
    """An x86 Linux CPU without AVX512-FP16 and AMX-FP16 (where oneDNN's float16
    GEMM, ATen's fast path for float16 products, does not run); False elsewhere."""
    found = cpu_flags_and_vendor()
    if platform.machine() not in ("x86_64", "AMD64") or found is None:
        return False
    flags, _ = found
    return "avx512_fp16" not in flags and "amx_fp16" not in flags


def test_gemm_nt_spreads_nan_by_row(device):
    """A NaN in a row of `a` makes that output row NaN and leaves the others finite,
    as the BLAS does (the kernels' zero padding must not mix rows or columns)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for rows in (1, 2, 3, 5, 8, 13):
            a = torch.randn(rows, 20, device=device, dtype=dtype)
            a[rows - 1, 7] = float("nan")
            out = torch.ops.rnnfused._gemm_nt(a, torch.randn(37, 20, device=device, dtype=dtype), None)
            assert out[rows - 1].isnan().all()
            assert out[: rows - 1].isfinite().all()


def test_gemm_nt_keeps_infinities(device):
    """An infinite weight gives an infinite output where the BLAS does, not inf * 0 =
    NaN from a kernel's zero padding: at an odd last depth too (the few-row kernel's
    pairs of depths end with one depth alone there), and a NaN weight makes only its
    column NaN."""
    for rows in (2, 3, 5, 8, 13, 16, 17, 32):
        for k in (7, 8, 33):
            a = torch.rand(rows, k, device=device) + 0.5  # positive: no inf - inf
            w = torch.rand(37, k, device=device) + 0.5
            w[3, k - 1] = float("inf")
            w[5, 0] = float("-inf")
            w[36, k // 2] = float("nan")
            got = torch.ops.rnnfused._gemm_nt(a, w, None)
            want = (a.double() @ w.double().t()).float()
            torch.testing.assert_close(got, want, equal_nan=True,
                                       msg=lambda m: f"{rows} x {k}: {m}")
            assert got[:, 3].isposinf().all() and got[:, 5].isneginf().all()
            assert got[:, 36].isnan().all() and got[:, :36].isnan().sum() == 0


def test_gemm_nt_bad_arguments_raise(device):
    gemm = torch.ops.rnnfused._gemm_nt
    with pytest.raises(RuntimeError, match=r"expected a \[M, K\] and w \[N, K\]"):
        gemm(torch.randn(2, 3, device=device), torch.randn(4, 5, device=device), None)
    with pytest.raises(RuntimeError, match=r"expected bias of shape \[4\]"):
        gemm(torch.randn(2, 3, device=device), torch.randn(4, 3, device=device),
             torch.randn(5, device=device))
    with pytest.raises(RuntimeError, match="one dtype"):
        gemm(torch.randn(2, 3, device=device), torch.randn(4, 3, device=device, dtype=torch.float64), None)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_other_cpu_kernels(isa):
    """The AVX2 and the one-unit-at-a-time CPU kernels pass the float32 and
    module-level op tests too, the modules' tests of the persistent loops' panels,
    row blocks and blocked sums, and the float64 modules' against torch.nn (4 units a
    call on AVX2, one at a time on the scalar ISA) (RNNFUSED_CPU_ISA caps the choice
    per process)."""
    env = dict(os.environ, RNNFUSED_CPU_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "import rnnfused, torch; print(torch.ops.rnnfused.cpu_isa())"],
                           env=env, capture_output=True, text=True)
    if probe.stdout.strip() != isa:
        pytest.skip(f"this CPU cannot run {isa} kernels (got {probe.stdout.strip()!r})")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         os.path.join(os.path.dirname(__file__), "test_modules.py"),
         "-k", "float32_tiles or low_precision or matches_reference or gemm_nt"
               " or fused_loop_panels or long_sums or matches_torch_float64"
               " or projection_in_loop"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_float64_functors_four_units_a_call():
    """float64 step functors run 4 units a call wherever the AVX2 or AVX-512 kernels
    run: their exp and tanh are libtorch_cpu's SLEEF functions, found through weak
    references, so a torch without them would leave float64 one unit at a time (slower
    than torch.nn's float64 LSTM) and this test names it. One at a time on the scalar
    ISA. (Their results: test_modules' float64 tests, rerun per ISA by
    test_other_cpu_kernels.)"""
    expected = 1 if torch.ops.rnnfused.cpu_isa() == "scalar" else 4
    assert torch.ops.rnnfused.cpu_float64_lanes() == expected
    probe = subprocess.run(
        [sys.executable, "-c", "import rnnfused, torch; print(torch.ops.rnnfused.cpu_float64_lanes())"],
        env=dict(os.environ, RNNFUSED_CPU_ISA="scalar"), capture_output=True, text=True)
    assert probe.stdout.strip() == "1", probe.stdout + probe.stderr


@pytest.mark.parametrize("width", [1, 16, 37])
def test_bfloat16_lanes_round_trip(width, device):
    """bfloat16 values pass through the step kernels' widening load and rounding
    store unchanged (whole and partial vectors): an RNN with identity input
    weights and zero recurrent weights returns relu(x) exactly. (NaN and Inf would
    spread through the GEMMs' zero products; their propagation is tested in
    test_reliability.py and the fuzz.)"""
    x = torch.randn(3, 5, width, device=device).mul(100).to(torch.bfloat16)
    eye = torch.eye(width, device=device, dtype=torch.bfloat16)
    hx = torch.zeros(5, width, device=device, dtype=torch.bfloat16)
    out, _ = ops.rnn_layer(x, None, hx, eye, torch.zeros_like(eye), None, None, True, False)
    # Step 0 has no recurrence (h0 = 0); later steps add 0 * W_hh = 0 as well.
    torch.testing.assert_close(out, torch.relu(x), atol=0, rtol=0, equal_nan=True)


def test_tanh_accuracy(device):
    """The step kernels' tanh (the CPU's SIMD one where it runs): an RNN with identity
    input weights and zero recurrent weights returns tanh(x), here over [-12, 12] and
    magnitudes down to 1e-30 of both signs, within 3e-7 of float64's tanh and 3 x
    float32's epsilon relative, never past +-1 (1 - h * h feeds the backward), NaN kept."""
    width = 16
    x = torch.cat([torch.linspace(-12, 12, 100_000), torch.logspace(-30, 1, 2_000),
                   -torch.logspace(-30, 1, 2_000), torch.tensor([float("nan")])])
    x = torch.cat([x, torch.zeros(-x.numel() % width)]).view(-1, 1, width).to(device)
    eye = torch.eye(width, device=device)
    hx = torch.zeros(1, width, device=device)
    out, _ = ops.rnn_layer(x, None, hx, eye, torch.zeros_like(eye), None, None, False, False)
    want = torch.tanh(x.double())
    # The NaN (last step) spreads through the products to its whole row; earlier steps
    # are finite and judged.
    assert out[-1].isnan().all()
    got, want = out[:-1].double(), want[:-1]
    err = (got - want).abs()
    assert err.max() <= 3e-7
    assert (err <= 3 * torch.finfo(torch.float32).eps * want.abs()).all()
    assert got.abs().max() <= 1.0


def test_cpu_fma_peak_gflops():
    """The benchmark's FMA ceiling: a plausible positive rate on the active ISA's
    vectors (AVX-512: 16 lanes, AVX2: 8), 0 on other CPUs. One thread: at least one
    FMA per ns at any clock of this century, at most two a cycle (64 or 32 FLOP)
    at a few GHz. The loop is assembly, so this holds in the sanitizer build (-O1)
    too. On an AVX-512 CPU the AVX2 loop is measured as well, in a process capped at
    AVX2 (RNNFUSED_CPU_ISA=avx2)."""
    def plausible(isa: str, peak: float) -> None:
        lanes = {"avx512": 16, "avx2": 8}.get(isa)
        if lanes is not None:
            assert 2.0 * lanes < peak < 1_000.0 * lanes / 16, (isa, peak)
        else:
            assert peak == 0.0, (isa, peak)

    isa = torch.ops.rnnfused.cpu_isa()
    plausible(isa, torch.ops.rnnfused._cpu_fma_peak_gflops(0.05, 1))
    if isa == "avx512":
        code = ("import rnnfused, torch; print(torch.ops.rnnfused.cpu_isa(), "
                "torch.ops.rnnfused._cpu_fma_peak_gflops(0.05, 1))")
        env = {**os.environ, "RNNFUSED_CPU_ISA": "avx2"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[0] == "avx2"
        plausible("avx2", float(out[1]))


def test_cpu_amx_peak_gflops():
    """The AMX tiles' ceiling (tdpbf16ps from tile registers, 16 x 16 x 32 x 2 FLOP an
    instruction), reported in bfloat16 and "medium" benchmarks: where the tiles are on
    (cpu_amx()), above the float32 FMA peak of the same thread (the TMUL does 16x its
    multiply-adds a cycle; one instruction per 16 ns at least) and at most 2048 FLOP a cycle
    at 5 GHz; else 0, as with RNNFUSED_CPU_AMX=0 in a process of its own."""
    peak = torch.ops.rnnfused._cpu_amx_peak_gflops(0.05, 1)
    if torch.ops.rnnfused.cpu_amx():
        assert max(torch.ops.rnnfused._cpu_fma_peak_gflops(0.05, 1), 1024.0) < peak < 10_240.0
        code = ("import rnnfused, torch; print(torch.ops.rnnfused.cpu_amx(), "
                "torch.ops.rnnfused._cpu_amx_peak_gflops(0.05, 1))")
        env = {**os.environ, "RNNFUSED_CPU_AMX": "0"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == ["False", "0.0"]
    else:
        assert peak == 0.0


def test_cpu_bf16_dot_peak_gflops():
    """The bfloat16 dot product's ceiling (vdpbf16ps, 64 FLOP an instruction), reported
    beside the FMA peak in bfloat16 benchmarks: plausible where the CPU has AVX512-BF16
    and AVX-512 runs (one thread: at least one instruction per 4 ns, at most two a
    cycle at a few GHz), else 0."""
    found = cpu_flags_and_vendor()
    if found is None:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags, _ = found
    peak = torch.ops.rnnfused._cpu_bf16_dot_peak_gflops(0.05, 1)
    if torch.ops.rnnfused.cpu_isa() == "avx512" and "avx512_bf16" in flags:
        assert 16.0 < peak < 1_000.0
    else:
        assert peak == 0.0
