"""Shared helpers: build a torch.nn module and its rnnfused twin, run both, compare.

A "kind" names a module configuration:
    rnn_tanh, rnn_relu, lstm, lstm_proj, gru      (full-sequence modules)
    rnn_tanh_cell, rnn_relu_cell, lstm_cell, gru_cell
"""

from __future__ import annotations

import copy
import os

import torch
import torch.utils._python_dispatch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfused

MODULE_KINDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
CELL_KINDS = ["rnn_tanh_cell", "rnn_relu_cell", "lstm_cell", "gru_cell"]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def subprocess_env(**variables: str) -> dict:
    """os.environ with `variables` set, for a Python subprocess that imports rnnfused
    (and these helpers): PYTHONPATH keeps the caller's entries first, since `make
    sanitize` points it at the sanitized build, then the repository root and tests/."""
    path = [p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(TESTS_DIR), TESTS_DIR) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **variables)


def cpu_flags_and_vendor() -> tuple[set, str] | None:
    """The CPU's feature flags (of its first processor) and vendor id from /proc/cpuinfo,
    or None where there is none."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as f:
        lines = f.readlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")
    return set(flags), vendor


# Small sizes keep the suite fast on 2 CPU cores; they still exercise every code path.
INPUT_SIZE = 4
HIDDEN_SIZE = 6
PROJ_SIZE = 3
SEQ_LEN = 5


def tolerances(dtype: torch.dtype) -> dict:
    """atol/rtol for comparing rnnfused with torch.nn.

    float64: both compute the same math in double; differences are summation order only.
    float32: the project's stated tolerance (fused GEMMs reorder the sums).
    """
    if dtype == torch.float64:
        return dict(atol=1e-10, rtol=1e-8)
    if dtype == torch.float32:
        return dict(atol=1e-5, rtol=1e-4)
    raise ValueError(f"no comparison tolerance for {dtype}")


def module_spec(kind: str) -> tuple[str, dict]:
    """(class name, extra constructor kwargs) for a kind."""
    return {
        "rnn_tanh": ("RNN", dict(nonlinearity="tanh")),
        "rnn_relu": ("RNN", dict(nonlinearity="relu")),
        "lstm": ("LSTM", {}),
        "lstm_proj": ("LSTM", dict(proj_size=PROJ_SIZE)),
        "gru": ("GRU", {}),
        "rnn_tanh_cell": ("RNNCell", dict(nonlinearity="tanh")),
        "rnn_relu_cell": ("RNNCell", dict(nonlinearity="relu")),
        "lstm_cell": ("LSTMCell", {}),
        "gru_cell": ("GRUCell", {}),
    }[kind]


def make_twins(name: str, *args, device="cpu", dtype=torch.float32, **kwargs):
    """torch.nn.<name>(*args, **kwargs) and rnnfused.<name> holding the same weights.

    The rnnfused module is built with the same arguments, then loads the torch.nn state_dict.
    """
    ref = getattr(torch.nn, name)(*args, device=device, dtype=dtype, **kwargs)
    fused = getattr(rnnfused, name)(*args, device=device, dtype=dtype, **kwargs)
    fused.load_state_dict(ref.state_dict())
    assert type(fused) is getattr(rnnfused, name)
    for (n_ref, p_ref), (n_fused, p_fused) in zip(ref.named_parameters(), fused.named_parameters()):
        assert n_ref == n_fused
        assert torch.equal(p_ref, p_fused), n_ref
    return ref, fused


def pair_nodes(tensor: torch.Tensor) -> int:
    """The autograd nodes of the two-direction ops (csrc/directions.cpp) in tensor's graph."""
    seen, pending, count = set(), [tensor.grad_fn], 0
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += "LayerPair" in node.name()
        pending.extend(parent for parent, _ in node.next_functions)
    return count


