#!/usr/bin/env python
"""Time rnnfused against torch.nn and rnnfused's own reference path.

Contenders, all holding the same weights:
  torch.nn   the stock module (oneDNN / ATen on CPU, cuDNN on CUDA)
  rnnfused   the fused kernels
  reference  rnnfused's pure-PyTorch path (inside ``rnnfused.reference_mode()``)

Modes:
  fwd     forward under ``torch.no_grad()``, modules in eval mode
  fwdbwd  forward, then the gradient of ``sum(output * G)`` (G a fixed random tensor of
          the output's shape) with respect to the input and every parameter
  fwdbwd_weights  the same with respect to the parameters only (an input that needs no
          gradient: a first layer on data; not in the default modes)

Before any case is timed, each contender's results are compared with torch.nn's; a
mismatch is marked FAIL in the table and makes the script exit with status 1.

Run from the repository root:  python benchmarks/bench.py [--quick] [--out DIR] ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import timeit
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# numpy's OpenBLAS (torch imports numpy) starts a pool of one thread per CPU at import;
# on a 2-vCPU host they took CPU time from the timed OpenMP threads in some processes
# and not others: torch.nn's LSTM forward at T 50, B 1, H 64 read 0.21 or 0.11 ms, the
# 2-layer bidirectional one 8.1-8.4 or 5.2 ms, by process (rnnfused 4.6 or 4.4). Nothing
# here calls OpenBLAS: one thread (set before the import; an explicit setting wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.benchmark import Timer  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:
    tqdm = None

# kind -> (class name in torch.nn / rnnfused, extra constructor kwargs, gates per hidden unit)
KINDS: dict[str, tuple[str, dict[str, Any], int]] = {
    "lstm": ("LSTM", {}, 4),
    "gru": ("GRU", {}, 3),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}, 1),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, 1),
    # Cells are stepped over T from Python, one layer, one direction.
    "lstm_cell": ("LSTMCell", {}, 4),
    "gru_cell": ("GRUCell", {}, 3),
    "rnn_cell": ("RNNCell", {"nonlinearity": "tanh"}, 1),
}
DEFAULT_KINDS = ["lstm", "gru", "rnn_tanh"]

# (T, B, I, H, layers, bidirectional)
DEFAULT_SHAPES = [
    (50, 1, 64, 64, 1, False),
    (100, 16, 128, 128, 2, True),
    (100, 64, 512, 512, 1, False),
]
QUICK_SHAPES = [(16, 4, 32, 32, 2, True)]

# (atol, rtol) for outputs; gradients use atol scaled by the reference's largest magnitude,
# since a weight gradient is a sum over T*B terms.
TOLERANCES = {
    torch.float32: (1e-4, 1e-3),
    torch.float64: (1e-10, 1e-7),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float64": torch.float64, "fp64": torch.float64,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
CONTENDERS = ["torch.nn", "rnnfused", "reference"]
BUSY_LIMIT = 0.05  # share of the CPUs other processes may use before a row is flagged
MODES = ["fwd", "fwdbwd"]
ALL_MODES = [*MODES, "fwdbwd_weights"]


@dataclass(frozen=True)
class Case:
    kind: str
    T: int
    B: int
    I: int
    H: int
    layers: int
    dirs: int

    @property
    def is_cell(self) -> bool:
        return self.kind.endswith("_cell")

    def forward_flops(self) -> int:
        """FLOPs of the forward: 2*T*B*(I_layer + H)*G*H per layer and direction."""
        gates = KINDS[self.kind][2]
        total = 0
        for layer in range(self.layers):
            in_size = self.I if layer == 0 else self.H * self.dirs
            total += self.dirs * 2 * self.T * self.B * (in_size + self.H) * gates * self.H
        return total

    def flops_of(self, mode: str) -> int:
        """FLOPs of a mode: the backward twice the forward's, less the first layer's input
        gradient (2*T*B*I*G*H per direction) where the input needs none."""
        if mode == "fwd":
            return self.forward_flops()
        total = 3 * self.forward_flops()
        if mode == "fwdbwd_weights":
            total -= self.dirs * 2 * self.T * self.B * self.I * KINDS[self.kind][2] * self.H
        return total


@dataclass
class Row:
    case: Case
    mode: str
    flops: int
    times_ms: dict[str, float | None] = field(default_factory=dict)  # median per contender
    iqr_ms: dict[str, float | None] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)  # contender -> "ok" | "FAIL ..." | "error ..."
    errors: dict[str, str] = field(default_factory=dict)
    other_load: float | None = None  # share of all CPUs used by other processes while timing

    def ok(self) -> bool:
        return all(v == "ok" for v in self.checks.values()) and not self.errors


# ---------------------------------------------------------------------------------------------
# Setup


def import_rnnfused() -> tuple[Any, str | None]:
    """Import rnnfused, installed or from the repository root, and check that it can build an
    LSTM (a bare source directory imports as an empty namespace package); (module, error)."""
    repo_root = str(Path(__file__).resolve().parent.parent)
    err = None
    for extra_path in (None, repo_root):
        if extra_path is not None and extra_path not in sys.path:
            sys.path.insert(0, extra_path)
        for mod_name in [m for m in sys.modules if m == "rnnfused" or m.startswith("rnnfused.")]:
            del sys.modules[mod_name]
        try:
            import rnnfused
            rnnfused.LSTM(2, 3)
            for name in ("reference_mode", "backend_info"):
                getattr(rnnfused, name)
            return rnnfused, None
        except Exception as e:  # a half-built package can fail in many ways
            err = f"{type(e).__name__}: {e}"
    return None, err


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent since boot (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Share of the machine's CPUs that other processes used between start() and stop():
    on a shared machine, the measure of how far a row's times can be trusted."""

    def start(self) -> None:
        self.busy0, self.own0 = _busy_cpu_seconds(), sum(os.times()[:2])
        self.wall0 = timeit.default_timer()

    def stop(self) -> float | None:
        busy = _busy_cpu_seconds()
        if busy is None or self.busy0 is None:
            return None
        others = (busy - self.busy0) - (sum(os.times()[:2]) - self.own0)
        wall = timeit.default_timer() - self.wall0
        return max(0.0, others) / (wall * (os.cpu_count() or 1))


