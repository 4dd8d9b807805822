"""float32 layers under torch's float32 matmul precision.

torch.set_float32_matmul_precision("medium") (or torch.backends.mkldnn.matmul.fp32_precision
= "bf16") lets torch's float32 matmuls round their operands to bfloat16 on oneDNN, and so
torch.nn's GRU and RNN do. Where the CPU has AMX tiles, rnnfused's float32 forward loop then
forms its recurrent products on them (fused_forward_cpu.h's float32_products_on_amx): W_hh and
each step's state rounded to bfloat16, the sums, gate math and states in float32, and the
backward's large steps take a GEMM a step (launch_cpu.h's float32_gemm_steps). The input
projection's large chunks and the weight gradients go through at::mm, which follows the same
setting. The default ("highest") keeps everything in float32.
"""

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused

from helpers import weighted_sum


def cpu_amx() -> bool:
    return rnnfused.backend_info()["extension"] and torch.ops.rnnfused.cpu_amx()


@contextlib.contextmanager
def float32_matmul_precision(value: str):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def bf16_rounded(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bfloat16 (to nearest even) in its own dtype; the gradient passes through."""
    return t + (t.to(torch.bfloat16).to(t.dtype) - t).detach()


def reference_direction(kind, w_ih, w_hh, b_ih, b_hh, x, h, c, lengths, reverse, forced):
    """One direction of a layer in x's dtype with each step's recurrent product formed on the
    state rounded to bfloat16. x [T, B, I], lengths [B] (rows past their length keep their
    state, and output zeros). forced [T, B, H]: rnnfused's outputs, from which each step takes
    its state (teacher forcing): the state's rounding then matches rnnfused's exactly, where a
    last-bit difference could round a value to the neighbouring bfloat16 and the two sequences
    drift apart at bfloat16's precision from there on. The forced values carry the gradient
    of the reference's step. Returns each step's values from the forced state [T, B, H], the
    forced outputs [T, B, H] (zeros past a row's length), h_n (forced), h_n as computed, c_n."""
    T = x.shape[0]
    computed, outputs = [None] * T, [None] * T
    last_computed = h.detach()
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = (t < lengths).unsqueeze(1)
        x_proj = x[t] @ w_ih.T + b_ih
        h_proj = bf16_rounded(h) @ w_hh.T + b_hh
        if kind == "LSTM":
            i, f, g, o = (x_proj + h_proj).chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            c = torch.where(active, c_new, c)
        elif kind == "GRU":
            x_r, x_z, x_n = x_proj.chunk(3, 1)
            h_r, h_z, h_n = h_proj.chunk(3, 1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h_new = (1 - z) * n + z * h
        else:
            h_new = torch.tanh(x_proj + h_proj)
        h_forced = forced[t] + (h_new - h_new.detach())
        zeros = torch.zeros_like(h_new)
        computed[t] = torch.where(active, h_new, zeros).detach()
        outputs[t] = torch.where(active, h_forced, zeros)
        last_computed = torch.where(active, h_new.detach(), last_computed)
        h = torch.where(active, h_forced, h)
    return torch.stack(computed), torch.stack(outputs), h, last_computed, c


def reference_layer(kind, params, x, h0, c0, lengths, forced):
    """reference_direction over a single-layer module's directions (as many as h0 has) from its
    float64 parameters `params` (name -> tensor), forced by rnnfused's output [T, B, D*H].
    Returns (computed output, final states as computed), (forced output, final states) with
    the final states h_n [, c_n]."""
    directions, H = h0.shape[0], h0.shape[2]
    parts = []
    for d in range(directions):
        suffix = "_l0" + ("_reverse" if d == 1 else "")
        parts.append(reference_direction(
            kind, params["weight_ih" + suffix], params["weight_hh" + suffix],
            params["bias_ih" + suffix], params["bias_hh" + suffix], x, h0[d],
            None if c0 is None else c0[d], lengths, reverse=d == 1,
            forced=forced[..., d * H:(d + 1) * H]))
    computed, outputs, h_n, h_n_computed, c_n = zip(*parts)
    c_n = [torch.stack(c_n)] if c0 is not None else []
    return ([torch.cat(computed, 2), torch.stack(h_n_computed), *c_n],
            [torch.cat(outputs, 2), torch.stack(h_n), *c_n])


AMX_SIZES = [(260, 5), (272, 19), (300, 40), (256, 33), (96, 33), (512, 1)]


@pytest.mark.skipif(not cpu_amx(), reason="the float32 loop on AMX tiles needs a CPU with AMX-BF16")
@pytest.mark.parametrize("form", ["dense", "packed", "bidirectional"])
@pytest.mark.parametrize("hidden,batch", AMX_SIZES)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_float32_medium_precision_forms_products_on_amx(kind, hidden, batch, form):
    """Under "medium", a float32 layer's forward loop forms its recurrent products on AMX
    tiles where they are the faster (fused_forward_cpu.h's float32_products_on_amx: a state of
    192 and more from 4 rows, of 96 from 32 rows, W_hh of 2^20 values at any batch): partial
    16-unit blocks (H 260, 272, 300), one, two and three 16-row tiles (B 5, 19, 40, 33; at B 40
    and 33 the two threads split the tiles, 16 rows and 24 or 17, rather than W_hh's blocks:
    amx_loop.h's by_batch), a state of 3 chunks (H 96), two panels of 32-unit
    chunks (H 300), one row (an LSTM of H 512; a GRU's and an RNN's W_hh that size stay on
    the float32 loop), a batch that shrinks (packed) and, backwards, grows (rows joining with
    their h0). Weights and input are whole bfloat16 values, so that the only rounding in the
    forward is the state's before each product: every step matches a float64 reference step
    that rounds that state so (reference_direction), to float32's precision, while the
    float32 loop's steps (under "highest") miss theirs by far more. The backward (run under
    "highest": float32 GEMMs) gives that reference's gradients, the state's rounding passed
    through, but for W_hh's, which the backward forms on the unrounded states (a
    bfloat16-sized difference)."""
    if batch == 1 and kind != "LSTM":
        pytest.skip("a GRU's or RNN's W_hh of H 512 is below 2^20 values: the float32 loop")
    torch.manual_seed(hidden * 131 + batch)
    directions = 2 if form == "bidirectional" else 1
    T, I = 7, 24
    module = getattr(rnnfused, kind)(I, hidden, bidirectional=directions == 2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    x = torch.randn(T, batch, I).to(torch.bfloat16).float()
    h0 = torch.randn(directions, batch, hidden)
    c0 = torch.randn(directions, batch, hidden) if kind == "LSTM" else None
    if form == "packed":
        lengths = torch.tensor([T] + sorted(torch.randint(3, T + 1, (batch - 1,)).tolist(),
                                            reverse=True))
    else:
        lengths = torch.full((batch,), T)

    def run(precision):
        leaves = [t.clone().requires_grad_(True) for t in (x, h0, c0) if t is not None]
        hx = (leaves[1], leaves[2]) if kind == "LSTM" else leaves[1]
        inp = pack_padded_sequence(leaves[0], lengths) if form == "packed" else leaves[0]
        with float32_matmul_precision(precision):
            out, state = module(inp, hx)
        if form == "packed":
            out = pad_packed_sequence(out, total_length=T)[0]
        results = [out] + (list(state) if kind == "LSTM" else [state])
        grads = torch.autograd.grad(weighted_sum(results), leaves + list(module.parameters()))
        return [r.detach().double() for r in results], grads

    def reference(forced):
        params = {name: p.detach().double().requires_grad_(True)
                  for name, p in module.named_parameters()}
        leaves = [t.double().requires_grad_(True) for t in (x, h0, c0) if t is not None]
        computed, results = reference_layer(kind, params, leaves[0], leaves[1],
                                            leaves[2] if kind == "LSTM" else None, lengths,
                                            forced)
        grads = torch.autograd.grad(weighted_sum(results), leaves + list(params.values()))
        names = ["input", "h0", "c0"][:len(leaves)] + list(params)
        return computed, dict(zip(names, grads))

    atol = 1e-5
    got, got_grads = run("medium")
    computed, ref_grads = reference(got[0])
    for name, a, e in zip(["output", "h_n", "c_n"], got, computed):
        torch.testing.assert_close(a, e, atol=atol, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The float32 loop does not round the state: its steps are not the reference's.
    float32_out = run("highest")[0][0]
    assert (float32_out - reference(float32_out)[0][0]).abs().max() > 10 * atol

    for a, (name, e) in zip(got_grads, ref_grads.items()):
        scale = e.abs().max().item()
        tol = 2e-2 * scale if name.startswith("weight_hh") else 5e-5 * max(scale, 1.0)
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=0,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("kind,hidden,batch,directions",
                         [("LSTM", 64, 1, 1), ("GRU", 64, 19, 1), ("RNN", 128, 16, 1),
                          ("RNN", 64, 19, 2), ("GRU", 64, 2, 2)])
def test_float32_medium_precision_small_layers_stay_float32(kind, hidden, batch, directions):
    """Where the tiles are not the faster (a narrow state, few rows, an RNN's 128 units from 16
    rows), the float32 loop runs under "medium" too: with whole bfloat16 weights and input (the
    input projection exact either way) its outputs are the "highest" ones to float32's
    precision, not a bfloat16-rounded state's."""
    torch.manual_seed(hidden + batch)
    module = getattr(rnnfused, kind)(24, hidden, bidirectional=directions == 2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    x = torch.randn(9, batch, 24).to(torch.bfloat16).float()
    with torch.no_grad():
        expected = module(x)[0]
        with float32_matmul_precision("medium"):
            got = module(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("knob", ["set_float32_matmul_precision", "mkldnn_matmul"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_float32_medium_precision_matches_torch_nn(kind, knob):
    """On every CPU: a 2-layer bidirectional float32 module under "medium" (either way of
    asking for it) gives torch.nn's float32 outputs and gradients within bfloat16's
    precision (on a CPU with AMX, not its float32 ones), and rnnfused's own float32 ones
    (its default) again once the setting is back: the setting is read at each call."""
    ref = getattr(torch.nn, kind)(32, 256, num_layers=2, bidirectional=True)
    fused = getattr(rnnfused, kind)(32, 256, num_layers=2, bidirectional=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(12, 20, 32)

    def run(module):
        leaf = x.clone().requires_grad_(True)
        out, _ = module(leaf)
        grads = torch.autograd.grad(weighted_sum([out]), [leaf, *module.parameters()])
        return [out.detach(), *grads]

    expected = run(ref)
    before = run(fused)
    if knob == "set_float32_matmul_precision":
        with float32_matmul_precision("medium"):
            medium = run(fused)
    else:
        # torch's per-backend setting for oneDNN's matmuls (which, unlike oneDNN's and every
        # backend's, is not locked by torch.backends.disable_global_flags(), as PyTorch's own
        # test harness leaves it)
        previous = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            medium = run(fused)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = previous
    after = run(fused)
    if cpu_amx():
        # A state of 256 units, 20 rows: the loops on the tiles.
        assert (medium[0] - before[0]).abs().max() > 1e-4
    for a, b, e in zip(before, after, expected):
        torch.testing.assert_close(a, e, atol=1e-5 * max(e.abs().max().item(), 1.0), rtol=1e-4)
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    for m, e in zip(medium, expected):
        scale = e.abs().max().item()
        torch.testing.assert_close(m, e, atol=3e-2 * max(scale, 1e-3), rtol=0)


@pytest.mark.parametrize("batch,hidden", [(64, 512), (40, 336)])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_float32_medium_precision_large_steps(kind, batch, hidden):
    """Where a step's product is large (17 rows and more, 2^22 multiply-adds and more), the
    backward under "medium" takes a GEMM a step (on bfloat16 operands where the CPU has AMX:
    on the tiles with W_hh packed once, cpu::amx_gemm_bf16; launch_cpu.h's
    float32_gemm_steps) instead of the float32 loop: B 64 H 512, and B 40 H 336 (a partial
    16-row tile, an odd count of 16-column tiles, a partial 32-deep chunk for the RNN's 336).
    Outputs and gradients are torch.nn's float32 ones within bfloat16's precision, with both
    the forward and the backward under "medium", and the forward alone under it."""
    torch.manual_seed(batch + hidden)
    ref = getattr(torch.nn, kind)(64, hidden)
    fused = getattr(rnnfused, kind)(64, hidden)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, batch, 64)

    def run(module, forward="highest", backward="highest"):
        leaf = x.clone().requires_grad_(True)
        with float32_matmul_precision(forward):
            out, _ = module(leaf)
        with float32_matmul_precision(backward):
            grads = torch.autograd.grad(weighted_sum([out]), [leaf, *module.parameters()])
        return [out.detach(), *grads]

    expected = run(ref)
    for forward, backward in [("medium", "medium"), ("medium", "highest")]:
        for m, e in zip(run(fused, forward, backward), expected):
            scale = e.abs().max().item()
            torch.testing.assert_close(m, e, atol=3e-2 * max(scale, 1e-3), rtol=0,
                                       msg=lambda msg: f"{forward}/{backward}: {msg}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_float32_medium_precision_without_onednn_stays_float32(kind):
    """With oneDNN turned off (torch.backends.mkldnn.flags(enabled=False)) torch's float32
    matmuls stay float32 under "medium", and so do rnnfused's loops: the same results as under
    "highest", bit for bit, at a size whose forward takes the tiles where oneDNN is on."""
    module = getattr(rnnfused, kind)(32, 256)
    x = torch.randn(10, 20, 32)
    with torch.no_grad():
        expected = module(x)[0]
        with torch.backends.mkldnn.flags(enabled=False, allow_tf32=None), \
                float32_matmul_precision("medium"):
            got = module(x)[0]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