def make_kind_twins(kind: str, device="cpu", dtype=torch.float32, **kwargs):
    name, extra = module_spec(kind)
    return make_twins(name, INPUT_SIZE, HIDDEN_SIZE, device=device, dtype=dtype, **extra, **kwargs)


def is_lstm(module) -> bool:
    return isinstance(module, (torch.nn.LSTM, torch.nn.LSTMCell))


def fixed_randn(shape, device, dtype, seed: int) -> torch.Tensor:
    """Deterministic normal tensor that does not touch the global RNG."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def weighted_sum(tensors, seed: int = 1234) -> torch.Tensor:
    """sum_k (t_k * W_k).sum() with a distinct fixed random weight per element, so that gradient
    errors in different elements cannot cancel."""
    total = None
    for k, t in enumerate(tensors):
        if t is None:
            continue
        term = (t * fixed_randn(t.shape, t.device, t.dtype, seed + 7919 * k)).sum()
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------- full-sequence modules

FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted", "empty"]


def make_inputs(module, form: str, with_hx: bool, device, dtype, batch_first=None,
                batch: int = 3, seq_len: int = SEQ_LEN, lengths=None):
    """Leaf tensors (x, h0, c0-or-None) and a `build` function turning leaves into the
    module arguments.  Shapes follow torch.nn's documentation for `form`; "batched"
    takes `batch` sequences, "packed_sorted" these `lengths` where given (descending,
    the first seq_len)."""
    custom_lengths = lengths
    if batch_first is None:
        batch_first = module.batch_first
    num_dirs = 2 if module.bidirectional else 1
    out_h = module.proj_size if getattr(module, "proj_size", 0) > 0 else module.hidden_size
    layers = module.num_layers * num_dirs
    T, I, H = seq_len, module.input_size, module.hidden_size

    lengths = None
    if form == "batched":
        B = batch
        xshape = (B, T, I) if batch_first else (T, B, I)
    elif form == "empty":
        B = 0
        xshape = (B, T, I) if batch_first else (T, B, I)
    elif form == "unbatched":
        B = None
        xshape = (T, I)
    elif form == "packed_sorted":
        lengths = custom_lengths or [T, 3, 3, 1]  # descending, with a repeated length
        B = len(lengths)
        xshape = (B, T, I) if batch_first else (T, B, I)
    elif form == "packed_unsorted":
        lengths = [3, T, 1, 3, 2]       # the longest sequence is not first
        B = len(lengths)
        xshape = (B, T, I) if batch_first else (T, B, I)
    else:
        raise ValueError(form)

    x = torch.randn(xshape, device=device, dtype=dtype)
    if lengths is not None:
        # zero the padding so that both modules see identical padded tensors
        for b, n in enumerate(lengths):
            if batch_first:
                x[b, n:] = 0
            else:
                x[n:, b] = 0
    h0 = c0 = None
    if with_hx:
        hshape = (layers, out_h) if B is None else (layers, B, out_h)
        h0 = torch.randn(hshape, device=device, dtype=dtype)
        if is_lstm(module):
            cshape = (layers, H) if B is None else (layers, B, H)
            c0 = torch.randn(cshape, device=device, dtype=dtype)

    def build(x_, h0_, c0_):
        inp = x_
        if lengths is not None:
            inp = pack_padded_sequence(
                x_, torch.tensor(lengths), batch_first=batch_first,
                enforce_sorted=(form == "packed_sorted"))
        if h0_ is None:
            return (inp,)
        if c0_ is not None:
            return (inp, (h0_, c0_))
        return (inp, h0_)

    return (x, h0, c0), build


def flat_tensors(result) -> list[torch.Tensor]:
    """The tensors of a module's result: output (a PackedSequence's data) and every state."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, PackedSequence):
        return [result.data]
    return [t for part in result for t in flat_tensors(part)]


