"""Reliability (issue 6): aliased and non-contiguous arguments, weights changed in
place, parametrized weights, frozen parameters, threads, memory, and NaN / Inf /
saturation numerics, each against torch.nn holding the same weights.

Long sequences (T = 100,000) are in test_long_sequences.py; the fuzzing of every op
in test_fuzz.py."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import weakref

import pytest
import torch
import torch.utils._python_dispatch
from helpers import BackwardSpy, flat_tensors, make_twins, subprocess_env, weighted_sum

import rnnfused

pytestmark = pytest.mark.skipif(
    not rnnfused.backend_info()["extension"], reason="the compiled extension is not loaded"
)

I, H, T, B = 5, 17, 6, 3  # H = 17: one full AVX-512 vector and a masked tail
MODULES = ["RNN", "LSTM", "GRU"]
DTYPES = [torch.float32, torch.float64]
# float64: summation order only; float32: the fused GEMMs reorder sums and the
# vectorised exp/tanh are a few ulp from libm's.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=1e-5, rtol=1e-4)}


def run(module, *args):
    """Outputs and the gradients of every leaf argument and parameter."""
    leaves = [a for a in _tensors(args) if a.requires_grad]
    out, hidden = module(*args)
    results = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    wrt = leaves + [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(weighted_sum(results), wrt, allow_unused=True)
    return results + list(grads)


def _tensors(args):
    for a in args:
        if isinstance(a, tuple):
            yield from a
        elif isinstance(a, torch.Tensor):
            yield a


def assert_same(got, want, dtype):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, k
            continue
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m, k=k: f"result {k}: {m}")


# ---------------------------------------------------------------- 2. layouts and aliasing


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_weights_and_inputs(name, dtype):
    """Weights stored transposed or as a strided slice, input transposed and sliced."""
    ref, fused = make_twins(name, I, H, num_layers=2, bidirectional=True, dtype=dtype)
    for module in (ref, fused):
        with torch.no_grad():
            for pname, p in list(module.named_parameters()):
                if p.dim() == 2:  # the same values, held by a transposed buffer
                    p.data = p.data.t().contiguous().t()
                else:  # every other element of a buffer twice as long
                    buf = torch.zeros(2 * p.numel(), dtype=dtype)
                    buf[::2] = p.data
                    p.data = buf[::2]
    assert not fused.weight_hh_l0.is_contiguous() and not fused.bias_ih_l0.is_contiguous()
    base = torch.randn(B, T, 2 * I, dtype=dtype)
    x = base.transpose(0, 1)[..., ::2].requires_grad_(False)
    assert_same(run(fused, x), run(ref, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aliased_arguments(dtype):
    """h0 and c0 the same tensor; input and h0 views of one buffer; an LSTM whose
    weight_ih and weight_hh are the same Parameter (I == H). Gradients through every alias."""
    ref, fused = make_twins("LSTM", H, H, dtype=dtype)
    for module in (ref, fused):
        module.weight_hh_l0 = module.weight_ih_l0  # one Parameter under two names
    storage = torch.randn(T * B * H + B * H, dtype=dtype, requires_grad=True)

    def args(s):
        x = s[: T * B * H].view(T, B, H)
        h = s[T * B * H :].view(1, B, H)
        return x, (h, h)  # input, h0 and c0 all alias `storage`

    results = []
    for module in (ref, fused):
        leaf = storage.detach().clone().requires_grad_(True)
        out, (h_n, c_n) = module(*args(leaf))
        grads = torch.autograd.grad(weighted_sum([out, h_n, c_n]),
                                    [leaf, module.weight_ih_l0, module.bias_hh_l0])
        results.append([out, h_n, c_n, *grads])
    assert_same(results[1], results[0], dtype)


@pytest.mark.parametrize("name", MODULES)
def test_in_place_weight_changes_are_seen(name):
    """An optimizer-style in-place update between calls changes the next result."""
    ref, fused = make_twins(name, I, H, num_layers=2)
    x = torch.randn(T, B, I)
    first = fused(x)[0].detach().clone()
    for module in (ref, fused):
        with torch.no_grad():
            module.weight_hh_l1.mul_(-0.5)
            module.bias_ih_l0.add_(0.25)
    second = fused(x)[0]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, ref(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("name", MODULES + ["LSTMCell", "GRUCell", "RNNCell"])
def test_weight_norm_parametrization(name):
    """torch.nn.utils.parametrizations.weight_norm on the recurrent weight: same outputs
    and the same gradients on the parametrization's original0/original1."""
    from torch.nn.utils.parametrizations import weight_norm

    ref, fused = make_twins(name, I, H, dtype=torch.float64)
    attr = "weight_hh" if name.endswith("Cell") else "weight_hh_l0"
    for module in (ref, fused):
        weight_norm(module, attr)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64) if name.endswith("Cell") else torch.randn(
        T, B, I, dtype=torch.float64)
    results = []
    for module in (ref, fused):
        out = module(x)
        outs = list(out) if isinstance(out, tuple) else [out]
        outs = [o for item in outs for o in (item if isinstance(item, tuple) else (item,))]
        params = [module.parametrizations[attr].original0, module.parametrizations[attr].original1]
        results.append(outs + list(torch.autograd.grad(weighted_sum(outs), params)))
    assert_same(results[1], results[0], torch.float64)


