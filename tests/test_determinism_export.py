"""Determinism (bitwise identical results run to run: on the CPU always, on CUDA under
torch.use_deterministic_algorithms(True)) and torch.export (the exported program, with
symbolic length and batch size, gives the module's outputs)."""

import pytest
import torch

import rnnfused
from helpers import CELL_KINDS, INPUT_SIZE, MODULE_KINDS, make_inputs, make_kind_twins, run_module


@pytest.fixture
def deterministic(device):
    if device == "cuda":
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        yield
        torch.use_deterministic_algorithms(previous)
    else:
        yield


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_bitwise_run_to_run(kind, form, device, deterministic):
    _, fused = make_kind_twins(kind, device=device, num_layers=2, bidirectional=True)
    leaves, build = make_inputs(fused, form, True, device, torch.float32)
    first = run_module(fused, leaves, build)
    for _ in range(2):
        again = run_module(fused, leaves, build)
        for key, value in first.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(again[key], value), key


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnfused.LSTM(INPUT_SIZE, 6, num_layers=2, bidirectional=True,
                                  batch_first=True)
        self.gru = rnnfused.GRU(12, 5, batch_first=True)
        self.cell = rnnfused.LSTMCell(5, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.cell(h[0])


def test_export_dynamic_shapes(device):
    model = _Model().to(device)
    x = torch.randn(3, 7, INPUT_SIZE, device=device)
    batch, length = torch.export.Dim("batch", min=2), torch.export.Dim("length", min=2)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch, 1: length}})
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("rnnfused.lstm_layer.default") == 5  # 4 layer-directions + the cell
    assert targets.count("rnnfused.gru_layer.default") == 1
    for shape in [(3, 7, INPUT_SIZE), (5, 2, INPUT_SIZE)]:
        x = torch.randn(shape, device=device)
        for got, want in zip(program.module()(x), model(x), strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_export_every_kind(kind, device):
    _, fused = make_kind_twins(kind, device=device)
    x = torch.randn((3, INPUT_SIZE) if kind.endswith("_cell") else (5, 3, INPUT_SIZE),
                    device=device)
    program = torch.export.export(fused, (x,))
    got, want = program.module()(x), fused(x)
    flat = lambda r: [r] if isinstance(r, torch.Tensor) else [t for p in r for t in flat(p)]  # noqa: E731
    for a, b in zip(flat(got), flat(want), strict=True):
        assert torch.equal(a, b)
