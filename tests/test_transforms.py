"""The rest of PyTorch's module machinery over the rnnfused modules, as over torch.nn's:
torch.func transforms (grad over functional_call), Expanded Weights (per-sample
gradients), torch.fx.symbolic_trace, torch.jit.trace, torch.jit.script.

torch.func and Expanded Weights run torch.nn's own forward (the fused ops' C++ autograd
has no functorch rules); fx keeps the module whole, as it does torch.nn's, so the traced
GraphModule runs the fused kernels."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad
from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

import rnnfused
from helpers import (CELL_KINDS, INPUT_SIZE, MODULE_KINDS, SEQ_LEN, flat_tensors,
                     make_kind_twins, weighted_sum)

BATCH = 3


def _first(result):
    """The output tensor of a module or cell result (h for LSTMCell)."""
    return result[0] if isinstance(result, tuple) else result


def _input(kind, dtype=torch.float32):
    shape = (BATCH, INPUT_SIZE) if kind in CELL_KINDS else (SEQ_LEN, BATCH, INPUT_SIZE)
    return torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_func_grad_over_functional_call(kind):
    """torch.func.grad of a loss over functional_call equals autograd's gradients."""
    _, fused = make_kind_twins(kind)
    x = _input(kind)
    params = dict(fused.named_parameters())

    def loss(p):
        return weighted_sum([_first(functional_call(fused, p, (x,)))])

    grads = grad(loss)(params)
    expected = torch.autograd.grad(loss(params), list(params.values()))
    for name, want in zip(params, expected, strict=True):
        torch.testing.assert_close(grads[name], want, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_forward_mode_ad_as_torch_nn(kind):
    """Inside torch.autograd.forward_ad.dual_level torch.nn's forward runs (the ops'
    C++ autograd has no forward derivatives): the same primal and tangent, or the
    same error where torch.nn has none (its CPU LSTM on oneDNN)."""
    from torch.autograd import forward_ad

    ref, fused = make_kind_twins(kind)
    x, tangent = _input(kind), _input(kind)
    results = []
    for module in (ref, fused):
        try:
            with forward_ad.dual_level():
                out = _first(module(forward_ad.make_dual(x, tangent)))
                results.append(tuple(forward_ad.unpack_dual(out)))
        except (NotImplementedError, RuntimeError) as error:
            results.append((type(error), str(error)))
    if isinstance(results[0][0], type):
        assert results[1] == results[0]
    else:
        for got, want in zip(results[1], results[0], strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_per_sample_gradients_with_expanded_weights(kind):
    """call_for_per_sample_grads: each parameter's grad_sample[i] is the gradient of
    sample i's loss alone (float64: torch.nn's LSTM decomposition takes oneDNN, which
    Expanded Weights refuses, in float32 on the CPU)."""
    _, fused = make_kind_twins(kind, dtype=torch.float64, batch_first=True)
    x = torch.randn(BATCH, SEQ_LEN, INPUT_SIZE, dtype=torch.float64)
    call_for_per_sample_grads(fused)(x)[0].sum().backward()
    for i in range(BATCH):
        expected = torch.autograd.grad(fused(x[i : i + 1])[0].sum(), list(fused.parameters()))
        for param, want in zip(fused.parameters(), expected, strict=True):
            torch.testing.assert_close(param.grad_sample[i], want, atol=1e-10, rtol=1e-8)


class _Model(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.recurrent = make_kind_twins(kind)[1]
        self.head = torch.nn.Linear(getattr(self.recurrent, "proj_size", 0) or self.recurrent.hidden_size, 1)
        self.returns_tuple = kind not in ("rnn_tanh_cell", "rnn_relu_cell", "gru_cell")

    def forward(self, x):
        out = self.recurrent(x)  # a Proxy while fx traces: no isinstance on it
        if self.returns_tuple:
            out = out[0]
        return self.head(out)


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_fx_symbolic_trace_keeps_the_module_whole(kind):
    model = _Model(kind)
    x = _input(kind)
    expected = model(x)
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["recurrent", "head"], calls
    torch.testing.assert_close(traced(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kind, bidirectional",
    [(k, b) for k in MODULE_KINDS for b in (False, True)] + [(k, False) for k in CELL_KINDS],
)
def test_jit_trace_records_the_fused_ops(kind, bidirectional):
    """torch.jit.trace, with its check (a rerun under no_grad that must record the
    same graph), over every module and cell: the graph calls rnnfused's ops, and the
    traced module gives torch.nn's outputs and gradients, in training and inference.
    Two threads, so that a bidirectional layer records the two-direction op."""
    kwargs = {} if kind in CELL_KINDS else dict(num_layers=2, bidirectional=bidirectional)
    nn_module, fused = make_kind_twins(kind, **kwargs)
    x = _input(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        traced = torch.jit.trace(fused, (x,))  # check_trace=True: raises if the graphs differ
        assert "rnnfused::" in str(traced.graph), traced.graph
        with torch.no_grad():
            for got, want in zip(flat_tensors(traced(x)), flat_tensors(nn_module(x)), strict=True):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        x_fused, x_nn = x.clone().requires_grad_(), x.clone().requires_grad_()
        leaves_fused, leaves_nn = [x_fused, *fused.parameters()], [x_nn, *nn_module.parameters()]
        got = torch.autograd.grad(weighted_sum(flat_tensors(traced(x_fused))), leaves_fused)
        want = torch.autograd.grad(weighted_sum(flat_tensors(nn_module(x_nn))), leaves_nn)
    finally:
        torch.set_num_threads(threads)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_jit_traced_output_changed_in_place(kind):
    """A module traced under no_grad, then trained through with its output changed
    in place before backward: the traced graph copies the op's saved output whatever
    the grad mode it was traced in, so the backward runs and gives the gradients of
    the same change made out of place under torch.nn."""
    nn_module, fused = make_kind_twins(kind, batch_first=True)
    x = _input(kind)
    with torch.no_grad():
        traced = torch.jit.trace(fused, (x,), check_trace=False)
    grads = []
    for module in (traced, nn_module):
        leaf = x.clone().requires_grad_()
        out, hidden = module(leaf)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden
        out = out.add_(1.0) if module is traced else out + 1.0
        grads.append(torch.autograd.grad(weighted_sum([out, h_n]), leaf)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_jit_script_cell_runs_torch_nn_twin(kind):
    """torch.jit.script compiles torch.nn's class over the same parameters."""
    nn_cell, fused = make_kind_twins(kind)
    scripted = torch.jit.script(fused)
    assert type(fused) is getattr(rnnfused, type(nn_cell).__name__)  # the module itself unchanged
    assert {n: p for n, p in scripted.named_parameters()}.keys() == dict(fused.named_parameters()).keys()
    x = _input(kind)
    for got, want in zip(flat_tensors(scripted(x)), flat_tensors(nn_cell(x)), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("context", ["checkpoint", "checkpoint_reentrant", "save_on_cpu",
                                     "saved_tensors_hooks", "detect_anomaly"])
def test_autograd_contexts_over_bidirectional_layers(context):
    """Activation checkpointing, saved-tensor hooks and anomaly mode run Python while
    autograd records the layer: a bidirectional layer then keeps both directions on
    the calling thread (csrc/directions.cpp's two threads would call Python off it).
    Gradients equal those of a plain call."""
    from torch.utils.checkpoint import checkpoint

    _, fused = make_kind_twins("lstm", num_layers=2, bidirectional=True)
    x = torch.randn(SEQ_LEN, BATCH, INPUT_SIZE, requires_grad=True)
    leaves = [x, *fused.parameters()]

    def gradients(loss):  # backward(): reentrant checkpointing refuses autograd.grad
        for leaf in leaves:
            leaf.grad = None
        loss.backward()
        return [leaf.grad.clone() for leaf in leaves]

    expected = gradients(weighted_sum([fused(x)[0]]))

    def forward():
        if context.startswith("checkpoint"):
            reentrant = context.endswith("reentrant")
            return checkpoint(lambda t: fused(t)[0], x, use_reentrant=reentrant)
        if context == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                return fused(x)[0]
        if context == "saved_tensors_hooks":
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                return fused(x)[0]
        return fused(x)[0]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # where the two-thread path would otherwise run
    try:
        if context == "detect_anomaly":
            with torch.autograd.detect_anomaly(check_nan=False):
                grads = gradients(weighted_sum([forward()]))
        else:
            grads = gradients(weighted_sum([forward()]))
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
