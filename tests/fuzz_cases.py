"""Property-based fuzzing of every torch.ops.rnnfused.* op and every module.

Run as a script (tests/test_fuzz.py starts it in a subprocess, so that a crash
fails one test instead of killing the run):

    python tests/fuzz_cases.py --examples 400

Each case draws shapes (0 and 1 in every dimension, hidden sizes around the
AVX-512 width 16 and the AVX2 width 8), memory layouts (contiguous, transposed,
sliced, expanded = stride 0, overlapping), dtypes and option combinations, and
either
  - valid arguments: the call must succeed and equal the oracle (torch.nn for
    modules, rnnfused.reference for the ops), outputs and every gradient, or
  - invalid arguments (corrupt batch_sizes, wrong shapes or dtypes): the call
    must raise a Python exception; torch.nn raising means rnnfused raises the
    same exception type.
The search is derandomized (a fixed seed) so that CI sees the same cases.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

# The repository root, after PYTHONPATH (where `make sanitize` puts its own build).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rnnfused  # noqa: E402
from rnnfused import reference  # noqa: E402

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_proj": 4, "gru": 3}
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "overlapping"]
DTYPES = [torch.float32, torch.float64]
CORRUPTIONS = [
    "increasing", "zero_inside", "zero_at_end", "too_long", "too_short", "negative", "first_not_batch",
    "float_dtype", "two_dim", "larger_than_batch",
]
HIDDEN = st.sampled_from([0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 33])
SMALL = st.integers(0, 3)

# Tolerances: float64 differs from the reference by summation order only; float32
# also by the vectorised exp/tanh (a few ulp) amplified over <= 5 steps.
TOL = {torch.float64: dict(atol=1e-9, rtol=1e-7), torch.float32: dict(atol=2e-4, rtol=2e-3)}

STATS: dict[str, int] = {}


def count(key: str) -> None:
    STATS[key] = STATS.get(key, 0) + 1


# ---------------------------------------------------------------- tensors in any layout


def laid_out(draw, shape: tuple[int, ...], dtype: torch.dtype, scale: float, grad: bool):
    """(leaf, view): a leaf tensor and a view of it with the logical `shape` in a drawn
    memory layout. Gradients through the view reach the leaf; the oracle gets the same view."""
    layout = draw(st.sampled_from(LAYOUTS))
    n = len(shape)
    if layout == "transposed" and n >= 2:
        leaf = torch.randn(shape[::-1], dtype=torch.float64)
        make = lambda t: t.permute(*range(n - 1, -1, -1))  # noqa: E731
    elif layout == "sliced" and n >= 1:
        leaf = torch.randn(*shape[:-1], 2 * shape[-1] + 1, dtype=torch.float64)
        make = lambda t: t[..., 1::2]  # noqa: E731
    elif layout == "expanded" and n >= 1:
        leaf = torch.randn(1, *shape[1:], dtype=torch.float64)
        make = lambda t: t.expand(*shape)  # noqa: E731
    elif layout == "overlapping" and n >= 1:
        # Consecutive rows share all but one element: stride 1 along every dimension.
        storage = sum(max(s - 1, 0) for s in shape) + 1
        leaf = torch.randn(storage, dtype=torch.float64)
        make = lambda t: t.as_strided(shape, (1,) * n)  # noqa: E731
    else:
        leaf = torch.randn(shape, dtype=torch.float64)
        make = lambda t: t  # noqa: E731
    leaf = (leaf * scale).to(dtype).requires_grad_(grad)
    view = make(leaf)
    assert tuple(view.shape) == tuple(shape), (layout, view.shape, shape)
    return leaf, view


def maybe_grad(draw) -> bool:
    return draw(st.booleans())


# ---------------------------------------------------------------- the layer ops


def batch_sizes_of(lengths: list[int]) -> torch.Tensor:
    steps = max(lengths) if lengths else 0
    return torch.tensor([sum(n > t for n in lengths) for t in range(steps)], dtype=torch.long)


def valid_batch_sizes(bs: torch.Tensor, batch: int, rows: int) -> bool:
    """The op's contract: 1-D int64, non-increasing, in [0, B], first == B, sum == N.
    Zeros are allowed (torch.nn accepts them too); they mean no work at that step."""
    if bs.dim() != 1 or bs.dtype != torch.long:
        return False
    values = bs.tolist()
    if values and values[0] != batch:
        return False
    previous = batch
    for v in values:
        if not 0 <= v <= previous:
            return False
        previous = v
    return sum(values) == rows


def corrupt(batch_sizes: torch.Tensor, how: str, batch: int) -> tuple[torch.Tensor, int]:
    """A corrupt batch_sizes and the row count N the caller passes with it."""
    bs = batch_sizes.clone()
    n = int(bs.sum())
    if how == "increasing":
        bs = torch.cat([bs, bs[-1:] + 1]) if bs.numel() else torch.tensor([batch, batch + 1])
        return bs, int(bs.sum())
    if how == "zero_inside":  # valid when the zero ends the sequence, else increasing
        bs = torch.cat([bs[:1], torch.zeros(1, dtype=torch.long), bs[1:]])
        return bs, int(bs.sum())
    if how == "zero_at_end":
        return torch.cat([bs, torch.zeros(2, dtype=torch.long)]), n
    if how == "too_long":  # more rows than the input has
        bs = torch.cat([bs, torch.ones(1, dtype=torch.long)])
        return bs, n
    if how == "too_short":
        return torch.cat([bs, torch.ones(1, dtype=torch.long)]), n + 2
    if how == "negative":
        bs = torch.cat([bs, torch.tensor([-1, 1])])
        return bs, int(bs.sum())
    if how == "first_not_batch":
        bs = torch.cat([torch.tensor([batch + 1]), bs])
        return bs, int(bs.sum())
    if how == "larger_than_batch":
        bs = torch.full((2,), batch + 2, dtype=torch.long)
        return bs, int(bs.sum())
    if how == "float_dtype":
        return bs.double(), n
    if how == "two_dim":
        return bs.view(1, -1), n
    raise ValueError(how)


@st.composite
def op_case(draw):
    kind = draw(st.sampled_from(KINDS))
    dtype = draw(st.sampled_from(DTYPES))
    G = GATES[kind]
    H = draw(HIDDEN)
    P = draw(st.integers(0, max(H, 1))) if kind == "lstm_proj" else H
    I = draw(SMALL)
    B = draw(SMALL)
    packed = draw(st.booleans())
    corruption = draw(st.sampled_from([None] * 6 + CORRUPTIONS)) if packed else None
    if packed:
        # up to 8 steps: an average of 4 or more takes the CPU's persistent loop
        lengths = sorted(draw(st.lists(st.integers(1, 8), min_size=B, max_size=B)), reverse=True)
        batch_sizes = batch_sizes_of(lengths)
        N = int(batch_sizes.sum())
        if corruption is not None:
            batch_sizes, N = corrupt(batch_sizes, corruption, B)
        if draw(st.booleans()) and batch_sizes.dim() == 1:  # a strided batch_sizes
            batch_sizes = torch.stack([batch_sizes, batch_sizes], 1)[:, 0]
        x_shape: tuple[int, ...] = (N, I)
    else:
        batch_sizes = None
        T = draw(st.integers(0, 5))
        x_shape = (T, B, I)
    bias = draw(st.sampled_from(["both", "none", "ih", "hh"]))
    reverse = draw(st.booleans())
    need_workspace = draw(st.booleans())
    k = 1.0 / max(H, 1) ** 0.5  # torch.nn's init scale
    leaves, args = {}, {}

    def arg(name, shape, scale=1.0):
        leaf, view = laid_out(draw, shape, dtype, scale, maybe_grad(draw))
        leaves[name], args[name] = leaf, view

    arg("input", x_shape)
    arg("hx", (B, P))
    if kind.startswith("lstm"):
        arg("cx", (B, H))
    arg("w_ih", (G * H, I), k)
    arg("w_hh", (G * H, P), k)
    for name in ("b_ih", "b_hh"):
        if bias in ("both", name[2:]):
            arg(name, (G * H,), k)
        else:
            args[name] = None
    if kind == "lstm_proj":
        arg("w_hr", (P, H), k)
    elif kind == "lstm":
        args["w_hr"] = None
    # A wrong argument beside the batch sizes: shape or dtype of one tensor.
    bad_arg = draw(st.sampled_from([None] * 8 + ["hx_shape", "w_hh_dtype", "input_width"]))
    # NaN or +-Inf in one element of one argument: the results must carry it exactly
    # where the reference does (same NaN positions, same infinities).
    special = draw(st.sampled_from([None] * 9 + [float("nan"), float("inf"), -float("inf")]))
    if special is not None:
        name = draw(st.sampled_from(sorted(n for n, t in args.items() if t is not None)))
        if args[name].numel():
            flat = draw(st.integers(0, args[name].numel() - 1))
            spoiled = args[name].detach().clone()
            spoiled[torch.unravel_index(torch.tensor(flat), spoiled.shape)] = special
            args[name] = spoiled
        else:
            special = None
    return dict(kind=kind, dtype=dtype, H=H, P=P, batch_sizes=batch_sizes, args=args,
                special=special,
                leaves=leaves, reverse=reverse, need_workspace=need_workspace,
                corruption=corruption, bad_arg=bad_arg, seed=draw(st.integers(0, 2**16)))


def call_op(kind, a, batch_sizes, reverse, need_workspace):
    """The raw forward op; returns the outputs the reference also returns."""
    if kind.startswith("lstm"):
        out = torch.ops.rnnfused.lstm_layer.default(
            a["input"], batch_sizes, a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"],
            a["b_hh"], a["w_hr"], reverse, need_workspace)
        return out[:3], out[3:]
    if kind == "gru":
        out = torch.ops.rnnfused.gru_layer.default(
            a["input"], batch_sizes, a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
            reverse, need_workspace)
        return out[:2], out[2:]
    out = torch.ops.rnnfused.rnn_layer.default(
        a["input"], batch_sizes, a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
        kind == "rnn_relu", reverse)
    return out, ()


def call_reference(kind, a, batch_sizes, reverse):
    if kind.startswith("lstm"):
        return reference.lstm_layer(a["input"], batch_sizes, a["hx"], a["cx"], a["w_ih"],
                                    a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], reverse)
    if kind == "gru":
        return reference.gru_layer(a["input"], batch_sizes, a["hx"], a["w_ih"], a["w_hh"],
                                   a["b_ih"], a["b_hh"], reverse)
    return reference.rnn_layer(a["input"], batch_sizes, a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                               a["b_hh"], kind == "rnn_relu", reverse)


def weighted_loss(outputs, seed: int):
    g = torch.Generator().manual_seed(seed)
    total = 0
    for o in outputs:
        w = torch.randn(tuple(o.shape), generator=g, dtype=torch.float64).to(o.dtype)
        total = total + (o * w).sum()
    return total


def grads_of(loss, leaves):
    want = [t for t in leaves if t.requires_grad]
    if not want or not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return []
    return list(torch.autograd.grad(loss, want, allow_unused=True, materialize_grads=True))


def apply_bad_arg(case) -> bool:
    """Spoils one argument in place; returns whether the call is now invalid."""
    a, bad = case["args"], case["bad_arg"]
    if bad == "hx_shape" and case["batch_sizes"] is not None and case["batch_sizes"].numel() == 0:
        return False  # no steps: nothing ties hx's batch to the input; leave it alone
    if bad == "hx_shape":
        a["hx"] = torch.zeros(a["hx"].size(0) + 1, a["hx"].size(1), dtype=case["dtype"])
    elif bad == "w_hh_dtype":
        other = torch.float64 if case["dtype"] == torch.float32 else torch.float32
        a["w_hh"] = a["w_hh"].detach().to(other)
    elif bad == "input_width":
        a["input"] = torch.zeros(*a["input"].shape[:-1], a["input"].size(-1) + 1,
                                 dtype=case["dtype"])
    return bad is not None


def check_op(case) -> None:
    kind, bs = case["kind"], case["batch_sizes"]
    a = case["args"]
    invalid = False
    if bs is not None:
        invalid = not valid_batch_sizes(bs, a["hx"].size(0), a["input"].size(0))
    invalid |= apply_bad_arg(case)
    if invalid:
        count("op: invalid arguments")
        try:
            call_op(kind, a, bs, case["reverse"], case["need_workspace"])
        except (RuntimeError, ValueError, IndexError, TypeError):
            return
        raise AssertionError(
            f"{kind}: invalid arguments accepted (batch_sizes corruption={case['corruption']}, "
            f"bad_arg={case['bad_arg']}, batch_sizes={bs})")
    leaves = list(case["leaves"].values())
    got, workspaces = call_op(kind, a, bs, case["reverse"], case["need_workspace"])
    oracle = dict(a)
    if a["input"].size(-1) == 0:
        # reference.py cannot reshape a [.., 0] input (reported); a width-1 input of
        # zeros with zero weights adds the same nothing to every pre-activation.
        oracle["input"] = a["input"].new_zeros(*a["input"].shape[:-1], 1)
        oracle["w_ih"] = a["w_ih"].new_zeros(a["w_ih"].size(0), 1)
    want = call_reference(kind, oracle, bs, case["reverse"])
    tol = TOL[case["dtype"]]
    names = ["output", "h_n", "c_n"]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape)
        torch.testing.assert_close(g, w, **tol, equal_nan=True,
                                   msg=lambda m, n=name: f"{kind} {n}: {m}")
    rows = a["input"].size(0) if bs is not None else a["input"].size(0) * a["input"].size(1)
    for ws in workspaces:
        if case["need_workspace"]:
            assert ws.size(0) == rows, (kind, ws.shape, rows)
        else:
            assert ws.numel() == 0, (kind, ws.shape)
    count(f"op: {kind} {'packed' if bs is not None else 'dense'}")
    if case["special"] is not None:
        count("op: NaN/Inf propagated as in the reference")
        return
    if not any(t.requires_grad for t in leaves):
        return
    want_grads = grads_of(weighted_loss(want, case["seed"]), leaves)
    try:
        got_grads = grads_of(weighted_loss(got, case["seed"]), leaves)
    except RuntimeError:
        # Under autograd without the saved workspace (a misuse of the raw op; the
        # wrapper in rnnfused.ops never does it) the backward op must refuse.
        if workspaces and not case["need_workspace"]:
            count("op: backward without workspace raised")
            return
        raise
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{kind} grad: {m}")
    count("op: gradients compared")


@st.composite
def backward_garbage(draw):
    """A backward op called directly with one argument of the wrong shape."""
    kind = draw(st.sampled_from(KINDS))
    which = draw(st.sampled_from(["grad_output", "grad_h_n", "output", "workspace", "hx"]))
    return kind, which, draw(st.booleans())


def check_backward_garbage(kind, which, packed) -> None:
    T, B, I, H = 3, 2, 3, 5
    G = GATES[kind]
    P = 2 if kind == "lstm_proj" else H
    f = dict(dtype=torch.float32)
    bs = torch.tensor([2, 2, 1]) if packed else None
    x = torch.randn(5, I, **f) if packed else torch.randn(T, B, I, **f)
    hx, cx = torch.randn(B, P, **f), torch.randn(B, H, **f)
    w_ih, w_hh = torch.randn(G * H, I, **f), torch.randn(G * H, P, **f)
    w_hr = torch.randn(P, H, **f) if kind == "lstm_proj" else None
    a = dict(input=x, hx=hx, cx=cx, w_ih=w_ih, w_hh=w_hh, b_ih=None, b_hh=None, w_hr=w_hr)
    (output, h_n, *rest), ws = call_op(kind, a, bs, False, True)
    go, gh = torch.randn_like(output), torch.randn_like(h_n)
    wrong = lambda t: torch.randn(*t.shape[:-1], t.size(-1) + 1, **f) if t.dim() else t  # noqa
    if which == "grad_output":
        go = wrong(go)
    elif which == "grad_h_n":
        gh = wrong(gh)
    elif which == "output":
        output = wrong(output)
    elif which == "hx":
        hx = wrong(hx)
    elif which == "workspace":
        ws = tuple(wrong(w) for w in ws)
        if not ws:  # rnn has no workspace: spoil grad_output's batch instead
            go = go[:, :1] if go.dim() == 3 else go[:1]
    mask = [True, True, True]
    try:
        if kind.startswith("lstm"):
            torch.ops.rnnfused.lstm_layer_backward.default(
                go, gh, torch.randn_like(cx), x, bs, hx, cx, w_ih, w_hh, w_hr, output, ws[0], ws[1],
                False, False, mask)
        elif kind == "gru":
            torch.ops.rnnfused.gru_layer_backward.default(
                go, gh, x, bs, hx, w_ih, w_hh, output, ws[0], False, False, mask)
        else:
            torch.ops.rnnfused.rnn_layer_backward.default(
                go, gh, x, bs, hx, w_ih, w_hh, output, False, kind == "rnn_relu", False, mask)
    except RuntimeError:
        count("backward op: garbage raised")
        return
    raise AssertionError(f"{kind}_layer_backward accepted a wrong '{which}'")


# ---------------------------------------------------------------- the modules

MODULES = ["RNN_tanh", "RNN_relu", "LSTM", "LSTM_proj", "GRU"]
FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted", "batch0", "packed_corrupt"]


@st.composite
def module_case(draw):
    name = draw(st.sampled_from(MODULES))
    dtype = draw(st.sampled_from(DTYPES))
    H = draw(st.sampled_from([1, 2, 8, 9, 17]))
    kwargs = dict(
        input_size=draw(st.integers(1, 3)), hidden_size=H,
        num_layers=draw(st.integers(1, 2)), bias=draw(st.booleans()),
        batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
    )
    if name.startswith("RNN"):
        kwargs["nonlinearity"] = name[4:]
    if name == "LSTM_proj":
        kwargs["proj_size"] = draw(st.integers(1, H - 1)) if H > 1 else 0
    form = draw(st.sampled_from(FORMS))
    B = 0 if form == "batch0" else draw(st.integers(1, 3))
    T = draw(st.integers(0 if form in ("batched", "unbatched") else 1, 4))
    lengths = (
        draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if form.startswith("packed") else None
    )
    if form in ("packed_sorted", "packed_corrupt"):
        lengths = sorted(lengths, reverse=True)
    corruption = draw(st.sampled_from(CORRUPTIONS[:7])) if form == "packed_corrupt" else None
    return dict(name=name.split("_")[0], kwargs=kwargs, dtype=dtype, form=form, B=B, T=T,
                lengths=lengths, corruption=corruption, with_hx=draw(st.booleans()), training=draw(st.booleans()),
                layout=draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
                seed=draw(st.integers(0, 2**16)))


def module_inputs(case, module):
    """Leaves (x, h0, c0) and a builder turning leaves into the module's arguments."""
    kw, B, T = case["kwargs"], case["B"], case["T"]
    D = 2 if kw["bidirectional"] else 1
    L = kw["num_layers"] * D
    H = kw["hidden_size"]
    P = kw.get("proj_size", 0) or H
    I = kw["input_size"]
    dt = case["dtype"]
    unbatched = case["form"] == "unbatched"
    shape = (T, I) if unbatched else ((B, T, I) if kw["batch_first"] else (T, B, I))
    base = torch.randn(*shape[:-1], 2 * I, dtype=dt) if case["layout"] == "sliced" else None
    if case["layout"] == "transposed" and len(shape) == 3:
        x = torch.randn(shape[1], shape[0], I, dtype=dt)
        view = lambda t: t.transpose(0, 1)  # noqa: E731
    elif base is not None:
        x = base
        view = lambda t: t[..., ::2]  # noqa: E731
    else:
        x = torch.randn(shape, dtype=dt)
        view = lambda t: t  # noqa: E731
    h0 = c0 = None
    if case["with_hx"]:
        h0 = torch.randn(*((L,) if unbatched else (L, B)), P, dtype=dt)
        if case["name"] == "LSTM":
            c0 = torch.randn(*((L,) if unbatched else (L, B)), H, dtype=dt)

    def build(x_, h0_, c0_):
        inp = view(x_)
        if case["corruption"] is not None:
            good = batch_sizes_of(case["lengths"])
            bs, rows = corrupt(good, case["corruption"], B)
            data = inp.reshape(-1, I)
            data = torch.cat([data] * (rows // max(data.size(0), 1) + 1))[:rows]
            inp = torch.nn.utils.rnn.PackedSequence(data, bs, None, None)
        elif case["lengths"] is not None:
            inp = pack_padded_sequence(inp, torch.tensor(case["lengths"]),
                                       batch_first=kw["batch_first"],
                                       enforce_sorted=case["form"] == "packed_sorted")
        if h0_ is None:
            return (inp,)
        return (inp, (h0_, c0_)) if c0_ is not None else (inp, h0_)

    return [x, h0, c0], build


def run_module(module, leaves, build, seed):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in leaves]
    out, hidden = module(*build(*leaves))
    out_t = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    results = [out_t, *states]
    loss = weighted_loss(results, seed)
    wrt = [t for t in leaves if t is not None] + list(module.parameters())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
    return results + list(grads)


def check_module(case) -> None:
    torch.manual_seed(case["seed"])
    kw = dict(case["kwargs"])
    ref = getattr(torch.nn, case["name"])(**kw, dtype=case["dtype"])
    fused = getattr(rnnfused, case["name"])(**kw, dtype=case["dtype"])
    fused.load_state_dict(ref.state_dict())
    ref.train(case["training"])
    fused.train(case["training"])
    leaves, build = module_inputs(case, ref)
    if case["corruption"] is not None:
        # Corrupt batch sizes: rnnfused refuses, or agrees with torch.nn where that is valid.
        try:
            got = run_module(fused, leaves, build, case["seed"])
        except (RuntimeError, ValueError, IndexError):
            count("module: corrupt batch_sizes raised")
            return
        want = run_module(ref, leaves, build, case["seed"])
        for k, (g, w) in enumerate(zip(got, want)):
            torch.testing.assert_close(g, w, **TOL[case["dtype"]],
                                       msg=lambda m, k=k: f"{case}: result {k}: {m}")
        count("module: corrupt batch_sizes accepted, equal to torch.nn")
        return
    try:
        want = run_module(ref, leaves, build, case["seed"])
    except Exception as error:  # torch.nn refuses: rnnfused must refuse the same way
        try:
            run_module(fused, leaves, build, case["seed"])
        except Exception as mine:
            assert type(mine) is type(error), f"{case}: torch.nn raised {error!r}, rnnfused {mine!r}"
            count("module: both raised")
            return
        raise AssertionError(f"{case}: torch.nn raised {error!r}, rnnfused did not")
    got = run_module(fused, leaves, build, case["seed"])
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL[case["dtype"]],
                                   msg=lambda m, k=k: f"{case}: result {k}: {m}")
    count(f"module: {case['name']} {case['form']}")