class _CountingIdentity(torch.nn.Module):
    """A parametrization that counts how often the module evaluates it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, weight):
        self.calls += 1
        return weight * 1.0


@pytest.mark.parametrize("name", MODULES + ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("attrs", [("weight_hh",), ("weight_ih", "weight_hh")], ids=["hh", "ih+hh"])
def test_parametrizations_evaluated_as_often_as_in_torch_nn(name, attrs):
    """A parametrization with side effects (spectral_norm's power iteration in training
    mode) gives torch.nn's numbers only if each forward evaluates it as often as
    torch.nn's (4 times for the first changed flat weight of a full-sequence module:
    its change check and the flat weights' rebuild each call hasattr and getattr)."""
    from torch.nn.utils import parametrize

    ref, fused = make_twins(name, I, H)
    suffix = "" if name.endswith("Cell") else "_l0"
    x = torch.randn(B, I) if name.endswith("Cell") else torch.randn(T, B, I)
    counts = []
    for module in (ref, fused):
        counters = [_CountingIdentity() for _ in attrs]
        for attr, counter in zip(attrs, counters):
            parametrize.register_parametrization(module, attr + suffix, counter)
        for counter in counters:
            counter.calls = 0
        module(x)
        counts.append([counter.calls for counter in counters])
    assert counts[1] == counts[0]
    assert counts[0][0] >= 1  # the count can't pass by both being zero


@pytest.mark.parametrize("name", MODULES + ["LSTMCell", "GRUCell", "RNNCell"])
def test_spectral_norm_parametrization(name):
    """torch.nn.utils.parametrizations.spectral_norm on the recurrent weight, two
    training-mode forwards (each runs the power iteration in place): the same outputs,
    gradients and power-iteration vectors as torch.nn's."""
    from torch.nn.utils.parametrizations import spectral_norm

    ref, fused = make_twins(name, I, H, dtype=torch.float64)
    attr = "weight_hh" if name.endswith("Cell") else "weight_hh_l0"
    x = torch.randn(B, I, dtype=torch.float64) if name.endswith("Cell") else torch.randn(
        T, B, I, dtype=torch.float64)
    results = []
    for module in (ref, fused):
        torch.manual_seed(0)  # the power iteration's starting vectors
        spectral_norm(module, attr)
        outs = []
        for _ in range(2):
            outs += flat_tensors(module(x))
        norm = module.parametrizations[attr][0]
        grad = torch.autograd.grad(weighted_sum(outs), module.parametrizations[attr].original)
        results.append(outs + list(grad) + [norm._u, norm._v])
    assert_same(results[1], results[0], torch.float64)


# ---------------------------------------------------------------- 2. frozen parameters


@pytest.mark.parametrize("name", MODULES)
def test_frozen_parameters_get_no_gradient_work(name):
    """All parameters frozen, input requiring grad: no parameter gets a .grad and the
    backward ops are asked for (and form) no weight gradient."""
    ref, fused = make_twins(name, I, H, num_layers=2)
    for module in (ref, fused):
        module.requires_grad_(False)
    x = torch.randn(T, B, I, requires_grad=True)
    with BackwardSpy() as spy:
        got = run(fused, x)
    assert_same(got, run(ref, x), torch.float32)
    assert all(p.grad is None for p in fused.parameters())
    assert len(spy.calls) == 2  # one per layer
    for mask, grads in spy.calls:
        assert mask[2] is False
        weight_grads = grads[3:] if name == "LSTM" else grads[2:]
        assert all(g.numel() == 0 for g in weight_grads)


