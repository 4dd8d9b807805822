"""float16 / bfloat16: the error of rnnfused against a float64 reference is at most twice the
error of torch.nn itself in that dtype (the project's stated rule for low precision).

Both low-precision modules hold the same rounded weights; the float64 reference holds those
same values upcast, so only the arithmetic differs.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfused

from helpers import (
    CELL_KINDS,
    check_errors,
    compare_low_precision,
    cpu_flags_and_vendor,
    INPUT_SIZE,
    MODULE_KINDS,
    SEQ_LEN,
    make_kind_twins,
    run_cell_loop,
    run_float64_twin,
    run_module,
)

LOW = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
def test_low_precision_module(kind, dtype, device):
    ref, fused = make_kind_twins(kind, device=device, dtype=dtype, num_layers=2,
                                 bidirectional=True)
    # ReLU's gradient is discontinuous: one pre-activation that rounds to the other side of 0
    # changes a gradient by O(1), so for rnn_relu only the (continuous) forward is judged.
    compare_low_precision(ref, fused, "batched", True, device, dtype,
                          with_grads=(kind != "rnn_relu"))


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


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("hidden,batch", [(17, 1), (40, 9), (64, 19), (300, 5), (300, 40), (1030, 3)])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_low_precision_fused_loop_sizes(name, hidden, batch, packed, dtype, device):
    """float16 and bfloat16 at sizes where the CPU's persistent loops (AVX-512, from 4 steps per
    sequence on average) meets whole and partial 16-unit tiles, row blocks with remainders,
    more than one panel of K (H 300: 128 per LSTM panel, 170 per GRU, 512 per RNN) and, packed,
    a batch that grows in reverse (rows joining with their h0): both directions, outputs and
    gradients within twice torch.nn's error against float64. On a CPU with AMX-BF16 the
    bfloat16 forward is the loop on AMX tiles (cpu/amx_loop.h: 16-row tiles, here 1, 3 (a pair
    and one) or more, 32-unit chunks past K padded with zeros, two panels of chunks at H 300).
    H 300 at B 40: a bfloat16 LSTM's or GRU's step is large enough (> 2^23 multiply-adds) that a
    CPU with a fast bf16 GEMM (AMX-BF16, or AVX512-BF16 on AMD) runs its backward (and without
    AMX tiles or vdpbf16ps its forward) as one oneDNN GEMM a step instead
    (CpuLaunch::bf16_gemm_steps). H 17 and 1030: where the bfloat16 loops run on vdpbf16ps
    (cpu_bf16_dot(); then at every size, the backward too where W_hh's rows pair up, G*H even,
    not GRU's or RNN's at H 17), a state of odd width (its pairs padded with a zero) and one
    whose 515 pairs a row are summed in two blocks (fused_loop.h's kSumDepth)."""
    torch.manual_seed(hidden + batch)
    check_layer_against_float64(name, hidden, batch, 4, packed, dtype, device, bidirectional=True)


def check_layer_against_float64(kind, hidden, batch, shortest, packed, dtype, device,
                                bidirectional=False, proj_size=0):
    """A layer of `kind` (input 8, T 6, random h0 / c0; packed: lengths from 6 down to
    `shortest`) in rnnfused and torch.nn with the same weights: outputs and gradients within
    twice torch.nn's error against the float64 twin."""
    options = dict(bidirectional=bidirectional, device=device, dtype=dtype)
    if proj_size:
        options["proj_size"] = proj_size
    ref = getattr(torch.nn, kind)(8, hidden, **options)
    fused = getattr(rnnfused, kind)(8, hidden, **options)
    fused.load_state_dict(ref.state_dict())
    T, directions = 6, 2 if bidirectional else 1
    lengths = [T] + sorted(torch.randint(shortest, T + 1, (batch - 1,)).tolist(), reverse=True)
    x = torch.randn(T, batch, 8, device=device, dtype=dtype)
    h0 = torch.randn(directions, batch, proj_size or hidden, device=device, dtype=dtype)
    c0 = (torch.randn(directions, batch, hidden, device=device, dtype=dtype)
          if kind == "LSTM" else None)

    def build(x_, h0_, c0_):
        inp = pack_padded_sequence(x_, torch.tensor(lengths)) if packed else x_
        return (inp, (h0_, c0_)) if c0_ is not None else (inp, h0_)

    leaves = (x, h0, c0)
    exact = run_float64_twin(ref, leaves, build)
    check_errors(run_module(fused, leaves, build), run_module(ref, leaves, build), exact, dtype)


@pytest.mark.parametrize("form", ["dense", "packed", "no_bias", "reverse", "odd_input",
                                  "unaligned"])
@pytest.mark.parametrize("kind,hidden,input_size",
                         [("LSTM", 37, 1100), ("LSTM", 520, 64), ("GRU", 64, 200),
                          ("RNN", 70, 130), ("RNN", 96, 64)])
def test_bf16_projection_in_loop(kind, hidden, input_size, form, device):
    """Where bfloat16 loops run on vdpbf16ps (cpu_bf16_dot()) on two threads, a layer whose
    input rows pair up forms its input projection inside the forward loop
    (fused_forward_cpu.h's forms_projection_in_loop, here 40 rows a step: every size):
    W_ih's pairs in W_hh's tiles, a depth of 550 pairs summed in registers in one block
    (I 1100), partial tiles (37, 70 units), RNN's tile pairs with an odd tile left (70) and
    without (96), no bias, packed sequences whose batch shrinks, and (bidirectional) the
    reverse direction: in the loop for RNN and the LSTM of H 520 (its directions one after
    the other: W_hh past 1 MB), in chunks for the smaller LSTM and GRU, whose directions run
    a thread each. An odd input width (its rows are not whole pairs) and an input that
    starts 2 bytes into a buffer (its pairs not 4-byte aligned) take the chunks' GEMM too.
    Outputs and gradients within twice torch.nn's error against float64; on other CPUs,
    the same judges their loop."""
    torch.manual_seed(hidden)
    dtype = torch.bfloat16
    if form == "odd_input":
        input_size += 1
    options = dict(bidirectional=form == "reverse", bias=form != "no_bias", device=device,
                   dtype=dtype)
    ref = getattr(torch.nn, kind)(input_size, hidden, **options)
    fused = getattr(rnnfused, kind)(input_size, hidden, **options)
    fused.load_state_dict(ref.state_dict())
    T, B = 8, 40
    lengths = torch.tensor([T - (b * 4) // B for b in range(B)])  # T down to 5
    x = torch.randn(T, B, input_size, device=device, dtype=dtype)

    def build(x_):
        if form == "unaligned":
            # the same values one element into a buffer: contiguous, data_ptr 2 (mod 4)
            x_ = torch.cat([x_.new_zeros(1), x_.flatten()])[1:].view(x_.shape)
            if x_.dtype == dtype:
                assert x_.is_contiguous() and x_.data_ptr() % 4 == 2
        return (pack_padded_sequence(x_, lengths) if form == "packed" else x_,)

    exact = run_float64_twin(ref, (x,), build)
    check_errors(run_module(fused, (x,), build), run_module(ref, (x,), build), exact, dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("kind,hidden,batch",
                         [("LSTM", 32, 8), ("LSTM", 32, 16), ("LSTM", 32, 40), ("LSTM", 16, 16),
                          ("GRU", 32, 16), ("GRU", 32, 24), ("GRU", 16, 24), ("RNN", 20, 64),
                          ("RNN", 64, 8), ("RNN", 64, 16), ("RNN", 96, 24), ("RNN", 100, 24)])
def test_bf16_forward_either_side_of_the_tiles_rule(kind, hidden, batch, packed, device):
    """Where the CPU has AMX tiles, a bfloat16 layer's forward runs on them but for the
    narrowest states below 32 rows on two threads (where the tile loop's threads cannot split
    the batch): one 32-unit chunk of state from 64 gate rows (G * B: LSTM from 16 rows, GRU
    from 22) and an RNN's 64-96 units from 16 rows take the float32 loop on widened values
    (fused_forward_cpu.h's bfloat16_products_on_amx; the bound is the widest batch, which
    packed input shrinks), unless the loops run on one thread: layers on each side of those
    bounds (LSTM K 32 at B 8, 16 and 40, GRU K 32 at B 16 and 24, RNN K 20 at B 64, K 64 at B
    8 and 16, K 96 and 100 at B 24; on one thread, their work below 2^16, LSTM K 16 B 16 and
    GRU K 16 B 24), outputs and gradients within twice torch.nn's error against float64.
    Elsewhere they judge whichever loop runs."""
    torch.manual_seed(hidden * batch)
    check_layer_against_float64(kind, hidden, batch, 3, packed, torch.bfloat16, device)


@pytest.mark.parametrize("form", ["dense", "packed", "bidirectional"])
@pytest.mark.parametrize("hidden,batch", [(64, 32), (130, 64), (256, 33)])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_bf16_amx_rows_split_between_threads(kind, hidden, batch, form, device):
    """Where the AMX loop's threads split the batch's 16-row tiles among them (amx_loop.h:
    W_hh within half a core's L2 and a whole tile for each thread; each thread's rows fixed by
    the widest step, no barrier between steps): two tiles (B 32), four, and three of which the
    last holds one row (B 33: one thread's 16 rows, the other's 17), partial 16-unit blocks
    (H 130), a batch that shrinks (packed) and, backwards, grows. Outputs and gradients within
    twice torch.nn's error against float64; elsewhere they judge whichever loop runs."""
    torch.manual_seed(hidden + batch)
    check_layer_against_float64(kind, hidden, batch, 3, form != "dense", torch.bfloat16, device,
                                bidirectional=form == "bidirectional")


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("kind,hidden,input_size,T,batch",
                         [("LSTM", 256, 512, 100, 32), ("GRU", 16, 8, 300, 16),
                          ("RNN", 40, 24, 130, 40)])
def test_bf16_projection_chunks(kind, hidden, input_size, T, batch, packed, device):
    """A 16-bit layer forms its input projection in chunks of 2048 rows, or of as many as make
    a GEMM of 2^30 multiply-adds up to 32 MB (layers/common.h's ProjectedInput::chunk_rows):
    a wide W_ih (LSTM 1024 x 512: 2048 rows) over 3200 rows (packed ~2400: two chunks), and
    narrow layers whose 4800 and 5200 rows (three chunks before) now take one; packed input's
    batch shrinking inside and across chunks. Outputs and gradients within twice
    torch.nn's error against float64."""
    torch.manual_seed(hidden + T)
    dtype = torch.bfloat16
    options = dict(device=device, dtype=dtype)
    ref = getattr(torch.nn, kind)(input_size, hidden, **options)
    fused = getattr(rnnfused, kind)(input_size, hidden, **options)
    fused.load_state_dict(ref.state_dict())
    lengths = torch.tensor([T - (b * T // 2) // batch for b in range(batch)])  # T down to ~T / 2
    x = torch.randn(T, batch, input_size, device=device, dtype=dtype)

    def build(x_):
        return (pack_padded_sequence(x_, lengths) if packed else x_,)

    exact = run_float64_twin(ref, (x,), build)
    check_errors(run_module(fused, (x,), build), run_module(ref, (x,), build), exact, dtype)


def test_bf16_layers_gate_math_error():
    """A bfloat16 layer's gate math on AVX-512 (simd_avx512.h's Bf16Vec, every functor of a
    bfloat16 layer: vrcp14ps's reciprocal in place of division, exp and tanh of lower degree;
    torch.ops.rnnfused._cpu_bf16_gate_math forms sigmoid and tanh with it) within 7e-5
    relative of float64's over [-30, 30] (measured 5.6e-5 and 6.0e-5; a bfloat16 value's
    rounding is up to 2^-9, 2e-3), within [0, 1] and [-1, 1], tanh odd, the limits, signed
    zeros and NaN as torch's."""
    if torch.ops.rnnfused.cpu_isa() != "avx512":
        pytest.skip("the AVX-512 kernels do not run here")
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-30, -1e-30,
                            1e-40, 88.0, -88.0, 104.0, -104.0, 200.0, -200.0])
    x = torch.cat([torch.linspace(-30, 30, 600_001), special])
    sigmoid, tanh = torch.ops.rnnfused._cpu_bf16_gate_math(x)
    want_sigmoid, want_tanh = torch.sigmoid(x.double()), torch.tanh(x.double())
    finite = torch.isfinite(x)
    # sigmoid's relative error where it is a normal float (from x ~ -87 up)
    normal = finite & (want_sigmoid > torch.finfo(torch.float32).tiny)
    sigmoid_error = ((sigmoid.double() - want_sigmoid).abs() / want_sigmoid)[normal]
    nonzero = finite & (x != 0)
    tanh_error = ((tanh.double() - want_tanh).abs() / want_tanh.abs())[nonzero]
    assert sigmoid_error.max() < 7e-5 and tanh_error.max() < 7e-5, (sigmoid_error.max(),
                                                                      tanh_error.max())
    assert sigmoid[finite].min() >= 0 and sigmoid[finite].max() <= 1
    assert tanh[finite].abs().max() <= 1
    _, flipped_tanh = torch.ops.rnnfused._cpu_bf16_gate_math(-x)
    assert torch.equal(flipped_tanh[finite], -tanh[finite])
    tail = slice(x.numel() - special.numel(), None)
    torch.testing.assert_close(sigmoid[tail].double(), want_sigmoid[tail], atol=1e-38, rtol=7e-5,
                               equal_nan=True)
    torch.testing.assert_close(tanh[tail].double(), want_tanh[tail], atol=0, rtol=7e-5,
                               equal_nan=True)
    assert torch.equal(torch.signbit(tanh[tail][3:5]), torch.tensor([False, True]))  # +-0


@pytest.mark.parametrize("form", ["dense", "packed", "bidirectional"])
@pytest.mark.parametrize("kind,hidden,batch,proj_size",
                         [("LSTM", 128, 130, 0), ("GRU", 128, 180, 0), ("RNN", 256, 130, 0),
                          ("LSTM", 40, 33, 24), ("LSTM", 100, 17, 36), ("GRU", 512, 20, 0)])
def test_bf16_backward_steps_on_amx(kind, hidden, batch, proj_size, form, device):
    """Where a bfloat16 layer's backward runs a GEMM a step (steps of 2^23 multiply-adds and
    more: LSTM H 128 B 130, GRU H 128 B 180, RNN H 256 B 130; an LSTM with a projection at
    every size) and the CPU has AMX tiles, each step's d_pre @ W_hh runs on them with W_hh
    packed once (cpu::amx_gemm_bf16): whole and partial 16-row tiles (B 130: 8 and 2 rows; 17;
    33), an odd count of row tiles (B 180), partial 32-deep chunks (the projection's 4H 400)
    and 16-column tiles (P 36, 24), the GRU's products added to the gradient already there, a
    batch that shrinks (packed) and both directions. GRU H 512: W_hh's gradient (1536 x 512)
    formed as (h^T @ d_pre)^T with our transpositions (launch_cpu.h's
    transposed_product_is_faster), the first step's rows apart and the rest added to them.
    Outputs and gradients within twice torch.nn's error against float64; elsewhere they
    judge oneDNN's GEMM a step."""
    torch.manual_seed(hidden + batch + proj_size)
    check_layer_against_float64(kind, hidden, batch, 3, form == "packed", torch.bfloat16, device,
                                bidirectional=form == "bidirectional", proj_size=proj_size)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_bf16_amx_matmul(dtype):
    """The AMX GEMM behind those steps (torch.ops.rnnfused._cpu_amx_matmul: the right
    operand packed as the tiles take it, then out (+)= a @ b in float32 sums rounded once)
    against float64 over the edges of its tiles: 1-100 rows (16-row tiles, pairs of them and
    the last one alone), depths 1-600 (32-deep chunks, 512-deep panels, odd depths), 1-70
    columns (16-column tiles), rows of a with a stride of their own, an empty sum (depth 0),
    added to an existing out;
    on one thread and two. bfloat16: each value within a bfloat16 rounding of the exact sum
    (relative to the sum of the magnitudes of its terms). float32 (a float32 layer's steps
    under "medium"): the operands rounded to bfloat16, the sums and out float32, within
    float32's rounding of the exact sum of the rounded operands."""
    if not torch.ops.rnnfused.cpu_amx():
        pytest.skip("no AMX tiles here")
    bound = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -20
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for rows, depth, columns in [(1, 1, 1), (15, 31, 15), (16, 32, 16), (17, 33, 17),
                                         (33, 64, 32), (64, 600, 33), (100, 2, 70),
                                         (100, 1100, 48), (48, 513, 1), (20, 0, 18)]:
                a = torch.randn(rows, depth + 5, dtype=dtype)[:, :depth]
                b = torch.randn(depth, columns, dtype=dtype)
                a_used, b_used = a.bfloat16().double(), b.bfloat16().double()
                exact = a_used @ b_used
                scale = a_used.abs() @ b_used.abs() + 1e-30
                got = torch.ops.rnnfused._cpu_amx_matmul(a, b)
                assert got.dtype == dtype
                assert ((got.double() - exact).abs() / scale).max() <= bound, (rows, depth, columns)
                out = torch.randn(rows, columns, dtype=dtype)
                want = exact + out.double()
                torch.ops.rnnfused._cpu_amx_matmul(a, b, out)
                magnitude = scale + out.double().abs()
                assert ((out.double() - want).abs() / magnitude).max() <= bound, (rows, depth, columns)
    finally:
        torch.set_num_threads(threads)



# bfloat16's forward loops other than the float32 one on widened values: the switch that
# turns each off, its probe, and whether this CPU should run it (flags, vendor, AMX on).
BF16_LOOPS = {
    # AMX-BF16 tiles (cpu/amx_loop.h).
    "amx": ("RNNFUSED_CPU_AMX", "cpu_amx",
            lambda flags, vendor, amx: "amx_bf16" in flags and "avx512_bf16" in flags),
    # AVX512-BF16's vdpbf16ps (step_avx512.cpp's SimdDot) on CPUs other than Intel's (Intel
    # runs it at half the float32 rate without AMX); where AMX runs, the tiles take the loop.
    "dot": ("RNNFUSED_CPU_BF16_DOT", "cpu_bf16_dot",
            lambda flags, vendor, amx: "avx512_bf16" in flags and vendor != "GenuineIntel"
            and not amx),
}


@pytest.mark.parametrize("loop", sorted(BF16_LOOPS))
def test_bfloat16_forward_with_and_without_its_loop(loop):
    """Where the CPU has AMX-BF16 (and the AVX-512 kernels run), bfloat16 layers run their
    forward loop on AMX tiles (torch.ops.rnnfused.cpu_amx()); else on an AMD CPU with
    AVX512-BF16 their forward and backward loops on vdpbf16ps (cpu_bf16_dot()), so the tests
    above judged those loops. Its
    switch set to 0 turns it off, and the same tests then judge the float32 vector loop (or,
    AMX off on a CPU that has both, the dot product's) in a process of their own."""
    import os
    import subprocess
    import sys

    switch, probe_name, expected_on = BF16_LOOPS[loop]
    on = getattr(torch.ops.rnnfused, probe_name)()
    found = cpu_flags_and_vendor()
    if found is not None:
        flags, vendor = found
        amx = torch.ops.rnnfused.cpu_amx()
        expected = torch.ops.rnnfused.cpu_isa() == "avx512" and expected_on(flags, vendor, amx)
        if os.environ.get(switch) == "0":
            expected = False
        assert on == expected
    if not on:
        pytest.skip(f"no {loop} loop here: the tests above ran another")
    env = dict(os.environ, **{switch: "0"})
    probe = subprocess.run(
        [sys.executable, "-c", f"import rnnfused, torch; print(torch.ops.rnnfused.{probe_name}())"],
        env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stdout + probe.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "bf16 and cpu and not its_loop"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
