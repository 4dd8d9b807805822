"""PyTorch's own sample and error inputs for its recurrent modules, run on rnnfused.

torch.testing._internal.common_modules.module_db is the table behind PyTorch's
test/test_modules.py: for nn.RNN/LSTM/GRU and the three cells it gives the constructor
arguments, the forward inputs (unbatched, batched, batch_first, with and without states,
proj_size, dropout, ...) and the misuses with the exception each must raise. Every sample
runs on torch.nn and on its rnnfused twin (same weights, same seed) in training and eval
mode; outputs and the gradients of every input and parameter must agree, and every error
input must raise the same exception type with a message matching PyTorch's pattern.
"""

import copy
import re

import pytest
import torch

# torch.testing._internal needs expecttest (requirements.txt installs it); a machine
# without it (a GPU machine's image) skips this file rather than fail the collection.
pytest.importorskip("expecttest")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

import rnnfused
from helpers import tolerances, weighted_sum

RECURRENT = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
INFOS = [info for info in module_db if info.module_cls.__name__ in RECURRENT
         and info.module_cls.__module__.startswith("torch.nn")]
DTYPES = [torch.float32, torch.float64]


def _info_id(info):
    return info.module_cls.__name__


def test_module_db_lists_every_recurrent_module():
    assert sorted(_info_id(info) for info in INFOS) == sorted(RECURRENT)


def _flat(value):
    """Every tensor in a module's result or inputs, in order (tuples nested)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for part in value for t in _flat(part)]
    return []


def _twin_modules(info, sample, dtype, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    name = info.module_cls.__name__
    torch.manual_seed(0)
    ref = info.module_cls(*args, **kwargs).to(dtype)
    fused = getattr(rnnfused, name)(*args, **kwargs).to(dtype)
    fused.load_state_dict(ref.state_dict())
    ref.train(training)
    fused.train(training)
    return ref, fused


class _RnnfusedOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the rnnfused operator calls made inside it (from Python or from C++)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.namespace == "rnnfused"
        return func(*args, **(kwargs or {}))


def _run(module, sample, seed):
    """Forward on a fresh copy of the sample's inputs, then the gradients of a weighted sum of
    every output with respect to every floating-point input and every parameter."""
    args = copy.deepcopy(sample.forward_input.args)
    kwargs = copy.deepcopy(sample.forward_input.kwargs)
    leaves = [t for t in _flat((args, tuple(kwargs.values()))) if t.requires_grad]
    torch.manual_seed(seed)  # dropout between layers draws from the global generator
    outputs = _flat(module(*args, **kwargs))
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(weighted_sum(outputs), leaves + params, allow_unused=True,
                                materialize_grads=True) if leaves + params else []
    return outputs, list(grads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", INFOS, ids=_info_id)
def test_module_db_samples_match_torch_nn(info, dtype, training):
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                      training=training)
    assert samples, "module_db gave no sample inputs"
    tol = tolerances(dtype)
    for index, sample in enumerate(samples):
        ref, fused = _twin_modules(info, sample, dtype, training)
        context = f"{info.name} sample {index} {sample.constructor_input.kwargs}"
        ref_out, ref_grads = _run(ref, sample, seed=index)
        with _RnnfusedOps() as ops:
            fused_out, fused_grads = _run(fused, sample, seed=index)
        assert ops.calls > 0, f"{context}: no rnnfused kernel ran"
        assert len(fused_out) == len(ref_out), context
        for k, (a, e) in enumerate(zip(fused_out + fused_grads, ref_out + ref_grads)):
            torch.testing.assert_close(a, e, **tol, msg=lambda m, k=k: f"{context} tensor {k}: {m}")


@pytest.mark.parametrize("info", INFOS, ids=_info_id)
def test_module_db_error_inputs_raise_as_torch_nn(info):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=True, training=True)
    assert errors, "module_db gave no error inputs"
    for error in errors:
        sample = error.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        fused_cls = getattr(rnnfused, info.module_cls.__name__)
        with pytest.raises(error.error_type, match=error.error_regex):
            module = fused_cls(*args, **kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, (
                f"{info.name}{kwargs}: construction raised nothing, PyTorch expects "
                f"{error.error_type.__name__}: {error.error_regex!r}")
            module(*sample.forward_input.args, **sample.forward_input.kwargs)