@pytest.mark.parametrize("name", MODULES)
def test_input_without_grad_gets_no_input_gradient_work(name):
    """Input and states not requiring grad (the usual first layer): the first layer's
    backward forms no input gradient; the parameters' gradients equal torch.nn's."""
    ref, fused = make_twins(name, I, H)
    x = torch.randn(T, B, I)
    fused_params = dict(fused.named_parameters())
    with BackwardSpy() as spy:
        fused(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    for pname, p in ref.named_parameters():
        torch.testing.assert_close(fused_params[pname].grad, p.grad, **TOL[torch.float32])
    ((mask, grads),) = spy.calls
    assert mask[:2] == [False, False]
    assert grads[0].numel() == 0 and grads[1].numel() == 0


@pytest.mark.parametrize("frozen", ["weight_ih_l0", "bias_ih_l0"])
@pytest.mark.parametrize("name", MODULES)
def test_one_frozen_parameter_costs_no_gradient_work(name, frozen):
    """One parameter frozen (fine-tuning the recurrent part only): it gets no .grad,
    the others equal torch.nn's, and its gradient is not formed by the backward op."""
    ref, fused = make_twins(name, I, H)
    for module in (ref, fused):
        getattr(module, frozen).requires_grad_(False)
    x = torch.randn(T, B, I)
    with BackwardSpy() as spy:
        fused(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    assert getattr(fused, frozen).grad is None
    for pname, p in ref.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(getattr(fused, pname).grad, p.grad, **TOL[torch.float32])
    ((mask, grads),) = spy.calls
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    first = 3 if name == "LSTM" else 2
    formed = grads[first + names.index(frozen)]
    assert formed.numel() == 0, (
        f"{frozen} is frozen but the backward op formed its gradient {tuple(formed.shape)} "
        f"(output_mask {mask})")


# ---------------------------------------------------------------- 4. threads


@pytest.mark.parametrize("name", MODULES)
def test_threads_match_serial(name):
    """Four Python threads running the same module (forward + backward, and no_grad
    forward) at once get what each gets alone. The op kernels hold no mutable global
    state (the only static is the ISA, decided once, read-only after)."""
    ref, fused = make_twins(name, I, H, num_layers=2, bidirectional=True)
    inputs = [torch.randn(T, B, I, generator=torch.Generator().manual_seed(k)) for k in range(4)]

    def work(x):
        x = x.clone().requires_grad_(True)
        out = fused(x)[0]
        (gx,) = torch.autograd.grad(out.sum(), [x])
        with torch.no_grad():
            lean = fused(x)[0]
        return [out.detach(), gx, lean]

    alone = [work(x) for x in inputs]
    together: list = [None] * len(inputs)
    errors: list = []

    def thread_body(k):
        try:
            for _ in range(20):  # repeat so the threads overlap for real
                together[k] = work(inputs[k])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=thread_body, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(len(inputs)):
        for g, w in zip(together[k], alone[k]):
            # Same shapes, same work split: the only freedom is the BLAS's choice of
            # kernel under load, hence a float32 tolerance and not bitwise equality.
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_cpu_threads_at_most_the_usable_cpus():
    """The CPU kernels fork torch's threads, at most one per CPU the process may run
    on (its affinity mask): more would spin at the persistent loops' barrier while a
    thread still working waits for a CPU."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert torch.ops.rnnfused.cpu_threads() == min(torch.get_num_threads(), usable)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_more_threads_than_cpus_match_torch_nn():
    """A process allowed one CPU (its affinity mask) with torch set to 2 threads: the
    kernels run on one (cpu_threads), the two directions of a layer one after the
    other, and every kind's outputs and gradients are torch.nn's, at sizes whose
    persistent loops and GEMMs would fork (T 20, B 32, H 128, 2 layers,
    bidirectional). The mask is read again after it changes (first 1 CPU, then all)."""
    script = """
import os, time
cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpus[0]})
import torch, rnnfused
from helpers import make_twins
torch.set_num_threads(2)
assert torch.ops.rnnfused.cpu_threads() == 1, torch.ops.rnnfused.cpu_threads()
torch.manual_seed(0)
for name in ("LSTM", "GRU", "RNN"):
    ref, fused = make_twins(name, 128, 128, num_layers=2, bidirectional=True)
    x = torch.randn(20, 32, 128, requires_grad=True)
    got_out = fused(x)[0]
    want_out = ref(x)[0]
    torch.testing.assert_close(got_out, want_out, atol=1e-5, rtol=1e-4)
    got = torch.autograd.grad(got_out.sum(), [x, *fused.parameters()])
    want = torch.autograd.grad(want_out.sum(), [x, *ref.parameters()])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
