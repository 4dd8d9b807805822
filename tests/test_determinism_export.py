"""Determinism (bitwise identical results run to run: on the CPU always, on CUDA under
torch.use_deterministic_algorithms(True)), torch.export (the exported program, with
symbolic length and batch size, gives the module's outputs) and torch.onnx.export (the
ONNX graph torch.nn's modules give)."""

import io
import warnings

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


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_bfloat16_bitwise_across_runs_threads_and_thread_counts(name):
    """bfloat16 layers (on AMX tiles where the CPU has them: each OpenMP thread holds its own
    tile configuration) give the same bits run to run, on one thread or two (each unit's sums
    are formed by one thread in a fixed order), and from four Python threads at once.
    The input projection's GEMM is oneDNN's, whose bfloat16 sums over some input widths
    follow a blocking chosen for the thread count (torch.mm of 444 x 140 by 140 x 280 gives
    other bits on one thread than on two; of width 40, 64, 128 or 256 the same): the
    second layer's input here is 128 wide (H 64; at H 70, 140 wide, the bits on one thread and
    on two differed for some weights)."""
    import threading

    torch.manual_seed(0)
    module = getattr(rnnfused, name)(40, 64, num_layers=2, bidirectional=True).bfloat16()
    x = torch.randn(12, 37, 40).bfloat16()
    threads_before = torch.get_num_threads()
    with torch.no_grad():
        first = module(x)[0]
        assert torch.equal(module(x)[0], first)
        try:
            torch.set_num_threads(1)
            assert torch.equal(module(x)[0], first)
        finally:
            torch.set_num_threads(threads_before)
        results = [None] * 4

        def run(k):
            results[k] = module(x)[0]

        workers = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert all(r is not None and torch.equal(r, first) for r in results)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("sizes", [(50, 1, 64, 64), (50, 2, 24, 64), (20, 256, 4, 4), (30, 16, 20, 48)],
                         ids=["B1", "B2", "B256_H4", "B16_H48"])
def test_float32_gradients_bitwise_on_one_and_two_threads(name, sizes):
    """A float32 layer's outputs and gradients are the same bits on one thread and on two:
    small layers whose backward loop runs on one thread keep their backward GEMMs there
    (CpuLaunch::GemmsWhereLoopRan), larger ones split them, and a split product forms each
    sum in the same order as an unsplit one."""
    T, B, I, H = sizes
    torch.manual_seed(0)
    module = getattr(rnnfused, name)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    grad_out = torch.randn(T, B, H)

    def run():
        out, state = module(x)
        finals = list(state) if isinstance(state, tuple) else [state]
        loss = (out * grad_out).sum() + sum(f.sum() for f in finals)
        return [out, *finals, *torch.autograd.grad(loss, [x, *module.parameters()])]

    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = run()
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(threads_before)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


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


def _onnx_export(module, x, dynamo):
    """The op types of module's ONNX graph from either exporter (TorchScript's or,
    with dynamo=True, torch.export's), or what the export raised: type and message
    (where the onnx / onnxscript packages are missing, the exporters raise)."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation notices
            if dynamo:
                proto = torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
            else:
                torch.onnx.export(module, (x,), buffer, dynamo=False)
                import onnx
                proto = onnx.load_from_string(buffer.getvalue())
    except Exception as e:  # noqa: BLE001 - compared with what torch.nn raises
        return type(e), str(e)
    return sorted({node.op_type for node in proto.graph.node})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_onnx_export_as_torch_nn(kind, dynamo):
    """A program exporting its model to ONNX gets torch.nn's graph (ONNX's own LSTM, GRU,
    RNN nodes), not an unknown-operator error for rnnfused's ops."""
    cell = kind.endswith("_cell")
    reference, fused = make_kind_twins(kind, **({} if cell else dict(num_layers=2, bidirectional=True)))
    x = torch.randn((3, INPUT_SIZE) if cell else (5, 3, INPUT_SIZE))
    expected = _onnx_export(reference.eval(), x, dynamo)
    if not (kind == "lstm_proj" and not dynamo):  # TorchScript's exporter refuses projections
        assert isinstance(expected, list), expected  # torch.nn's module exports
    assert _onnx_export(fused.eval(), x, dynamo) == expected
    # the module runs its fused kernels again afterwards
    torch.testing.assert_close(fused(x), reference(x), atol=1e-5, rtol=1e-4)