@st.composite
def cell_case(draw):
    return dict(
        name=draw(st.sampled_from(["RNNCell", "LSTMCell", "GRUCell"])),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        I=draw(st.integers(1, 3)), H=draw(st.sampled_from([1, 8, 17])), B=draw(st.integers(0, 3)),
        unbatched=draw(st.booleans()), with_hx=draw(st.booleans()), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**16)),
    )


def check_cell(case) -> None:
    torch.manual_seed(case["seed"])
    kw = dict(bias=case["bias"], dtype=case["dtype"])
    if case["name"] == "RNNCell":
        kw["nonlinearity"] = case["nonlinearity"]
    ref = getattr(torch.nn, case["name"])(case["I"], case["H"], **kw)
    fused = getattr(rnnfused, case["name"])(case["I"], case["H"], **kw)
    fused.load_state_dict(ref.state_dict())
    lead = () if case["unbatched"] else (case["B"],)
    x = torch.randn(*lead, case["I"], dtype=case["dtype"])
    hx = None
    if case["with_hx"]:
        hx = [torch.randn(*lead, case["H"], dtype=case["dtype"])]
        if case["name"] == "LSTMCell":
            hx.append(torch.randn(*lead, case["H"], dtype=case["dtype"]))

    def run(module):
        xl = x.clone().requires_grad_(True)
        hl = None if hx is None else [h.clone().requires_grad_(True) for h in hx]
        state = None if hl is None else (tuple(hl) if len(hl) == 2 else hl[0])
        out = module(xl, state)
        outs = list(out) if isinstance(out, tuple) else [out]
        wrt = [xl] + (hl or []) + list(module.parameters())
        grads = torch.autograd.grad(weighted_loss(outs, case["seed"]), wrt, allow_unused=True,
                                    materialize_grads=True)
        return outs + list(grads)

    for k, (g, w) in enumerate(zip(run(fused), run(ref))):
        torch.testing.assert_close(g, w, **TOL[case["dtype"]], msg=lambda m: f"{case}: {k}: {m}")
    count(f"cell: {case['name']}")


