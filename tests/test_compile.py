"""torch.compile(fullgraph=True) over the rnnfused modules: no graph break (torch.nn's
recurrent modules always break the graph), one compilation for every sequence length and
batch size (the ops' fake kernels give symbolic shapes), and the same outputs and gradients
as eager mode, forward and backward.

Compiling is slow on a small CPU: most tests use the "aot_eager" backend (dynamo + AOT
autograd, which is where graph breaks and shape specialisation happen); one uses inductor.
"""

import pytest
import torch
from torch._dynamo.testing import AotEagerAndRecordGraphs, CompileCounterWithBackend

import rnnfused
from torch.nn.utils.rnn import pack_sequence

from helpers import (CELL_KINDS, HIDDEN_SIZE, INPUT_SIZE, MODULE_KINDS, flat_tensors,
                     make_kind_twins, weighted_sum)

# (T, B): lengths and batch sizes that a static compilation would specialise on, one by one
SHAPES = [(3, 2), (6, 4), (4, 5)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run(module, x):
    """Outputs, and gradients of a weighted sum of them w.r.t. the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    outs = flat_tensors(module(x))
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return outs, grads


def _check_compiled(module, backend, device, shapes=SHAPES, cell=False):
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for T, B in shapes:
        x = torch.randn((B, INPUT_SIZE) if cell else (T, B, INPUT_SIZE), device=device)
        eager_outs, eager_grads = _run(module, x)
        outs, grads = _run(compiled, x)
        # the same kernels on the same data: equal up to the summation order that a
        # compiled loss may change (float32)
        for a, b in zip(outs + list(grads), eager_outs + list(eager_grads), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        frames.append(counter.frame_count)
    # fullgraph=True raised on any graph break; the first call compiled (dynamo may restart
    # its analysis once, to specialise a float), the other shapes reused it
    assert frames[0] >= 1 and frames == [frames[0]] * len(shapes)


@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_compile_module_dynamic_no_recompile(kind, device):
    _, fused = make_kind_twins(kind, device=device, num_layers=2, bidirectional=True)
    _check_compiled(fused, "aot_eager", device)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_compile_cell_dynamic_no_recompile(kind, device):
    _, fused = make_kind_twins(kind, device=device)
    _check_compiled(fused, "aot_eager", device, cell=True)


def test_compile_inductor(device):
    """The default backend, forward and backward, over varying lengths and batch sizes."""
    _, fused = make_kind_twins("lstm", device=device, num_layers=2)
    _check_compiled(fused, "inductor", device)


def test_compiled_graphs_call_the_fused_ops(device):
    """The compiled forward and backward call the layer ops and their backward ops (not a
    decomposition, not the reference path)."""
    _, fused = make_kind_twins("gru", device=device, num_layers=2)
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(fused, fullgraph=True, dynamic=True, backend=backend)
    x = torch.randn(5, 3, INPUT_SIZE, device=device, requires_grad=True)
    compiled(x)[0].sum().backward()

    def targets(graphs):
        return [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]

    assert targets(backend.fw_graphs).count("rnnfused.gru_layer.default") == 2
    assert targets(backend.bw_graphs).count("rnnfused.gru_layer_backward.default") == 2


# lengths of the sequences in a packed batch, one compiled graph for all of them:
# different batch sizes, total rows, and orders (unsorted, so the state is permuted);
# no batch of 1, which dynamo specialises on as it does every size of 0 or 1
PACKED_LENGTHS = [[5, 3, 2], [7, 7, 1, 4], [2, 1], [3, 3, 3, 1, 2]]


@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_compile_module_packed_no_graph_break(kind, device):
    """A PackedSequence into a fullgraph-compiled module: batch_sizes is data to the
    compiler (the default state's batch and the state check read batch_sizes[0]), so it
    traces as an unbacked size and a runtime assert, not a guard; every packed batch
    reuses the one graph; outputs and gradients equal eager mode, which equals torch.nn."""
    nn_module, fused = make_kind_twins(kind, device=device, num_layers=2, bidirectional=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fused, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for lengths in PACKED_LENGTHS:
        seqs = [torch.randn(n, INPUT_SIZE, device=device) for n in lengths]
        results = {}
        for name, module in (("nn", nn_module), ("eager", fused), ("compiled", compiled)):
            leaves = [s.clone().requires_grad_(True) for s in seqs]
            output, state = module(pack_sequence(leaves, enforce_sorted=False))
            outs = flat_tensors((output, state))
            grads = torch.autograd.grad(weighted_sum(outs), [*leaves, *module.parameters()])
            results[name] = outs + list(grads)
        for got, eager, want in zip(results["compiled"], results["eager"], results["nn"], strict=True):
            torch.testing.assert_close(got, eager, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == [frames[0]] * len(PACKED_LENGTHS)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compile_module_packed_checks_state_batch(kind, device):
    """A given state whose batch is not batch_sizes[0] still raises under compile."""
    _, fused = make_kind_twins(kind, device=device)
    compiled = torch.compile(fused, fullgraph=True, dynamic=True, backend="aot_eager")
    packed = pack_sequence([torch.randn(n, INPUT_SIZE, device=device) for n in (4, 2, 1)])
    h0 = torch.zeros(1, 2, HIDDEN_SIZE, device=device)
    with pytest.raises(RuntimeError, match="batch"):
        compiled(packed, (h0, h0) if kind == "lstm" else h0)


class _Model(torch.nn.Module):
    """Every kind of recurrent module in one model (dense input: dynamo does not trace
    pack_padded_sequence; a PackedSequence made outside is tested above)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(INPUT_SIZE, 6, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(12, 5, batch_first=True)
        self.rnn = torch.nn.RNN(5, 5, nonlinearity="relu")
        self.cells = torch.nn.ModuleList(
            [torch.nn.LSTMCell(5, 5), torch.nn.GRUCell(5, 5), torch.nn.RNNCell(5, 5)])

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.rnn(y.transpose(0, 1))
        h, c = self.cells[0](y[-1])
        return self.cells[2](self.cells[1](h, c))


def test_model_compiles_without_graph_break_only_once_converted():
    model = _Model()
    x = torch.randn(3, 5, INPUT_SIZE)
    # torch.nn's recurrent modules break the graph ...
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(model, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    expected = model(x)
    # ... their rnnfused twins don't
    rnnfused.convert(model)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-4)


class _ChangesOutputInPlace(torch.nn.Module):
    """`out += 1; relu_(out)` on a recurrent module's output before the loss."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, h = self.rnn(x)
        out += 1.0
        torch.relu_(out)
        return out, h


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_compiled_output_changed_in_place(kind, batch_first):
    """An output changed in place before backward (eager: tests/test_training.py,
    against torch.nn) compiles and gives the eager module's results: AOT autograd
    traces autograd over the op, which saved its output, so the module must hand out
    a copy there too."""
    _, fused = make_kind_twins(kind, batch_first=batch_first)
    ref = fused = _ChangesOutputInPlace(fused)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 3, INPUT_SIZE)
    for a, b in zip(_run(compiled, x), _run(ref, x), strict=True):
        for got, want in zip(a, b, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
