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
from helpers import CELL_KINDS, INPUT_SIZE, MODULE_KINDS, make_kind_twins

# (T, B): lengths and batch sizes that a static compilation would specialise on, one by one
SHAPES = [(3, 2), (6, 4), (4, 5)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _outputs(result):
    """The tensors of a module's result, flattened: output and every state."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in _outputs(part)]


def _run(module, x):
    """Outputs, and gradients of a weighted sum of them w.r.t. the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    outs = _outputs(module(x))
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


class _Model(torch.nn.Module):
    """Every kind of recurrent module in one model (dense input: dynamo refuses to trace
    pack_padded_sequence, and a PackedSequence's batch sizes are data, not shapes)."""

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