def named_gradients(loss, leaves, module) -> dict:
    """{"grad <name>": gradient} of `loss` for each (name, tensor) in `leaves` and each
    parameter of `module` (zeros where unused)."""
    params = list(module.named_parameters())
    grads = torch.autograd.grad(
        loss, [t for _, t in leaves] + [p for _, p in params],
        allow_unused=True, materialize_grads=True)
    return {f"grad {n}": g for (n, _), g in zip(leaves + params, grads)}


def run_module(module, leaves, build, seed: int = 1234) -> dict:
    """Forward + weighted loss + gradients w.r.t. the input, the initial states and every
    parameter.  Returns name -> tensor (outputs and gradients)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in leaves]
    args = build(*leaves)
    out, hidden = module(*args)
    result = {}
    if isinstance(out, PackedSequence):
        result["output.data"] = out.data
        result["output.batch_sizes"] = out.batch_sizes
        result["output.sorted_indices"] = out.sorted_indices
        result["output.unsorted_indices"] = out.unsorted_indices
        out_t = out.data
    else:
        result["output"] = out
        out_t = out
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    for k, s in enumerate(states):
        result[f"hidden[{k}]"] = s
    result["output.requires_grad"] = out_t.requires_grad
    loss = weighted_sum([out_t] + states, seed)
    grad_names = ["input", "h0", "c0"]
    inputs = [(n, t) for n, t in zip(grad_names, leaves) if t is not None]
    result.update(named_gradients(loss, inputs, module))
    return result


def run_float64_twin(module, leaves, build, seed: int = 1234) -> dict:
    """run_module on a float64 copy of `module` with the leaves upcast: the exact
    results that float32 and 16-bit ones are measured against."""
    return run_module(copy.deepcopy(module).double(),
                      [None if t is None else t.double() for t in leaves], build, seed)


def assert_results_equal(actual: dict, expected: dict, dtype: torch.dtype, context: str = "",
                         exact: dict | None = None):
    """rnnfused's results (`actual`) against torch.nn's (`expected`): float tensors
    within `tolerances(dtype)`, everything else equal. Given `exact` (the float64
    results), a float tensor may instead be no further from it than twice torch.nn's."""
    assert list(actual) == list(expected), f"{context}: result keys differ"
    tol = tolerances(dtype)
    for key, exp in expected.items():
        act = actual[key]
        if exp is None or isinstance(exp, bool):
            assert act == exp, f"{context}: {key}: {act} != {exp}"
        elif exp.is_floating_point() and exact is not None:
            ref = exact[key].double()
            err = (act.double() - ref).abs()
            torch_err = (exp.double() - ref).abs().max() if exp.numel() else 0.0
            allowed = torch.clamp(tol["atol"] + tol["rtol"] * ref.abs(), min=2 * torch_err)
            assert (err <= allowed).all(), (
                f"{context}: {key}: error {err.max():.3g} against float64, torch.nn's {torch_err:.3g}")
        elif exp.is_floating_point():
            torch.testing.assert_close(
                act, exp, **tol, msg=lambda m, key=key: f"{context}: {key}: {m}")
        else:
            assert torch.equal(act, exp), f"{context}: {key}: {act} != {exp}"


def compare_modules(ref, fused, form: str, with_hx: bool, device, dtype, seed: int = 1234,
                    against_float64: bool = False, **input_sizes):
    leaves, build = make_inputs(ref, form, with_hx, device, dtype, **input_sizes)
    expected = run_module(ref, leaves, build, seed)
    actual = run_module(fused, leaves, build, seed)
    exact = None
    if dtype == torch.float32 and (against_float64 or torch.device(device).type == "cuda"):
        # cuDNN sums in its own order (weight gradients most): on CUDA, float32 results
        # are held to float64 ones, and to twice torch.nn's error against them; so are
        # long reductions (against_float64), where a few sums of thousands of terms
        # land past the fixed tolerance in either order.
        exact = run_float64_twin(ref, leaves, build, seed)
    assert_results_equal(actual, expected, dtype, f"{type(fused).__name__} {form}", exact)
    return actual, expected


