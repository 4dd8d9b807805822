"""Double backward: torch.autograd.gradgradcheck passes for every module and cell (cuDNN's
RNNs refuse it). The fused backward op is not itself differentiable; under create_graph=True
the backward recomputes the layer with rnnfused.reference and differentiates that, while a
plain backward keeps the fused op (checked here too).

float64, tiny sizes: gradgradcheck perturbs every input element twice per output element.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfused
from helpers import CELL_KINDS, MODULE_KINDS, flat_tensors, module_spec

SIZE = dict(input_size=2, hidden_size=3)


def _module(kind, device, **kwargs):
    name, extra = module_spec(kind)
    if kind == "lstm_proj":
        extra = dict(proj_size=2)
    return getattr(rnnfused, name)(**SIZE, **extra, **kwargs, device=device, dtype=torch.float64)




def _functional(module, build):
    """f(x, *params) -> every output tensor of module(*build(x))."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *params):
        return tuple(flat_tensors(torch.func.functional_call(module, dict(zip(names, params)), build(x))))

    return f


def _leaves(module, x):
    return (x.requires_grad_(True),
            *[p.detach().clone().requires_grad_(True) for p in module.parameters()])


@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_gradgradcheck_module(kind, device):
    module = _module(kind, device, bidirectional=True)
    x = torch.randn(3, 2, 2, device=device, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(_functional(module, lambda x: (x,)), _leaves(module, x))


def test_gradgradcheck_two_layers_packed(device):
    module = _module("gru", device, num_layers=2)
    x = torch.randn(3, 2, 2, device=device, dtype=torch.float64)
    lengths = torch.tensor([3, 1])
    build = lambda x: (pack_padded_sequence(x, lengths),)  # noqa: E731
    assert torch.autograd.gradgradcheck(_functional(module, build), _leaves(module, x))


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_gradgradcheck_cell(kind, device):
    module = _module(kind, device)
    x = torch.randn(2, 2, device=device, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(_functional(module, lambda x: (x,)), _leaves(module, x))


def test_gradient_penalty_matches_torch(device):
    """A typical double-backward use, a gradient penalty: the same value and parameter
    gradients as torch.nn (whose CPU path is differentiable twice)."""
    ref = torch.nn.LSTM(2, 3, num_layers=2, device=device, dtype=torch.float64)
    fused = rnnfused.LSTM(2, 3, num_layers=2, device=device, dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 2, device=device, dtype=torch.float64)
    results = []
    for module in (ref, fused):
        xi = x.clone().requires_grad_(True)
        # cuDNN's RNNs refuse double backward: torch.nn's own CUDA kernels stand in
        with torch.backends.cudnn.flags(enabled=False):
            output = module(xi)[0]
        (gx,) = torch.autograd.grad(output.square().sum(), xi, create_graph=True)
        penalty = gx.square().sum()
        results.append([penalty, *torch.autograd.grad(penalty, list(module.parameters()))])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)  # float64, summation order


def test_plain_backward_keeps_the_fused_op(monkeypatch):
    """Without create_graph the backward never recomputes the layer."""
    module = rnnfused.GRU(2, 3)
    if rnnfused.backend_info("cpu", torch.float32) != "fused":
        pytest.skip("no fused CPU kernels")

    def fail(*args):
        raise AssertionError("the reference recomputation ran")

    monkeypatch.setattr(rnnfused.reference, "gru_layer", fail)
    module(torch.randn(3, 2, 2))[0].sum().backward()
    assert module.weight_hh_l0.grad is not None
