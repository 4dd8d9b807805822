"""rnnfused.RNN / LSTM / GRU against torch.nn holding the same weights: outputs, final states,
gradients of the input, of h0/c0 and of every parameter; module plumbing (repr, state_dict,
pickling, copies, dtype moves, parametrizations, dropout)."""

import copy
import functools
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import rnnfused
from helpers import (
    cpu_flags_and_vendor,
    FORMS,
    MODULE_KINDS,
    assert_results_equal,
    compare_low_precision,
    compare_modules,
    make_inputs,
    make_kind_twins,
    make_twins,
    module_spec,
    pair_nodes,
    run_float64_twin,
    run_module,
    tolerances,
    INPUT_SIZE,
    HIDDEN_SIZE,
    SEQ_LEN,
    subprocess_env,
)

DTYPES = [torch.float32, torch.float64]


# ---------------------------------------------------------------- numerics
#
# The full product kind x layers x directions x batch_first x bias x dtype x form x hx would be
# 2400 cases per device; it is split in three grids that together cover every pair of options:
#  - float64 (tightest tolerance, so the best bug detector): everything but batch_first;
#  - float32 (its own kernel instantiation): every form and direction at 1 and 3 layers;
#  - batch_first=True: every form, both dtypes, 1 and 2 layers (batch_first only changes the
#    layout of batched input; for unbatched and packed input torch.nn ignores it).

HX = pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
FORM = pytest.mark.parametrize("form", FORMS)
BIDIR = pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
KIND = pytest.mark.parametrize("kind", MODULE_KINDS)


@HX
@FORM
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@BIDIR
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@KIND
def test_matches_torch_float64(kind, num_layers, bidirectional, bias, form, with_hx, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=num_layers,
                                 bidirectional=bidirectional, bias=bias)
    compare_modules(ref, fused, form, with_hx, device, torch.float64)


@HX
@FORM
@BIDIR
@pytest.mark.parametrize("num_layers", [1, 3], ids=["L1", "L3"])
@KIND
def test_matches_torch_float32(kind, num_layers, bidirectional, form, with_hx, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float32, num_layers=num_layers,
                                 bidirectional=bidirectional, bias=(num_layers == 1))
    compare_modules(ref, fused, form, with_hx, device, torch.float32)


@HX
@FORM
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@BIDIR
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@KIND
def test_matches_torch_batch_first(kind, num_layers, bidirectional, dtype, form, with_hx,
                                   device):
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype, num_layers=num_layers,
                                 bidirectional=bidirectional, batch_first=True,
                                 bias=(num_layers == 2))
    compare_modules(ref, fused, form, with_hx, device, dtype)


@KIND
def test_matches_torch_other_sizes(kind, device):
    """input_size > hidden_size and (LSTM) proj_size = hidden_size - 1."""
    name, extra = module_spec(kind)
    if "proj_size" in extra:
        extra = dict(proj_size=6)
    ref, fused = make_twins(name, 11, 7, device=device, dtype=torch.float64, num_layers=2,
                            bidirectional=True, **extra)
    compare_modules(ref, fused, "packed_unsorted", True, device, torch.float64)
    compare_modules(ref, fused, "batched", True, device, torch.float64)


@KIND
def test_repeated_calls_and_eval_no_grad(kind, device):
    """Same results on a second call, in eval() mode and under no_grad (no stale state)."""
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=True)
    leaves, build = make_inputs(ref, "batched", True, device, torch.float64)
    first = run_module(fused, leaves, build)
    second = run_module(fused, leaves, build)
    assert_results_equal(second, first, torch.float64, "second call")
    ref.eval()
    fused.eval()
    with torch.no_grad():
        out_ref, h_ref = ref(*build(*leaves))
        out_fused, h_fused = fused(*build(*leaves))
    assert not out_fused.requires_grad
    torch.testing.assert_close(out_fused, out_ref, **tolerances(torch.float64))
    h_ref = h_ref if isinstance(h_ref, tuple) else (h_ref,)
    h_fused = h_fused if isinstance(h_fused, tuple) else (h_fused,)
    for a, b in zip(h_fused, h_ref, strict=True):
        torch.testing.assert_close(a, b, **tolerances(torch.float64))


@KIND
def test_backward_through_loss_backward(kind, device):
    """loss.backward() fills .grad of every parameter like torch.nn (not only autograd.grad)."""
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=True, batch_first=True)
    x = torch.randn(2, SEQ_LEN, INPUT_SIZE, device=device, dtype=torch.float64)
    for m in (ref, fused):
        out, _ = m(x)
        (out * torch.linspace(-1, 1, out.numel(), device=device, dtype=torch.float64)
         .view_as(out)).sum().backward()
    for (name, p_ref), (_, p_fused) in zip(ref.named_parameters(), fused.named_parameters()):
        assert p_fused.grad is not None, name
        torch.testing.assert_close(p_fused.grad, p_ref.grad, **tolerances(torch.float64),
                                   msg=lambda m, name=name: f"{name}: {m}")