def simple_forward(module, x, *rest):
    out, _ = module(x, *rest)
    return out


# ---------------------------------------------------------------- cells

def run_cell_loop(cell, xs, hx, seed: int = 1234) -> dict:
    """Step `cell` over xs[t] in a Python loop; weighted loss over every step's state(s);
    gradients w.r.t. each x_t, the initial state(s) and every parameter."""
    xs = xs.detach().clone().requires_grad_(True)
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_(True) for h in hx)
    state = None if hx is None else (hx if is_lstm(cell) else hx[0])
    per_step = []
    for t in range(xs.shape[0]):
        state = cell(xs[t], state) if state is not None else cell(xs[t])
        per_step.extend(state if isinstance(state, tuple) else (state,))
    result = {f"state[{k}]": s for k, s in enumerate(per_step)}
    loss = weighted_sum(per_step, seed)
    leaves = [("input", xs)] + ([] if hx is None else [(f"hx[{k}]", h) for k, h in enumerate(hx)])
    result.update(named_gradients(loss, leaves, cell))
    return result


class BackwardSpy(torch.utils._python_dispatch.TorchDispatchMode):
    """Inside `with BackwardSpy() as spy:`, records (output_mask, gradients) of every
    rnnfused *_layer_backward op call, wherever it is made from (the ops' autograd
    calls them from C++)."""

    _NAMES = ("lstm_layer_backward", "gru_layer_backward", "rnn_layer_backward")

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[list[bool], tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func.namespace == "rnnfused" and func._opname in self._NAMES:
            self.calls.append((list(args[-1]), result))
        return result


class OpNames(torch.utils._python_dispatch.TorchDispatchMode):
    """Inside `with OpNames() as ops:`, collects in ops.names the name of every rnnfused
    op called (to check that the fused kernels ran, not torch.nn's forward)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "rnnfused":
            self.names.add(func._opname)
        return func(*args, **(kwargs or {}))


def relative_error(results, exact, keys):
    """||results - exact|| / ||exact|| over a group of tensors taken together.  One rounding of
    a single element decides a per-element or per-tensor maximum; the group norm averages over
    many roundings, so comparing it between two implementations is stable."""
    num = sum(((results[k].double() - exact[k]) ** 2).sum() for k in keys)
    den = sum((exact[k] ** 2).sum() for k in keys)
    return (num / den).sqrt().item()


def check_errors(actual, expected_low, exact, dtype, with_grads=True):
    """The low-precision rule: rnnfused's relative error against `exact` (float64) is at
    most twice torch.nn's (`expected_low`), outputs and gradients judged as two groups."""
    assert list(actual) == list(exact)
    tensors = [k for k, v in exact.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    groups = {"outputs": [k for k in tensors if not k.startswith("grad")]}
    if with_grads:
        groups["gradients"] = [k for k in tensors if k.startswith("grad")]
    for k in tensors:
        assert actual[k].dtype == expected_low[k].dtype == dtype, k
    for group, keys in groups.items():
        err_torch = relative_error(expected_low, exact, keys)
        err_fused = relative_error(actual, exact, keys)
        # the floor: one unit of rounding relative to the values, where torch.nn is exact by luck
        assert err_fused <= max(2 * err_torch, torch.finfo(dtype).eps), (
            f"{group}: rnnfused relative error {err_fused:.3g} > 2 x torch.nn's {err_torch:.3g}")


def compare_low_precision(ref, fused, form: str, with_hx: bool, device, dtype, with_grads=True,
                          **input_sizes):
    """compare_modules for float16 / bfloat16: run both modules and a float64 twin of `ref`
    holding the same (rounded) weights upcast, then check_errors."""
    leaves, build = make_inputs(ref, form, with_hx, device, dtype, **input_sizes)
    exact = run_float64_twin(ref, leaves, build)
    check_errors(run_module(fused, leaves, build), run_module(ref, leaves, build), exact, dtype,
                 with_grads=with_grads)