# ---------------------------------------------------------------- driver


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300, help="examples per property")
    parser.add_argument("--only", default=None, help="run one property (op, backward, module, cell)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert rnnfused.backend_info()["extension"], rnnfused.backend_info()["extension_error"]
    isa = torch.ops.rnnfused.cpu_isa()
    assert isa in ("avx512", "avx2", "scalar"), isa
    wanted = os.environ.get("RNNFUSED_CPU_ISA")
    print(f"cpu_isa={isa} (RNNFUSED_CPU_ISA={wanted})", flush=True)

    def configured(n):
        return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                        print_blob=True,
                        suppress_health_check=list(HealthCheck))

    properties = {
        "op": configured(args.examples)(given(op_case())(check_op)),
        "backward": configured(max(args.examples // 8, 10))(
            given(backward_garbage())(lambda c: check_backward_garbage(*c))),
        "module": configured(args.examples // 2)(given(module_case())(check_module)),
        "cell": configured(max(args.examples // 4, 10))(given(cell_case())(check_cell)),
    }
    failed = []
    for name, prop in properties.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        try:
            prop()
        except Exception:  # report every property, then fail
            traceback.print_exc()
            failed.append(name)
        print(f"property {name}: {time.perf_counter() - start:.1f}s "
              f"{'FAILED' if name in failed else 'ok'}", flush=True)
    for key in sorted(STATS):
        print(f"  {STATS[key]:6d}  {key}")
    print(f"cases run: {sum(STATS.values())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