@KIND
def test_non_contiguous_input_and_hx(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2)
    # (B, T, I) transposed to (T, B, I): a non-contiguous view
    x = torch.randn(3, SEQ_LEN, INPUT_SIZE, device=device, dtype=torch.float64).transpose(0, 1)
    out_h = ref.proj_size if getattr(ref, "proj_size", 0) else ref.hidden_size
    h0 = torch.randn(3, 2, out_h, device=device, dtype=torch.float64).transpose(0, 1)
    hx = h0
    if kind.startswith("lstm"):
        hx = (h0, torch.randn(3, 2, HIDDEN_SIZE, device=device, dtype=torch.float64)
              .transpose(0, 1))
    assert not x.is_contiguous() and not h0.is_contiguous()
    # torch.nn on CUDA (cuDNN) refuses a non-contiguous state ("rnn: hx is not
    # contiguous"); rnnfused takes it on every device, compared with torch.nn given
    # the same values, contiguous.
    hx_ref = tuple(t.contiguous() for t in hx) if isinstance(hx, tuple) else hx.contiguous()
    out_ref, _ = ref(x, hx_ref)
    out_fused, _ = fused(x, hx)
    torch.testing.assert_close(out_fused, out_ref, **tolerances(torch.float64))


@KIND
def test_frozen_weights_and_input_without_grad(kind, device):
    """Only some parameters require grad and the input does not: the same parameters get the
    same gradients, frozen ones get none; with everything frozen no graph is built."""
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=True)
    frozen = {"weight_ih_l0", "weight_hh_l1_reverse"}
    for m in (ref, fused):
        for name, p in m.named_parameters():
            p.requires_grad_(name not in frozen)
    x = torch.randn(SEQ_LEN, 2, INPUT_SIZE, device=device, dtype=torch.float64)
    for m in (ref, fused):
        out, _ = m(x)
        (out * torch.linspace(-1, 1, out.numel(), device=device, dtype=torch.float64)
         .view_as(out)).sum().backward()
    for (name, p_ref), (_, p_fused) in zip(ref.named_parameters(), fused.named_parameters()):
        if name in frozen:
            assert p_fused.grad is None, name
        else:
            torch.testing.assert_close(p_fused.grad, p_ref.grad, **tolerances(torch.float64),
                                       msg=lambda m, name=name: f"{name}: {m}")
    fused.requires_grad_(False)
    out, hidden = fused(x)
    assert not out.requires_grad


