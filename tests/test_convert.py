"""rnnfused.convert beyond the basics of test_training.py: hooks, training mode and optimizer
state survive; modules under torch.nn.utils.parametrize are converted with their
parametrizations; subclasses of the torch.nn classes (their own forward) are left alone."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, weight_norm

import rnnfused
from helpers import CELL_KINDS, MODULE_KINDS, compare_modules, make_kind_twins, module_spec


def _torch_module(kind, device="cpu", dtype=torch.float64):
    ref, _ = make_kind_twins(kind, device=device, dtype=dtype)
    return ref


@pytest.mark.parametrize("kind", MODULE_KINDS + CELL_KINDS)
def test_hooks_and_training_mode_survive(kind):
    module = _torch_module(kind)
    module.eval()
    calls = []
    module.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    module.register_forward_hook(lambda m, args, out: calls.append("post"))
    module.register_full_backward_hook(lambda m, gin, gout: calls.append("backward"))
    rnnfused.convert(module)
    assert type(module) is getattr(rnnfused, module_spec(kind)[0]) and not module.training
    x = torch.randn(2, module.input_size, dtype=torch.float64, requires_grad=True)
    out = module(x if kind.endswith("_cell") else x.unsqueeze(0))
    (out if isinstance(out, torch.Tensor) else out[0]).sum().backward()
    assert calls == ["pre", "post", "backward"]


def test_optimizer_keeps_working_after_convert():
    """The optimizer built before convert() holds the same Parameters and its state (Adam's
    moments) carries on: the converted model continues the torch.nn model's trajectory."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.GRU(3, 4, num_layers=2))
    twin = copy.deepcopy(model)
    x = torch.randn(5, 2, 3)

    def step(m, opt):
        opt.zero_grad()
        m(x)[0].square().mean().backward()
        opt.step()

    opt, twin_opt = (torch.optim.Adam(m.parameters(), lr=0.1) for m in (model, twin))
    for _ in range(3):
        step(model, opt)
        step(twin, twin_opt)
    rnnfused.convert(model)
    assert all(p in opt.state for p in model.parameters())
    for _ in range(3):
        step(model, opt)
        step(twin, twin_opt)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)  # float32, the stated tolerance


@pytest.mark.parametrize("kind", ["lstm_proj", "gru", "rnn_tanh", "lstm_cell", "gru_cell"])
def test_parametrized_module_is_converted(kind, device):
    ref = _torch_module(kind, device=device)
    name = "weight_hh" if kind.endswith("_cell") else "weight_hh_l0"
    (orthogonal if kind.endswith("_cell") else weight_norm)(ref, name)
    module = copy.deepcopy(ref)
    rnnfused.convert(module)
    cls = getattr(rnnfused, module_spec(kind)[0])
    assert isinstance(module, cls) and parametrize.is_parametrized(module, name)
    assert type(module).__bases__ == (cls,)  # what remove_parametrizations restores
    if not kind.endswith("_cell"):
        compare_modules(ref, module, "packed_unsorted", True, device, torch.float64)
    parametrize.remove_parametrizations(module, name)
    assert type(module) is cls


def test_subclass_with_its_own_forward_is_left_alone():
    class Custom(torch.nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x, hx)

    model = torch.nn.Sequential(Custom(3, 4))
    rnnfused.convert(model)
    assert type(model[0]) is Custom