def build_modules(case: Case, device: torch.device, dtype: torch.dtype, rnnfused: Any,
                  seed: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The torch.nn module and (if rnnfused is given) its rnnfused twin with the same weights."""
    cls_name, extra, _ = KINDS[case.kind]
    if case.is_cell:
        args: dict[str, Any] = dict(extra)
    else:
        args = dict(num_layers=case.layers, bidirectional=case.dirs == 2, **extra)
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls_name)(case.I, case.H, **args)
    fused = None
    if rnnfused is not None:
        fused = getattr(rnnfused, cls_name)(case.I, case.H, **args)
        fused.load_state_dict(ref.state_dict())
        fused = fused.to(device=device, dtype=dtype)
    return ref.to(device=device, dtype=dtype), fused


def make_call(mod: torch.nn.Module, case: Case) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """x: [T, B, I] -> [output [T, B, dirs*H], final states...]."""
    if not case.is_cell:
        def call(x: torch.Tensor) -> list[torch.Tensor]:
            out, state = mod(x)
            return [out, *(state if isinstance(state, tuple) else (state,))]
        return call

    is_lstm = case.kind == "lstm_cell"

    def call_cell(x: torch.Tensor) -> list[torch.Tensor]:
        state = None
        hs = []
        for t in range(x.shape[0]):
            state = mod(x[t], state)
            hs.append(state[0] if is_lstm else state)
        return [torch.stack(hs), *(state if is_lstm else (state,))]
    return call_cell


def make_step(call: Callable, mod: torch.nn.Module, mode: str, x: torch.Tensor,
              grad_out: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    """One timed unit of work; returns the outputs (fwd) or outputs then gradients (fwdbwd)."""
    if mode == "fwd":
        def fwd() -> list[torch.Tensor]:
            with torch.no_grad():
                return call(x)
        return fwd

    params = list(mod.parameters())
    with_input = mode == "fwdbwd"
    xg = x.detach().requires_grad_(with_input)

    def fwdbwd() -> list[torch.Tensor]:
        outs = call(xg)
        grads = torch.autograd.grad(outs[0], [xg, *params] if with_input else params,
                                    grad_outputs=grad_out)
        return [o.detach() for o in outs] + list(grads)
    return fwdbwd


def compare(got: list[torch.Tensor], want: list[torch.Tensor], n_out: int,
            dtype: torch.dtype) -> str:
    """'ok' or 'FAIL <what> err <max abs error>'; the first n_out tensors are outputs."""
    atol, rtol = TOLERANCES.get(dtype, (1e-4, 1e-3))
    if len(got) != len(want):
        return f"FAIL returned {len(got)} tensors, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        what = "out" if i < n_out else "grad"
        if g.shape != w.shape:
            return f"FAIL {what}[{i}] shape {tuple(g.shape)} != {tuple(w.shape)}"
        g64, w64 = g.double(), w.double()
        a = atol if i < n_out else atol * max(1.0, w64.abs().max().item() if w64.numel() else 1.0)
        if not torch.allclose(g64, w64, atol=a, rtol=rtol):
            err = (g64 - w64).abs().max().item()
            return f"FAIL {what}[{i}] max err {err:.2e}"
    return "ok"


# ---------------------------------------------------------------------------------------------
# Timing


def warm_up(steps: dict[str, Callable[[], Any]], threads: int, seconds: float,
            runs: int = 3) -> None:
    """Runs each contender, in turn, at least `runs` times and for at least `seconds`.
    A process's first runs of a large layer are slower than its later ones, by up to
    half for a T100 B64 H512 LSTM's training step (its memory settles: glibc serves
    buffers of a size it has freed from its heap, already mapped, from then on; on a
    VM the largest buffers' huge pages also fault in slowly for a while), and
    blocked_autorange's own estimate runs too few of them to get past that."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in steps.values():
            start, done = time.perf_counter(), 0
            while done < runs or time.perf_counter() - start < seconds:
                step()
                done += 1
    finally:
        torch.set_num_threads(previous)


def time_interleaved(steps: dict[str, Callable[[], Any]], timer: Callable[[], float] | None,
                     threads: int, rounds: int, min_time: float,
                     min_runs: int) -> dict[str, list[float]]:
    """Per-run times in seconds of each contender (after `warm_up`).

    `rounds` rounds, each giving every contender min_time / rounds seconds of measurement in
    turn (order rotated per round): the first round is blocked_autorange, which warms up and
    picks the block size; later rounds time blocks of that size (re-estimating it would cost
    an extra run per round on slow cases). Contenders then left with fewer than `min_runs`
    blocks get more, so that one stalled block cannot be the median.
    """
    names = list(steps)
    kw = {} if timer is None else {"timer": timer}
    timers = {n: Timer(stmt="step()", globals={"step": steps[n]}, num_threads=threads,
                       label=n, **kw) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    number: dict[str, int] = {}
    budget = min_time / rounds
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if r == 0:
                m = timers[n].blocked_autorange(min_run_time=budget)
                number[n] = m.number_per_run
                times[n].extend(m.times)
                continue
            spent = 0.0
            while spent < budget:
                t = timers[n].timeit(number[n]).times[0]
                times[n].append(t)
                spent += t * number[n]
    for _ in range(min_runs):  # each pass adds a block to every short contender
        short = [n for n in names if len(times[n]) < min_runs]
        if not short:
            break
        for n in short:
            times[n].extend(timers[n].timeit(number[n]).times)
    return times


def run_case(case: Case, mode: str, args: argparse.Namespace, rnnfused: Any,
             log: Callable[[str], None]) -> Row:
    """Build the contenders for one case and mode, check them against torch.nn, time them."""
    device, dtype = args.device_obj, args.dtype_obj
    row = Row(case=case, mode=mode, flops=case.flops_of(mode))
    try:
        nn_mod, fused_mod = build_modules(case, device, dtype, rnnfused, args.seed)
    except Exception as e:  # rnnfused's constructor or load_state_dict; torch.nn alone still runs
        row.errors["rnnfused"] = f"construction: {type(e).__name__}: {e}"
        row.checks["rnnfused"] = "error"
        log(f"  rnnfused raised on {case} {mode}: {row.errors['rnnfused']}")
        nn_mod, fused_mod = build_modules(case, device, dtype, None, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(case.T, case.B, case.I, generator=gen).to(device=device, dtype=dtype)
    out_width = case.H * (1 if case.is_cell else case.dirs)
    grad_out = torch.randn(case.T, case.B, out_width, generator=gen).to(device=device, dtype=dtype)
    for m in (nn_mod, fused_mod):
        if m is not None:
            m.train(mode != "fwd")

    steps: dict[str, Callable[[], Any]] = {
        "torch.nn": make_step(make_call(nn_mod, case), nn_mod, mode, x, grad_out)}
    if fused_mod is not None:
        steps["rnnfused"] = make_step(make_call(fused_mod, case), fused_mod, mode, x, grad_out)
        if args.reference_enabled(case):
            fused_step = steps["rnnfused"]

            def reference_step() -> Any:
                with rnnfused.reference_mode():
                    return fused_step()
            steps["reference"] = reference_step

    # Correctness (and warm-up): every contender against torch.nn, in float32 on
    # cuDNN too (its float32 RNNs round to TF32 by default, ~1e-3; it is timed so).
    allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        want = steps["torch.nn"]()
    finally:
        torch.backends.cudnn.allow_tf32 = allow_tf32
    n_out = len(want) if mode == "fwd" else len(want) - (1 + len(list(nn_mod.parameters())))
    # Under "medium" float32 products may round their operands to bfloat16 (torch.nn's GRU
    # and RNN on oneDNN, rnnfused's loops on AMX tiles): judged at bfloat16's tolerance.
    check_dtype = (torch.bfloat16 if dtype == torch.float32 and
                   torch.get_float32_matmul_precision() == "medium" else dtype)
    for name in list(steps):
        if name == "torch.nn":
            continue
        try:
            row.checks[name] = compare(steps[name](), want, n_out, check_dtype)
        except Exception as e:
            row.errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row.checks[name] = "error"
            log(f"  {name} raised on {case} {mode}: {row.errors[name]}")
            del steps[name]
            continue
        if row.checks[name] != "ok":
            log(f"  {name} MISMATCH on {case} {mode}: {row.checks[name]}")
    del want

    load = OtherLoad()
    load.start()
    try:
        warm_up(steps, args.threads, args.warmup)
        times = time_interleaved(steps, args.timer, args.threads, args.rounds, args.min_time,
                                 args.min_runs)
    except Exception as e:  # a contender that passed once may still fail later
        row.errors["timing"] = f"{type(e).__name__}: {e}"
        log(f"  timing failed on {case} {mode}: {row.errors['timing']}")
        return row
    row.other_load = load.stop()
    for name in CONTENDERS:
        ts = times.get(name)
        if not ts:
            row.times_ms[name] = row.iqr_ms[name] = None
            continue
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        row.times_ms[name] = statistics.median(ts) * 1e3
        row.iqr_ms[name] = (q[2] - q[0]) * 1e3
        row.runs[name] = len(ts)
    return row


# ---------------------------------------------------------------------------------------------
# Report


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def gflops(row: Row, name: str, peak: float | None) -> str:
    """Achieved GFLOP/s, with its share of the measured FMA peak when there is one."""
    t = row.times_ms.get(name)
    if not t:
        return "-"
    rate = row.flops / (t * 1e-3) / 1e9
    return f"{rate:.3g} ({100 * rate / peak:.0f}%)" if peak else f"{rate:.3g}"


def measure_fma_peak(threads: int, seconds: float, op_name: str = "_cpu_fma_peak_gflops") -> float | None:
    """The float32 FMA ceiling in GFLOP/s on `threads` threads: rnnfused's register-only
    AVX-512 loop (PERFORMANCE.md's method); None without AVX-512 or the extension.
    op_name "_cpu_bf16_dot_peak_gflops": the same for the bfloat16 dot product
    (AVX512-BF16 vdpbf16ps), None without it; "_cpu_amx_peak_gflops": AMX-BF16's tiles,
    None where they are off."""
    op = getattr(torch.ops.rnnfused, op_name, None)
    return (op(seconds, threads) or None) if op is not None else None


def noise(row: Row) -> str:
    """The worst contender's interquartile range over its median: how far to trust the row."""
    spreads = [row.iqr_ms[n] / t for n, t in row.times_ms.items() if t and row.iqr_ms.get(n)]
    return f"{100 * max(spreads):.0f}%" if spreads else "-"


def check_cell(row: Row) -> str:
    bad = [f"{n}: {c}" + (f" ({row.errors[n]})" if n in row.errors else "")
           for n, c in row.checks.items() if c != "ok"]
    if "timing" in row.errors:
        bad.append(f"timing: {row.errors['timing']}")
    if not row.checks and not bad:
        return "n/a"
    return "ok" if not bad else "**FAIL** " + "; ".join(bad).replace("|", "/")


def markdown(meta: dict[str, Any], rows: list[Row]) -> str:
    lines = [f"# rnnfused benchmark ({meta['device']}, {meta['dtype']})", ""]
    for key in ("date", "cpu", "device_name", "torch", "threads", "float32_matmul_precision",
                "cpu_isa", "fma_peak_gflops",
                "fma_peak_gflops_start", "fma_peak_gflops_end", "bf16_dot_peak_gflops",
                "amx_peak_gflops", "cpu_amx",
                "cpu_bf16_dot", "load_avg", "openblas_threads", "rnnfused", "backend_info", "path",
                "timing"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    lines += [
        "- ratio = torch.nn time / rnnfused time (>1: rnnfused faster); GFLOP/s count "
        "2*T*B*(I+H)*G*H per layer-direction forward, fwdbwd = 3x forward (fwdbwd_weights: "
        "less the first layer's input gradient, 2*T*B*I*G*H a direction); (%) = share of "
        "fma_peak_gflops, the float32 FMA ceiling of a register-only FMA loop on the same "
        "threads, on cpu_isa's vectors: the higher of its measurements at the start and at the "
        "end of this run (a virtual machine's speed drifts)",
        *(["- bf16_dot_peak_gflops = the same loop on AVX512-BF16's dot product (vdpbf16ps, 64 "
            "FLOP an instruction): the ceiling of a kernel built on it (rnnfused's bfloat16 "
            "forward loops run on it where cpu_bf16_dot, on AMX tiles where cpu_amx, else "
            "in float32)"]
          if "bf16_dot_peak_gflops" in meta else []),
        *(["- float32_matmul_precision medium: float32 products may round their operands to "
            "bfloat16 (torch.nn's GRU and RNN on oneDNN; rnnfused's input projection on oneDNN "
            "and its forward loop on AMX tiles where cpu_amx), so a float32 row can pass 100% "
            "of the float32 FMA peak; results checked at bfloat16's tolerance"]
          if meta.get("float32_matmul_precision") == "medium" and meta["dtype"] == "float32"
          else []),
        *(["- amx_peak_gflops = AMX-BF16's tdpbf16ps on tiles held in registers (16 x 16 x 32 "
            "x 2 FLOP an instruction): the ceiling of the tiles the forward loops run on where "
            "cpu_amx"]
          if "amx_peak_gflops" in meta else []),
        "- noise = the worst contender's IQR / median; others = share of all CPUs that other "
        "processes used while the row was timed (above a few %, OpenMP stalls can inflate "
        "times by orders of magnitude: rerun on a quiet machine)",
        "",
        "| kind | T | B | I | H | layers | dirs | mode | check | torch.nn ms | rnnfused ms "
        "| reference ms | nn/rnnfused | rnnfused GFLOP/s | torch.nn GFLOP/s | noise | others |",
        "|---|" + "---:|" * 6 + "---|---|" + "---:|" * 8,
    ]
    peak = meta.get("fma_peak_gflops") if meta["device"] == "cpu" else None
    for r in rows:
        c, t = r.case, r.times_ms
        nn_t, fu_t = t.get("torch.nn"), t.get("rnnfused")
        ratio = f"{nn_t / fu_t:.2f}x" if nn_t and fu_t else "-"
        lines.append(
            f"| {c.kind} | {c.T} | {c.B} | {c.I} | {c.H} | {c.layers} | {c.dirs} | {r.mode} "
            f"| {check_cell(r)} | {fmt_ms(nn_t)} | {fmt_ms(fu_t)} | {fmt_ms(t.get('reference'))} "
            f"| {ratio} | {gflops(r, 'rnnfused', peak)} | {gflops(r, 'torch.nn', peak)} "
            f"| {noise(r)} "
            f"| {'-' if r.other_load is None else f'{100 * r.other_load:.0f}%'} |")
    busy = [r for r in rows if r.other_load is not None and r.other_load > BUSY_LIMIT]
    if busy:
        lines += ["", f"**{len(busy)} of {len(rows)} rows were timed while other processes used "
                      f"more than {BUSY_LIMIT:.0%} of the CPUs: their times are not reliable.**"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: one small case (T16 B4 I32 H32, 2 layers, bidir) per "
                        "kind, one short round")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                   help=f"comma-separated subset of {','.join(KINDS)} (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(ALL_MODES)} (default: %(default)s)")
    p.add_argument("--case", action="append", metavar="T,B,I,H,LAYERS,DIRS",
                   help="replace the shape grid (repeatable), e.g. --case 100,64,512,512,1,1")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads (default: torch.get_num_threads() = %(default)s)")
    p.add_argument("--out", type=Path, help="directory to write bench.md and bench.json into")
    p.add_argument("--no-reference", action="store_true", help="never time the reference path")
    p.add_argument("--reference-max-gflop", type=float, default=5.0,
                   help="time the reference path only for cases whose forward is at most this "
                        "many GFLOP (default: %(default)s; 'inf' for all)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of measurement per contender per case (default 0.6, quick 0.05)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds each contender runs untimed before a case's timing, at least "
                        "3 runs (default 2.0, quick 0)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds the min-time is split into (default 3, quick 1)")
    p.add_argument("--min-runs", type=int, default=None,
                   help="runs per contender per case at least (default 5, quick 3)")
    p.add_argument("--float32-matmul-precision", default="highest",
                   choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision for the whole run (default: "
                        "%(default)s); 'medium' lets torch's float32 matmuls, and so torch.nn's "
                        "GRU and RNN, round their operands to bfloat16 on oneDNN, and rnnfused's "
                        "float32 loops form their products on AMX tiles where the CPU has them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-only", action="store_true",
                   help="debug: time torch.nn alone (works without rnnfused)")
    args = p.parse_args(argv)

    args.kind_list = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    for k in args.kind_list:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
    for m in args.mode_list:
        if m not in ALL_MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(ALL_MODES)}")
    if args.case:
        shapes = []
        for s in args.case:
            try:
                T, B, I, H, L, D = (int(v) for v in s.split(","))
            except ValueError:
                p.error(f"--case {s!r}: expected six integers T,B,I,H,LAYERS,DIRS")
            if D not in (1, 2):
                p.error(f"--case {s!r}: DIRS must be 1 or 2, got {D}")
            shapes.append((T, B, I, H, L, D == 2))
    else:
        shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    args.shapes = shapes
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 0.6
    if args.warmup is None:
        args.warmup = 0.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.min_runs is None:
        args.min_runs = 3 if args.quick else 5
    if min(args.threads, args.rounds, args.min_runs) < 1 or args.min_time <= 0:
        p.error("--threads, --rounds, --min-runs and --min-time must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    args.dtype_obj = DTYPES[args.dtype]
    args.device_obj = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    # None: Timer's default, which synchronises the accelerator; not needed on the CPU.
    args.timer = timeit.default_timer if args.device == "cpu" else None

    def reference_enabled(case: Case) -> bool:
        return not args.no_reference and case.forward_flops() <= args.reference_max_gflop * 1e9
    args.reference_enabled = reference_enabled
    return args


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases: list[Case] = []
    for kind in args.kind_list:
        for T, B, I, H, L, bidir in args.shapes:
            c = Case(kind, T, B, I, H, L, 2 if bidir else 1)
            if c.is_cell:  # cells have one layer, one direction
                c = Case(kind, T, B, I, H, 1, 1)
            if c not in cases:
                cases.append(c)
    return cases


def collect_meta(args: argparse.Namespace, rnnfused: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "device": args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": args.threads,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "timing": f"torch.utils.benchmark.Timer (blocked_autorange, then blocks of its size), "
                  f"after {args.warmup:.3g} s (3 runs at least) of warm-up per contender, "
                  f"{args.rounds} interleaved round(s) x {args.min_time / args.rounds:.3g} s "
                  f"per contender, at least {args.min_runs} blocks, median of all blocks",
    }
    if hasattr(os, "getloadavg"):
        meta["load_avg"] = "%.2f %.2f %.2f" % os.getloadavg()
    meta["openblas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")  # set above
    if args.device == "cuda":
        idx = torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(idx)
        meta["device_name"] = (f"{torch.cuda.get_device_name(idx)} (sm_{cap[0]}{cap[1]}), "
                               f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        meta["device_name"] = (f"{cpu_model()}; oneDNN "
                               f"{'on' if torch.backends.mkldnn.is_available() else 'off'}")
    if rnnfused is None:
        meta["rnnfused"] = "not used (--torch-only)"
        return meta
    meta["rnnfused"] = f"{getattr(rnnfused, '__version__', '?')} from {rnnfused.__file__}"
    if args.device == "cpu":
        isa = getattr(torch.ops.rnnfused, "cpu_isa", None)
        if isa is not None:
            meta["cpu_isa"] = isa()  # the vectors rnnfused's CPU kernels (and the peak) run
        peak = measure_fma_peak(args.threads, 0.2 if args.quick else 1.0)
        if peak is not None:
            meta["fma_peak_gflops"] = round(peak, 1)
        amx = getattr(torch.ops.rnnfused, "cpu_amx", None)
        if amx is not None and (args.dtype_obj == torch.bfloat16 or
                                args.float32_matmul_precision == "medium"):
            # The recurrent products of the forward loop on AMX tiles, and the tiles' rate.
            meta["cpu_amx"] = bool(amx())
            tiles = measure_fma_peak(args.threads, 0.2 if args.quick else 1.0,
                                     "_cpu_amx_peak_gflops")
            if tiles is not None:
                meta["amx_peak_gflops"] = round(tiles, 1)
        if args.dtype_obj == torch.bfloat16:
            # What a kernel on the bfloat16 dot product can reach: rnnfused's bfloat16
            # forward loops run on it where it is the faster (cpu_bf16_dot).
            dot = measure_fma_peak(args.threads, 0.2 if args.quick else 1.0,
                                   "_cpu_bf16_dot_peak_gflops")
            if dot is not None:
                meta["bf16_dot_peak_gflops"] = round(dot, 1)
            dot_loops = getattr(torch.ops.rnnfused, "cpu_bf16_dot", None)
            if dot_loops is not None:
                # The recurrent products of the forward loop on vdpbf16ps.
                meta["cpu_bf16_dot"] = bool(dot_loops())
    try:
        meta["backend_info"] = rnnfused.backend_info()
        meta["path"] = rnnfused.backend_info(args.device_obj, args.dtype_obj)
    except Exception as e:
        meta["backend_info"] = f"error: {type(e).__name__}: {e}"
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rnnfused = None
    if not args.torch_only:
        rnnfused, err = import_rnnfused()
        if rnnfused is None:
            print(f"bench.py: cannot import rnnfused ({err}).\n"
                  "Build/install it first (e.g. `pip install -e .` from the repository root), "
                  "or pass --torch-only to time torch.nn alone.", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.float32_matmul_precision)
    meta = collect_meta(args, rnnfused)
    if meta.get("path") == "reference":
        print(f"bench.py: WARNING: rnnfused takes the reference path for {args.device}/"
              f"{args.dtype}; its column does not time fused kernels", file=sys.stderr)

    work = [(c, m) for c in build_cases(args) for m in args.mode_list]
    bar = tqdm(total=len(work), file=sys.stderr, unit="case") if tqdm is not None else None
    log = bar.write if bar is not None else (lambda s: print(s, file=sys.stderr, flush=True))
    rows = []
    for i, (case, mode) in enumerate(work):
        label = (f"{case.kind} T{case.T} B{case.B} I{case.I} H{case.H} L{case.layers} "
                 f"D{case.dirs} {mode}")
        if bar is not None:
            bar.set_description(label)
        else:
            log(f"[{i + 1}/{len(work)}] {label}")
        rows.append(run_case(case, mode, args, rnnfused, log))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if "fma_peak_gflops" in meta:
        # Measured again: the ceiling the rows' shares are of is the higher of the two.
        end = measure_fma_peak(args.threads, 0.2 if args.quick else 1.0)
        if end is not None:
            start = meta["fma_peak_gflops"]
            meta["fma_peak_gflops_start"], meta["fma_peak_gflops_end"] = start, round(end, 1)
            meta["fma_peak_gflops"] = max(start, round(end, 1))

    report = markdown(meta, rows)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.md").write_text(report)
        data = {"meta": meta, "rows": [
            {**asdict(r.case), "mode": r.mode, "flops": r.flops, "times_ms": r.times_ms,
             "iqr_ms": r.iqr_ms, "runs": r.runs, "other_load": r.other_load, "checks": r.checks, "errors": r.errors,
             "gflops": {n: (r.flops / (t * 1e-3) / 1e9 if t else None)
                        for n, t in r.times_ms.items()}}
            for r in rows]}
        (args.out / "bench.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        from plot import write_plot  # benchmarks/plot.py, beside this script

        title = f"rnnfused vs torch.nn: {meta.get('device_name', meta['device'])}, {meta['dtype']}, {meta['date']}"
        write_plot(data["rows"], args.out / "speedup.png", title)
    failed = [r for r in rows if not r.ok()]
    if failed:
        print(f"bench.py: {len(failed)} row(s) FAILED the check against torch.nn or raised",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