@KIND
@pytest.mark.parametrize("seq_len", [1, 6], ids=["one_step", "fused_loop"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_initial_state_given_without_grad(kind, seq_len, packed, device):
    """An initial state that needs no gradient (given without requires_grad, or omitted):
    the backward then skips the first step's recurrent product, which only feeds the
    gradient on h0; every other gradient is torch.nn's, in the one-step path and the
    fused loop, dense and packed (where the reverse direction's rows join later with
    their h0, and their h0's gradient comes out of a later step's product)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=True)
    batch = 5
    x = torch.randn(seq_len, batch, INPUT_SIZE, device=device, dtype=torch.float64)
    lengths = torch.tensor([seq_len] + [max(1, seq_len - 2)] * (batch - 1))
    h_size = ref.proj_size if getattr(ref, "proj_size", 0) else HIDDEN_SIZE
    states = [torch.randn(4, batch, h_size, device=device, dtype=torch.float64)]
    if "lstm" in kind:
        states.append(torch.randn(4, batch, HIDDEN_SIZE, device=device, dtype=torch.float64))
    for given in (True, False):
        grads = []
        for m in (ref, fused):
            m.zero_grad()
            inp = x.clone().requires_grad_()
            data = pack_padded_sequence(inp, lengths) if packed else inp
            hx = None
            if given:
                hx = tuple(states) if len(states) == 2 else states[0]
            out, _ = m(data, hx)
            out_t = out.data if packed else out
            (out_t * torch.linspace(-1, 1, out_t.numel(), device=device, dtype=torch.float64)
             .view_as(out_t)).sum().backward()
            grads.append([inp.grad] + [p.grad for p in m.parameters()])
        for g_ref, g_fused in zip(*grads):
            torch.testing.assert_close(g_fused, g_ref, **tolerances(torch.float64))


# ---------------------------------------------------------------- module plumbing

@KIND
def test_isinstance_repr_state_dict(kind):
    ref, fused = make_kind_twins(kind, num_layers=2, bidirectional=True, batch_first=True,
                                 dropout=0.25, bias=False)
    name, _ = module_spec(kind)
    assert isinstance(fused, getattr(torch.nn, name))
    assert isinstance(fused, torch.nn.RNNBase)
    assert fused.extra_repr() == ref.extra_repr()
    # identical up to the class name
    assert repr(fused).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert fused._flat_weights_names == ref._flat_weights_names
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(fused, attr) == getattr(ref, attr), attr


@KIND
def test_state_dict_both_directions(kind, device):
    name, extra = module_spec(kind)
    kwargs = dict(num_layers=2, bidirectional=True, **extra)
    torch_m = getattr(torch.nn, name)(INPUT_SIZE, HIDDEN_SIZE, device=device,
                                      dtype=torch.float64, **kwargs)
    fused = getattr(rnnfused, name)(INPUT_SIZE, HIDDEN_SIZE, device=device, dtype=torch.float64,
                                    **kwargs)
    # independently initialised: the weights differ before loading
    assert not torch.equal(torch_m.weight_hh_l0, fused.weight_hh_l0)

    # rnnfused -> torch.nn
    torch_m.load_state_dict(fused.state_dict())
    compare_modules(torch_m, fused, "batched", True, device, torch.float64)

    # torch.nn -> rnnfused, with fresh weights on the torch side
    torch_m2 = getattr(torch.nn, name)(INPUT_SIZE, HIDDEN_SIZE, device=device,
                                       dtype=torch.float64, **kwargs)
    assert not torch.equal(torch_m2.weight_hh_l0, fused.weight_hh_l0)
    fused.load_state_dict(torch_m2.state_dict())
    compare_modules(torch_m2, fused, "packed_unsorted", True, device, torch.float64)


@KIND
def test_in_place_weight_update_is_seen(kind, device):
    """Writing into a parameter in place (what an optimizer does) changes the next output."""
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64)
    with torch.no_grad():
        for m in (ref, fused):
            m.weight_hh_l0.mul_(1.5)
            m.weight_ih_l0.add_(0.1)
    compare_modules(ref, fused, "batched", True, device, torch.float64)


@KIND
def test_pickle_and_torch_save_round_trip(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 bidirectional=True)
    clones = [pickle.loads(pickle.dumps(fused))]
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    clones.append(torch.load(buf, weights_only=False))
    for clone in clones:
        assert type(clone) is type(fused)
        assert clone.weight_hh_l0 is not fused.weight_hh_l0
        compare_modules(ref, clone, "batched", True, device, torch.float64)


@KIND
def test_deepcopy(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2)
    clone = copy.deepcopy(fused)
    assert type(clone) is type(fused)
    compare_modules(ref, clone, "batched", True, device, torch.float64)
    # the copy owns its parameters: changing it leaves the original alone
    with torch.no_grad():
        clone.weight_hh_l0.zero_()
    compare_modules(ref, fused, "batched", True, device, torch.float64)
    out_clone, _ = clone(torch.ones(SEQ_LEN, 2, INPUT_SIZE, device=device, dtype=torch.float64))
    out_fused, _ = fused(torch.ones(SEQ_LEN, 2, INPUT_SIZE, device=device, dtype=torch.float64))
    assert not torch.allclose(out_clone, out_fused)


@KIND
def test_flatten_parameters(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float32, num_layers=2,
                                 bidirectional=True)
    assert fused.flatten_parameters() is None
    ref.flatten_parameters()
    compare_modules(ref, fused, "batched", True, device, torch.float32)


@pytest.mark.parametrize("how", ["double", "to_dtype"])
@KIND
def test_dtype_conversion(kind, how, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float32, num_layers=2,
                                 bidirectional=True)
    for m in (ref, fused):
        if how == "double":
            m.double()
        else:
            m.to(torch.float64)
    assert fused.weight_hh_l0.dtype == torch.float64
    compare_modules(ref, fused, "batched", True, device, torch.float64)
    compare_modules(ref, fused, "packed_sorted", False, device, torch.float64)
    # and back down
    ref.float()
    fused.to(dtype=torch.float32)
    compare_modules(ref, fused, "batched", True, device, torch.float32)


@KIND
def test_device_move(kind, device):
    """Built on the CPU, moved with .to(device) afterwards."""
    ref, fused = make_kind_twins(kind, device="cpu", dtype=torch.float32, num_layers=2)
    ref.to(device)
    fused.to(device)
    assert fused.weight_ih_l1.device.type == device
    compare_modules(ref, fused, "batched", True, device, torch.float32)


@KIND
def test_weight_norm_parametrization(kind, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2)
    for m in (ref, fused):
        weight_norm(m, "weight_hh_l0")
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict())
    # make the parametrization matter: scale the magnitude away from its initial value
    with torch.no_grad():
        for m in (ref, fused):
            m.parametrizations.weight_hh_l0.original0.mul_(2.0)
    compare_modules(ref, fused, "batched", True, device, torch.float64)
    compare_modules(ref, fused, "packed_unsorted", False, device, torch.float64)


# ---------------------------------------------------------------- dropout

@BIDIR
@KIND
def test_dropout_eval_matches(kind, bidirectional, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                                 dropout=0.5, bidirectional=bidirectional)
    ref.eval()
    fused.eval()
    # cuDNN refuses backward in eval mode; torch.nn's own CUDA kernels do not
    with torch.backends.cudnn.flags(enabled=False):
        compare_modules(ref, fused, "batched", True, device, torch.float64)
        compare_modules(ref, fused, "packed_unsorted", True, device, torch.float64)


@KIND
def test_dropout_train_is_random(kind, device):
    _, fused = make_kind_twins(kind, device=device, dtype=torch.float64, num_layers=2,
                               dropout=0.5)
    x = torch.randn(SEQ_LEN, 3, INPUT_SIZE, device=device, dtype=torch.float64)
    fused.eval()
    out_eval, _ = fused(x)
    fused.train()
    out_a, _ = fused(x)
    out_b, _ = fused(x)
    assert not torch.allclose(out_a, out_eval), "training output equals eval output: no dropout"
    assert not torch.allclose(out_a, out_b), "two training calls gave the same output"


def _assert_identical(actual: dict, expected: dict) -> None:
    """run_module results equal bit for bit (tensors) or exactly (the rest)."""
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
        else:
            assert value == expected[key], key


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_first", "batch_first"])
@BIDIR
@KIND
def test_stack_in_one_call_equals_python_stack(kind, bidirectional, batch_first, form, monkeypatch):
    """An eager fused call runs its layers, dropout and the finals' stacking in one C++
    call (ops.*_stack); functional._run_stack does the same in Python for traced and
    compiled calls. Both give the same outputs and gradients, dropout included (the
    same random draws in the same order), with both directions together (2 threads)."""
    from rnnfused import ops

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, fused = make_kind_twins(kind, num_layers=3, dropout=0.5, bidirectional=bidirectional,
                                   batch_first=batch_first)
        leaves, build = make_inputs(fused, form, True, "cpu", torch.float32)
        torch.manual_seed(7)
        one_call = run_module(fused, leaves, build)
        monkeypatch.setattr(ops, "stack_in_one_call", lambda *args: False)
        torch.manual_seed(7)
        in_python = run_module(fused, leaves, build)
    finally:
        torch.set_num_threads(threads)
    _assert_identical(one_call, in_python)


@pytest.mark.parametrize("form", ["batched", "unbatched", "packed_unsorted", "empty"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_first", "batch_first"])
@BIDIR
@KIND
def test_default_state_one_call_equals_python_stack(kind, bidirectional, batch_first, form,
                                                    monkeypatch):
    """Without hx, a dense eager call leaves the zeros to the one-call op (_C.*_stack's
    initial_state, in C++); the Python stack of traced and compiled calls makes them with
    torch.zeros. Outputs, final states and gradients agree exactly, and match torch.nn."""
    from rnnfused import ops

    ref, fused = make_kind_twins(kind, num_layers=2, bidirectional=bidirectional,
                                 batch_first=batch_first)
    leaves, build = make_inputs(fused, form, False, "cpu", torch.float32)
    one_call = run_module(fused, leaves, build)
    assert_results_equal(one_call, run_module(ref, leaves, build), torch.float32, kind)
    monkeypatch.setattr(ops, "stack_in_one_call", lambda *args: False)
    in_python = run_module(fused, leaves, build)
    _assert_identical(one_call, in_python)


@pytest.mark.parametrize("one_call", [True, False], ids=["one_call", "python_stack"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@KIND
def test_functional_stack_without_state_is_zeros(kind, packed, one_call, monkeypatch):
    """rnnfused.functional.{lstm, gru, rnn} take hx=None for torch.nn's zeros, [L*D, B, *]
    with B the dense input's batch (batch_first honoured) or batch_sizes[0]: the results
    equal those of explicit zeros, on the one-call path (zeros made in C++) and the
    Python stack alike."""
    from rnnfused import functional as RF
    from rnnfused import ops

    if not one_call:
        monkeypatch.setattr(ops, "stack_in_one_call", lambda *args: False)
    _, fused = make_kind_twins(kind, num_layers=2, bidirectional=True, batch_first=True)
    slots, batch = 4, 3
    x = torch.randn(batch, 5, INPUT_SIZE)
    batch_sizes = None
    if packed:
        packed_x = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2], batch_first=True)
        x, batch_sizes = packed_x.data, packed_x.batch_sizes
    weights = fused._flat_weights
    common = (weights, True, 2, 0.0, False, True, True, batch_sizes)
    if kind.startswith("lstm"):
        zeros = (torch.zeros(slots, batch, fused.proj_size or HIDDEN_SIZE),
                 torch.zeros(slots, batch, HIDDEN_SIZE))
        got, want = RF.lstm(x, None, *common), RF.lstm(x, zeros, *common)
    else:
        zeros = torch.zeros(slots, batch, HIDDEN_SIZE)
        run = RF.gru if kind == "gru" else functools.partial(RF.rnn, nonlinearity=fused.nonlinearity)
        got, want = run(x, None, *common), run(x, zeros, *common)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@KIND
def test_overridden_check_forward_args_gets_the_zeros(kind):
    """A subclass's own check_forward_args is called with the default zero state, as
    torch.nn calls it (the op makes the zeros only where the check is torch.nn's)."""
    name, extra = module_spec(kind)
    seen = []

    class Checked(getattr(rnnfused, name)):
        def check_forward_args(self, input, hidden, batch_sizes):
            seen.append(hidden)
            super().check_forward_args(input, hidden, batch_sizes)

    module = Checked(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, **extra)
    with torch.no_grad():
        module(torch.randn(5, 3, INPUT_SIZE))
    assert len(seen) == 1
    states = seen[0] if isinstance(seen[0], tuple) else (seen[0],)
    for state in states:
        assert state.shape[:2] == (2, 3) and not state.any()


@KIND
def test_dropout_single_layer_warns_and_is_inert(kind, device):
    """dropout applies between layers only: num_layers=1 warns like torch.nn, and training
    output equals eval output."""
    name, extra = module_spec(kind)
    messages = []
    for ns in (torch.nn, rnnfused):
        with pytest.warns(UserWarning) as record:
            m = getattr(ns, name)(INPUT_SIZE, HIDDEN_SIZE, num_layers=1, dropout=0.5,
                                  device=device, dtype=torch.float64, **extra)
        messages.append([str(w.message) for w in record])
    assert messages[1] == messages[0]
    x = torch.randn(SEQ_LEN, 3, INPUT_SIZE, device=device, dtype=torch.float64)
    m.train()
    out_train, _ = m(x)
    m.eval()
    out_eval, _ = m(x)
    torch.testing.assert_close(out_train, out_eval, **tolerances(torch.float64))


@pytest.mark.parametrize("form", ["batched", "packed_unsorted", "unbatched"])
@BIDIR
@KIND
def test_dropout_train_same_rng_as_torch_cpu(kind, bidirectional, form):
    """The goal: rnnfused consumes the CPU RNG exactly like torch.nn (torch.dropout on each
    non-last layer's output), so the same seed gives the same output and gradients."""
    ref, fused = make_kind_twins(kind, device="cpu", dtype=torch.float64, num_layers=3,
                                 dropout=0.5, bidirectional=bidirectional)
    ref.train()
    fused.train()
    leaves, build = make_inputs(ref, form, True, "cpu", torch.float64)
    torch.manual_seed(123)
    expected = run_module(ref, leaves, build)
    torch.manual_seed(123)
    actual = run_module(fused, leaves, build)
    assert_results_equal(actual, expected, torch.float64, "dropout train")


@pytest.mark.parametrize("hidden", [100, 201, 333])
@pytest.mark.parametrize("batch", [1, 3, 7, 9, 10, 13, 16, 17, 21, 25, 29])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_fused_loop_panels_and_row_blocks(name, batch, hidden):
    """The persistent CPU loop's edges: hidden sizes with odd remainders in the split
    partial sums of a few rows, partial tiles, and batches below, at and past its row
    blocks (AVX2 6 or 8 rows and 5 in the backward, AVX-512 6 (LSTM), 8 (GRU, an RNN's
    lone tile and the backward) or 12 (an RNN's tile pairs)), the AVX-512 forward's blocks
    split evenly where 1-3 rows would be left after two or more (13 rows at 6, 17 at 8,
    25 at 12: fused_loop.h's for_row_blocks), on Intel's CPUs whatever is left (16 rows
    at 6: 6, 5, 5; 21 at 8; 29 at 12) and, for LSTM and GRU, 2 or more rows after one
    block (9 at 6: 5, 4; 10 at 6 and 8: 5, 5), and odd tile counts (100: 7 tiles of 16, 13
    of 8; 201: 13 of 16), whose last tile the two threads share by rows from a whole
    register block each. Outputs, states and all gradients equal torch.nn's. (Panels
    past a whole tile: the next test.)"""
    ref, fused = make_twins(name, 17, hidden)
    compare_modules(ref, fused, "batched", True, "cpu", torch.float32, batch=batch)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_fused_backward_shared_blocks_follow_packed_rows(name):
    """The backward loop shares the 2L-unit blocks left over after each thread's whole
    ones by rows, where each thread gets a whole register block of the step's rows
    (fused_loop.h's fused_backward; hidden 201: 7 blocks of 32 on AVX-512, 13 of 16 on
    AVX2); the next step's functors run on the rows and units the thread's product
    formed. A packed batch whose rows a step run 40, 40, 40, 33, 25, 17, 16, 9, 3, 3
    (226 in all: the fused loops take a layer from 4 steps' worth of rows) switches
    between shared and whole blocks (16 rows on AVX-512, 10 on AVX2) and hands the rows
    past a step's product (sequences ending there) to the last thread. Outputs,
    states and all gradients equal torch.nn's."""
    lengths = [10] * 3 + [8] * 6 + [7] * 7 + [6] + [5] * 8 + [4] * 8 + [3] * 7
    ref, fused = make_twins(name, 17, 201)
    compare_modules(ref, fused, "packed_sorted", True, "cpu", torch.float32, seq_len=10,
                    lengths=lengths)


# 75 sequences, a step's rows 75, 75, 70, 52, 47, 30, 20, 11, 3.
SPLIT_BATCH_LENGTHS = ([9] * 3 + [8] * 8 + [7] * 9 + [6] * 10 + [5] * 17 + [4] * 5 + [3] * 18
                       + [2] * 5)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("form", ["batched", "packed_sorted"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_fused_loops_split_the_batch_among_threads(name, form, threads):
    """Where each thread's copy of the weights a loop reads every step fits in half a
    core's L2 (hidden 40: under 100 KB), both loops split each step's rows among the
    threads, every tile (the backward's 2L-unit blocks) a share of the batch, from a
    register block of rows a thread (fused_loop.h's batch_split: 6-8 rows a block on
    AVX-512, so 16 rows at most on 2 threads, 24 on 3): 75 rows do, on 2 and on 3
    threads, odd shares included (37 and 38, 25 each). Packed, the steps' rows (75, 75,
    70, 52, 47, 30, 20, 11, 3) go from the split batch to split tiles (and their
    leftovers: 3 tiles of 16) as the sequences end, the backward's the other way; rows
    past a step's product go to the last thread; the forward's steps over the same split
    rows as the next run without a barrier between them. Outputs, states and all
    gradients equal torch.nn's."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, fused = make_twins(name, 17, 40)
        compare_modules(ref, fused, form, True, "cpu", torch.float32, batch=75, seq_len=9,
                        lengths=SPLIT_BATCH_LENGTHS if form == "packed_sorted" else None)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_fused_loops_split_the_batch_in_16_bit(name, dtype):
    """The same packed batch in bfloat16 and float16, whose loops (the AVX-512 forward
    and backward, the dot product's on AVX512-BF16; not AMX's forward) split it alike:
    within twice torch.nn's error against float64 (test_low_precision.py's rule)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, fused = make_twins(name, 17, 40, dtype=dtype)
        compare_low_precision(ref, fused, "packed_sorted", True, "cpu", dtype, batch=75,
                              seq_len=9, lengths=SPLIT_BATCH_LENGTHS)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name,hidden", [("LSTM", 2400), ("GRU", 3100), ("RNN", 4700)])
def test_fused_loop_panels_past_a_whole_tile(name, hidden):
    """The loops take a tile's whole reduction in one panel up to 256 KB of packed
    weights (an eighth past it rather than a sliver of a second panel); these hidden
    sizes are the first past that on AVX2 (LSTM 128 bytes a row of K, GRU 96, RNN's
    tile pairs 64; the backward's 64 a row of J = G * H; AVX-512's rows twice as
    long): two or three panels in either loop, the partial sums stored and reloaded
    between them. Outputs, states and all gradients equal torch.nn's, or are no
    further from float64's than twice torch.nn's error (sums of up to 9300 terms; 4
    steps of 7 rows: a row block and a remainder)."""
    ref, fused = make_twins(name, 8, hidden)
    compare_modules(ref, fused, "batched", True, "cpu", torch.float32, against_float64=True,
                    batch=7, seq_len=4)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_float32_long_sums_as_accurate_as_torch_nn(name):
    """Long float32 reductions are summed in blocks, as BLAS sums them (the GEMMs a
    depth of 256 at a time, the persistent loops 512: fused_loop.h's kSumDepth), a
    GRU's state gradient no longer onto its large direct part. At H 512, T 50, B 16
    every output's and gradient's RMS error against float64 is within 2.5 times
    torch.nn's (on a Zen 2 at most 2.1, an LSTM's final state, the gradients 1.8);
    summed straight through, an LSTM's input and recurrent weight gradients were 3
    times, a GRU's state gradient 7.7, its recurrent weight gradient 6.2, an RNN's 2.8."""
    if torch.ops.rnnfused.cpu_isa() == "scalar":
        # ATen's products (MKL), as torch.nn's GRU and RNN have; torch.nn's LSTM runs
        # oneDNN, whose input-side gradients are 2.5-3 times closer to float64 than MKL's.
        pytest.skip("the scalar CPU path's products are ATen's, not the kernels this is about")
    torch.manual_seed(0)
    ref, fused = make_twins(name, 8, 512)
    leaves, build = make_inputs(ref, "batched", True, "cpu", torch.float32, batch=16, seq_len=50)
    expected = run_module(ref, leaves, build)
    actual = run_module(fused, leaves, build)
    exact = run_float64_twin(ref, leaves, build)

    def rms_error(result, key):
        return (result[key].double() - exact[key]).pow(2).mean().sqrt().item()

    for key, value in expected.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            ours, theirs = rms_error(actual, key), rms_error(expected, key)
            assert ours <= 2.5 * theirs + 1e-9, f"{name} {key}: RMS error {ours:.3g}, torch.nn's {theirs:.3g}"


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_functional_call_and_reassigned_weights_are_seen(name):
    """The flat-weights check (rnnfused's faster _weights_have_changed): weights
    swapped in by torch.func.functional_call, and a parameter reassigned on the
    module, are the ones the next call uses, as in torch.nn."""
    ref, fused = make_twins(name, 5, 7)
    x = torch.randn(3, 2, 5)
    swapped = {n: torch.randn_like(p) for n, p in ref.named_parameters()}
    expected = torch.func.functional_call(ref, swapped, (x,))[0]
    torch.testing.assert_close(torch.func.functional_call(fused, swapped, (x,))[0], expected)
    torch.testing.assert_close(fused(x)[0], ref(x)[0])  # back to its own weights
    for module in (ref, fused):
        module.weight_hh_l0 = torch.nn.Parameter(swapped["weight_hh_l0"].clone())
    torch.testing.assert_close(fused(x)[0], ref(x)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_bidirectional_directions_run_together(name, form, dtype):
    """Eager CPU float32, bfloat16 and float16 bidirectional layers run both directions
    at once, a thread each (csrc/directions.cpp, the pair ops): outputs, states and
    every gradient equal torch.nn's (16-bit: the low-precision rule), and the pair op
    ran once per layer (one autograd node each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the pair runs on 2 threads
    try:
        ref, fused = make_twins(name, 5, 24, num_layers=2, bidirectional=True, dtype=dtype)
        if dtype == torch.float32:
            compare_modules(ref, fused, form, True, "cpu", dtype)
        else:  # within twice torch.nn's error against float64 (test_low_precision.py's rule)
            compare_low_precision(ref, fused, form, True, "cpu", dtype)
        x = torch.randn(7, 3, 5, dtype=dtype)
        if form == "packed_unsorted":
            x = nn.utils.rnn.pack_padded_sequence(x, [5, 7, 2], enforce_sorted=False)
        output = fused(x)[0]
        assert pair_nodes(output.data if form == "packed_unsorted" else output) == 2  # two layers
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs os.sched_setaffinity and 2 CPUs")
def test_directions_together_where_threads_are_capped_at_two_cpus():
    """torch set to 4 threads in a process allowed 2 CPUs: the kernels fork 2
    (cpu_threads), so a bidirectional layer's directions run together, a thread
    each, as on 2 threads (one pair node per layer), with torch.nn's results."""
    script = """
import os
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:2]))
import torch, rnnfused
from helpers import compare_modules, make_twins, pair_nodes
torch.set_num_threads(4)
assert torch.ops.rnnfused.cpu_threads() == 2, torch.ops.rnnfused.cpu_threads()
torch.manual_seed(0)
for name in ("LSTM", "GRU"):
    ref, fused = make_twins(name, 16, 32, num_layers=2, bidirectional=True)
    for with_hx in (False, True):
        compare_modules(ref, fused, "batched", with_hx, "cpu", torch.float32, batch=4, seq_len=9)
    assert pair_nodes(fused(torch.randn(9, 4, 16))[0]) == 2  # two layers
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_directions_together_one_node_and_double_backward(name):
    """Both directions of a layer are one autograd node whose backward runs them
    together: with some parameters frozen (no gradient for them, the others
    exact), in inference mode (the pair's CPU kernel), and with create_graph
    (double backward: the directions' differentiable backward in turn), results
    equal those of the directions run one after the other (one thread)."""
    threads = torch.get_num_threads()

    def run(n_threads, mode):
        torch.set_num_threads(n_threads)
        torch.manual_seed(0)
        module = getattr(rnnfused, name)(5, 12, num_layers=2, bidirectional=True)
        module.weight_ih_l0_reverse.requires_grad_(False)
        module.bias_hh_l1.requires_grad_(False)
        x = torch.randn(7, 3, 5, requires_grad=True)
        if mode == "inference":
            with torch.inference_mode():
                return [module(x)[0].clone()], set()
        out, _ = module(x)
        # out = cat(forward, reverse) of the last layer: both from one node
        nodes = {f[0].name() for f in out.grad_fn.next_functions}
        leaves = [x] + [p for p in module.parameters() if p.requires_grad]
        grads = torch.autograd.grad((out * out).sum(), leaves, create_graph=mode == "double")
        if mode == "double":
            grads = torch.autograd.grad(sum((g * g).sum() for g in grads), leaves)
        return [out] + list(grads), nodes

    try:
        for mode in ("backward", "inference", "double"):
            together, nodes = run(2, mode)
            apart, _ = run(1, mode)
            for got, want in zip(together, apart):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"{mode}: {m}")
            if mode == "backward":
                assert len(nodes) == 1 and f"{name.capitalize()}LayerPair" in nodes.pop(), nodes
    finally:
        torch.set_num_threads(threads)


def l1_data_cache_bytes():
    """The L1 data cache's bytes as the C library tells them (getconf, sysconf's
    _SC_LEVEL1_DCACHE_SIZE), or None where it cannot."""
    try:
        found = subprocess.run(["getconf", "LEVEL1_DCACHE_SIZE"], capture_output=True, text=True)
        return int(found.stdout.strip()) if found.returncode == 0 else None
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_padded_gradient_rows(isa):
    """A float32 backward's gradients on the pre-activations (d_pre, a GRU's d_x and d_h)
    take rows a 64-byte line longer (16 floats) where the library's AVX-512 GEMM reads
    them slowly: on AVX-512 CPUs other than Intel's with a 32 KB L1 (Zen 4), G * H a
    multiple of 512 below 4096 (cpu::gradient_row_floats; torch.ops.rnnfused
    .cpu_gradient_row_stride says which), or wherever RNNFUSED_CPU_PAD_GRADIENTS is 1, never
    where it is 0. The step functors, both backward loops and the GEMMs then read and
    write rows that far apart: in a process of their own with every float32 gradient's
    rows padded (the switch at 1), on the AVX-512 kernels and on AVX2's, this file's
    float32 CPU tests give torch.nn's outputs, states and gradients."""
    stride = torch.ops.rnnfused.cpu_gradient_row_stride
    found, l1 = cpu_flags_and_vendor(), l1_data_cache_bytes()
    switch = os.environ.get("RNNFUSED_CPU_PAD_GRADIENTS")
    if switch in ("0", "1"):
        expected = {c: c + 16 * int(switch) for c in (6, 512, 2048, 3072, 4096)}
    elif found is not None and l1 is not None:
        flags, vendor = found
        rule = (torch.ops.rnnfused.cpu_isa() == "avx512" and vendor != "GenuineIntel"
                and 0 < l1 <= 32 * 1024)
        expected = {6: 6, 512: 512 + 16 * rule, 2048: 2048 + 16 * rule,
                    3072: 3072 + 16 * rule, 4096: 4096}
    else:
        expected = {}
    for columns, want in expected.items():
        assert stride(columns) == want, (columns, stride(columns), want)

    env = subprocess_env(RNNFUSED_CPU_PAD_GRADIENTS="1", RNNFUSED_CPU_ISA=isa)
    probe = subprocess.run(
        [sys.executable, "-c",
         "import rnnfused, torch; o = torch.ops.rnnfused; "
         "print(o.cpu_gradient_row_stride(6), o.cpu_isa())"],
        env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-3000:]
    padded, active = probe.stdout.split()
    assert padded == "22"
    if active != isa:
        pytest.skip(f"no {isa} kernels here ({active})")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
         "not cuda and not padded and (float32 or f32 or fused_loop or fused_backward"
         " or fused_loops or other_sizes or non_contiguous or frozen or initial_state)"],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-3000:]