os.sched_setaffinity(0, set(cpus))
time.sleep(0.15)  # the mask is read again at most every 100 ms
print("threads", torch.ops.rnnfused.cpu_threads(), min(2, len(cpus)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got, want = proc.stdout.split("threads")[-1].split()
    assert got == want, proc.stdout


# ---------------------------------------------------------------- 5. memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("name", MODULES)
def test_training_iterations_keep_memory_flat(name):
    """1,000 forward+backward iterations: resident memory after the last is within a
    few MB of after the 100th. A leaked workspace (gates for 400 rows x 4H) would
    add ~100 KB an iteration, ~90 MB over the run."""
    torch.manual_seed(0)
    module = getattr(rnnfused, name)(16, 16)
    x = torch.randn(50, 8, 16, requires_grad=True)

    def step():
        out, _ = module(x)
        out.sum().backward()

    for _ in range(100):
        step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(1000):
        step()
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 1,000 iterations"


class WorkspaceSpy(torch.utils._python_dispatch.TorchDispatchMode):
    """Weak references to the workspaces (the outputs past output, h_n and c_n)
    of every rnnfused LSTM/GRU forward op call made inside it."""

    _STATES = {"lstm_layer": 3, "gru_layer": 2}

    def __init__(self):
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func.namespace == "rnnfused" and func._opname in self._STATES:
            self.refs += [weakref.ref(t) for t in result[self._STATES[func._opname]:]]
        return result


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_workspace_freed_with_the_graph(name):
    """The saved workspace dies with the autograd graph: after backward (graph freed)
    while the output is still alive, and when an unused graph is dropped."""
    module = getattr(rnnfused, name)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    for use in ("backward", "drop"):
        with WorkspaceSpy() as spy:
            out = module(x)[0]  # the final states (same graph node) dropped at once
        refs = spy.refs
        gc.collect()
        # torch keeps a tensor's Python object while its C++ tensor lives, so the weak
        # references follow the saved workspace itself.
        assert refs and all(r() is not None for r in refs), "the check cannot see the workspace"
        assert all(r().size(0) == T * B for r in refs), "the forward saved no workspace"
        if use == "backward":
            out.sum().backward()
            gc.collect()
            assert all(r() is None for r in refs), "workspace alive after backward"
            del out
        else:
            del out
            gc.collect()
            assert all(r() is None for r in refs), "workspace alive after the graph was dropped"


def _vma_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
                start, end = (int(a, 16) for a in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc")
def test_large_layer_buffers_on_huge_pages():
    """The layer's buffers that grow with T (output, saved workspace, the backward's
    d_pre, grad_input) take 2 MB aligned memory advised MADV_HUGEPAGE (VmFlags 'hg')
    from 4 MB on, or 32 MB with the buffer cache off (glibc maps such buffers afresh
    every call); the results, forward and backward, equal torch.nn's, and a huge
    output's storage can be resized like any tensor's."""
    big_t, big_b, big_h = 64, 64, 512  # gates [4096, 2048] float32: 32 MB
    nn_lstm, lstm = make_twins("LSTM", 8, big_h)
    x = torch.randn(big_t, big_b, 8)
    op = torch.ops.rnnfused.lstm_layer.default
    state = torch.zeros(big_b, big_h)
    w = [p.detach() for p in lstm.parameters()]
    gates = op(x, None, state, state, *w, None, False, True)[3]
    assert gates.nbytes == 32 << 20 and gates.data_ptr() % (2 << 20) == 0
    if os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):  # a kernel with THP
        assert "hg" in _vma_flags(gates.data_ptr()), _vma_flags(gates.data_ptr())
    with torch.no_grad():
        out = lstm(x)[0]
        torch.testing.assert_close(out, nn_lstm(x)[0], **TOL[torch.float32])
        out.resize_(2 * big_t, big_b, big_h)  # storage grown through the huge-page allocator
        out[big_t:] = 1.0
        assert out[:big_t].equal(lstm(x)[0]) and out[big_t:].eq(1.0).all()
    x.requires_grad_()  # training: the saved workspace and the backward's buffers
    got = torch.autograd.grad(lstm(x)[0].square().sum(), [x, *lstm.parameters()])
    want = torch.autograd.grad(nn_lstm(x)[0].square().sum(), [x, *nn_lstm.parameters()])
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hidden", [256, 64])
def test_buffer_cache_reuses_freed_buffers_whatever_they_hold(hidden):
    """A freed large buffer goes to the CPU cache and serves the next request of its
    size class: a training step whose workspace and d_pre take blocks that held NaN
    (two freed outputs of a 4x longer sequence: [4N, H] floats = [N, 4H]; 4 MB, on
    huge pages, and 1 MB, the smallest the cache takes) gives the bits of the same
    step on fresh memory; rnnfused.empty_cache() empties it."""
    steps, batch = 16, 64  # gates and d_pre [1024, 4 * hidden] float32
    block = steps * batch * 4 * hidden * 4
    lstm = rnnfused.LSTM(8, hidden)
    x = torch.randn(steps, batch, 8, requires_grad=True)
    rnnfused.empty_cache()
    fresh = run(lstm, x)
    assert torch.ops.rnnfused.cpu_cache_bytes() >= 2 * block, "the step freed no block"
    rnnfused.empty_cache()
    assert torch.ops.rnnfused.cpu_cache_bytes() == 0
    with torch.no_grad():  # two outputs [4 * steps * batch, hidden]: the step's sizes
        poisoned = [lstm(x.detach().repeat(4, 1, 1))[0].fill_(float("nan")) for _ in range(2)]
    del poisoned
    held = torch.ops.rnnfused.cpu_cache_bytes()
    assert held >= 2 * block
    out = lstm(x)[0]  # the saved workspace takes one of them
    assert torch.ops.rnnfused.cpu_cache_bytes() < held, "the forward took no cached block"
    del out
    again = run(lstm, x)
    for k, (g, w) in enumerate(zip(again, fresh, strict=True)):
        assert g.equal(w), f"result {k} changed on reused memory"
    rnnfused.empty_cache()
    assert torch.ops.rnnfused.cpu_cache_bytes() == 0


@pytest.mark.parametrize("limit_mb", [0, 6])
def test_buffer_cache_limit(limit_mb):
    """RNNFUSED_CPU_CACHE_MB bounds what the cache keeps (least recently freed out
    first; 0 keeps nothing), here over training steps whose sizes vary (T 16 to 40,
    4 to 10 MB buffers), and the results still equal torch.nn's."""
    script = f"""
import torch, rnnfused
from helpers import make_twins
torch.manual_seed(0)
nn_lstm, lstm = make_twins("LSTM", 8, 256)
for steps in range(16, 41, 8):
    x = torch.randn(steps, 64, 8, requires_grad=True)
    got = torch.autograd.grad(lstm(x)[0].sum(), [x, *lstm.parameters()])
    want = torch.autograd.grad(nn_lstm(x)[0].sum(), [x, *nn_lstm.parameters()])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    held = torch.ops.rnnfused.cpu_cache_bytes()
    assert held <= {limit_mb} << 20, held
print("held", held)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=subprocess_env(RNNFUSED_CPU_CACHE_MB=str(limit_mb)), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    held = int(proc.stdout.split("held")[-1])
    assert held > 0 if limit_mb else held == 0, held


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_bidirectional_output_from_buffer_cache_without_autograd(name):
    """A bidirectional layer whose directions ran together (2 threads) puts its output,
    the directions side by side, in a block of the CPU cache where autograd records
    nothing (bindings.cpp's side_by_side): freed, the block goes back to the cache,
    and the values equal torch.nn's, in every layer (the first's output is the second's
    input); with autograd recording, torch.cat's (a CatBackward0 node) as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        ref, fused = make_twins(name, 16, 128, num_layers=2, bidirectional=True)
        x = torch.randn(64, 32, 16)  # the layers' outputs [64, 32, 256] float32: 2 MB
        output_bytes = 64 * 32 * 256 * 4
        rnnfused.empty_cache()
        with torch.no_grad():
            got, want = fused(x)[0], ref(x)[0]
        torch.testing.assert_close(got, want)
        held = torch.ops.rnnfused.cpu_cache_bytes()
        del got
        assert torch.ops.rnnfused.cpu_cache_bytes() >= held + output_bytes, \
            "the output's block did not go back to the cache"
        got = fused(x)[0]
        assert got.grad_fn is not None and got.grad_fn.name() == "CatBackward0"
        torch.testing.assert_close(got, ref(x)[0])
    finally:
        torch.set_num_threads(threads)
        rnnfused.empty_cache()


# ---------------------------------------------------------------- 6. numerics

SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": -float("inf")}


def _inject(module, x, h0, c0, where, value):
    """Puts `value` into one element of the input, a state or a weight."""
    with torch.no_grad():
        if where == "input":
            x[1, 0, 2] = value
        elif where == "h0":
            h0[0, 0, 5] = value
        elif where == "c0":
            c0[0, 0, 5] = value
        elif where == "weight_hh":
            module.weight_hh_l0[3, 5] = value
        elif where == "weight_ih":
            module.weight_ih_l0[7, 1] = value
        elif where == "bias":
            module.bias_ih_l0[11] = value


@pytest.mark.parametrize("value", list(SPECIAL))
@pytest.mark.parametrize("where", ["input", "h0", "c0", "weight_hh", "weight_ih", "bias"])
@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_propagate_as_torch_nn(name, where, value, dtype):
    """A NaN or an infinity in one element of any argument: outputs and final states have
    NaN exactly where torch.nn's do, the same infinities, and equal finite values."""
    if where == "c0" and name != "LSTM":
        pytest.skip("only the LSTM has a cell state")
    ref, fused = make_twins(name, I, H, dtype=dtype)
    x = torch.randn(T, 2, I, dtype=dtype)
    h0, c0 = torch.randn(1, 2, H, dtype=dtype), torch.randn(1, 2, H, dtype=dtype)
    for module in (ref, fused):
        _inject(module, x, h0, c0, where, SPECIAL[value])
    args = (x, (h0, c0)) if name == "LSTM" else (x, h0)
    with torch.no_grad():
        want, got = ref(*args), fused(*args)
    flat = lambda r: [r[0], *(r[1] if isinstance(r[1], tuple) else (r[1],))]  # noqa: E731
    for g, w in zip(flat(got), flat(want)):
        torch.testing.assert_close(g, w, **TOL[dtype], equal_nan=True)


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_saturating_inputs_stay_finite(name, dtype):
    """|x| ~ 1e4 saturates every gate: outputs, states and all gradients are finite
    where torch.nn's are (they all are). In float64 they equal torch.nn's; in float32,
    1 - sigmoid(a) near a saturated gate loses most of its digits in any implementation,
    so each result's error against float64 is at most 2x torch.nn's own (+ 1e-6 of scale)."""
    ref, fused = make_twins(name, I, H, dtype=dtype)
    x = (torch.randn(T, B, I, dtype=dtype).sign() * 1e4).requires_grad_(True)
    want, got = run(ref, x), run(fused, x)
    for g, w in zip(got, want):
        assert torch.isfinite(w).all()
        assert torch.isfinite(g).all()
    if dtype == torch.float64:
        assert_same(got, want, dtype)
        return
    truth = run(ref.double(), x.detach().double().requires_grad_(True))
    for k, (g, w, t) in enumerate(zip(got, want, truth)):
        err_fused = (g.double() - t).abs().max().item()
        err_nn = (w.double() - t).abs().max().item()
        assert err_fused <= 2 * err_nn + 1e-6 * t.abs().max().item(), (k, err_fused, err_nn)


def test_gru_sigmoid_of_minus_infinity_is_zero():
    """The smallest form of the NaN propagation case: a GRU step whose reset and update
    gates see -inf (sigmoid = 0) and whose W_hn h is +inf. torch.nn: n = tanh(0 * inf) =
    NaN, so h' = NaN. The vectorised kernels must not turn sigmoid(-inf) into a tiny
    positive number (which would give h' = inf)."""
    w_hh = torch.tensor([[-1.0], [-1.0], [1.0]])  # rows r, z, n
    hx = torch.tensor([[float("inf")]])
    x = torch.zeros(1, 1, 1)
    w_ih = torch.zeros(3, 1)
    out, h_n, _ = torch.ops.rnnfused.gru_layer.default(x, None, hx, w_ih, w_hh, None, None,
                                                       False, False)
    ref = torch.nn.GRU(1, 1, bias=False)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_ih)
        ref.weight_hh_l0.copy_(w_hh)
        want = ref(x, hx.unsqueeze(0))[0]
    assert torch.isnan(want).all()
    torch.testing.assert_close(out, want, equal_nan=True)


def test_bias_hh_alone_gets_its_gradient():
    """The ops take b_ih and b_hh as separate optionals; given b_hh alone, the forward
    uses it, so its gradient must be formed (not dropped as None)."""
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    hx = torch.randn(1, 2, dtype=torch.float64)
    w_ih, w_hh = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    b_hh = torch.randn(2, dtype=torch.float64, requires_grad=True)
    out, _ = rnnfused.ops.rnn_layer(x, None, hx, w_ih, w_hh, None, b_hh, False, False)
    (grad,) = torch.autograd.grad(out.sum(), [b_hh], allow_unused=True)
    out_ref, _ = rnnfused.reference.rnn_layer(x, None, hx, w_ih, w_hh, None, b_hh, False, False)
    (want,) = torch.autograd.grad(out_ref.sum(), [b_hh])
    assert grad is not None, "b_hh's gradient was dropped"
    torch.testing.assert_close(grad, want)


def test_reference_accepts_zero_input_size():
    """input_size 0 (w_ih [G*H, 0]): the op runs it; the reference path, the op's
    fallback and oracle, must too, with the same result."""
    x = torch.randn(3, 2, 0, dtype=torch.float64)
    hx = torch.randn(2, 4, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4, 0, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    got = rnnfused.ops.rnn_layer(x, None, hx, w_ih, w_hh, b, b, False, False)
    want = rnnfused.reference.rnn_layer(x, None, hx, w_ih, w_hh, b, b, False, False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def _available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def test_more_than_2_pow_31_elements():
    """An RNN step whose output has 2^31 + 16 elements (bfloat16, one step, a batch of
    2^27 + 1 rows of 16 units): every row, those past element 2^31 included, is
    tanh(x_b) of its own input (W_ih = 1, W_hh = 0, no bias). 32-bit index math would
    leave the rows past 2^31 unwritten or write them over the first ones. (The float32
    persistent loop's offsets are the same int64 products; its tensors would need 32 GiB.)"""
    if not os.path.exists("/proc/meminfo") or _available_memory_bytes() < 20 * 2**30:
        pytest.skip("needs ~17 GiB free: four bfloat16 tensors of 2^31 + 16 elements")
    hidden = 16
    batch = 2**31 // hidden + 1
    dtype = torch.bfloat16
    x = torch.linspace(-3, 3, batch, dtype=torch.float32).to(dtype).view(1, batch, 1)
    h0 = torch.zeros(batch, hidden, dtype=dtype)
    w_ih = torch.ones(hidden, 1, dtype=dtype)
    w_hh = torch.zeros(hidden, hidden, dtype=dtype)
    with torch.no_grad():
        output, h_n = torch.ops.rnnfused.rnn_layer(x, None, h0, w_ih, w_hh, None, None, False, False)
    del h0
    assert output.numel() > 2**31
    for rows in (slice(0, 4096), slice(batch // 2 - 2048, batch // 2 + 2048), slice(batch - 4096, batch)):
        expected = torch.tanh(x[0, rows].float()).expand(-1, hidden)
        torch.testing.assert_close(output[0, rows].float(), expected, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(h_n[rows].float(), expected, atol=1e-2, rtol=1e-2)
