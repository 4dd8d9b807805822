"""float16 / bfloat16: the error of rnnfused against a float64 reference is at most twice the
error of torch.nn itself in that dtype (the project's stated rule for low precision).

Both low-precision modules hold the same rounded weights; the float64 reference holds those
same values upcast, so only the arithmetic differs.
"""

import pytest
import torch

from helpers import (
    CELL_KINDS,
    INPUT_SIZE,
    MODULE_KINDS,
    SEQ_LEN,
    make_kind_twins,
    run_cell_loop,
    make_inputs,
    run_module,
)

LOW = [torch.float16, torch.bfloat16]


def relative_error(results, exact, keys):
    """||results - exact|| / ||exact|| over a group of tensors taken together.  One rounding of
    a single element decides a per-element or per-tensor maximum; the group norm averages over
    many roundings, so comparing it between two implementations is stable."""
    num = sum(((results[k].double() - exact[k]) ** 2).sum() for k in keys)
    den = sum((exact[k] ** 2).sum() for k in keys)
    return (num / den).sqrt().item()


def check_errors(actual, expected_low, exact, dtype, with_grads=True):
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


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_low_precision_module(kind, dtype, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype, num_layers=2,
                                 bidirectional=True)
    ref64, _ = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                               bidirectional=True)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    leaves, build = make_inputs(ref, "batched", True, device, dtype)
    leaves64 = [None if t is None else t.double() for t in leaves]
    exact = run_module(ref64, leaves64, build)
    expected_low = run_module(ref, leaves, build)
    actual = run_module(fused, leaves, build)
    # ReLU's gradient is discontinuous: one pre-activation that rounds to the other side of 0
    # changes a gradient by O(1), so for rnn_relu only the (continuous) forward is judged.
    check_errors(actual, expected_low, exact, dtype, with_grads=(kind != "rnn_relu"))


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_low_precision_cell(kind, dtype, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype)
    ref64, _ = make_kind_twins(kind, device=device, dtype=torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    xs = torch.randn(SEQ_LEN, 3, INPUT_SIZE, device=device, dtype=dtype)
    exact = run_cell_loop(ref64, xs.double(), None)
    expected_low = run_cell_loop(ref, xs, None)
    actual = run_cell_loop(fused, xs, None)
    check_errors(actual, expected_low, exact, dtype, with_grads=(kind != "rnn_relu_cell"))
