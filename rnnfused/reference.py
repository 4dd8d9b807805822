"""The layer ops in plain PyTorch.

The fallback where no fused kernel runs (no compiled extension, or a device or
dtype without kernels), and the oracle the op tests compare against. Every
function here is differentiable by autograd; none depends on the extension.

Sequence layout, as in the ops: ``input`` is ``[T, B, I]`` when ``batch_sizes``
is None, else packed data ``[N, I]`` with ``batch_sizes`` ``[T]`` (int64, CPU,
non-increasing); ``output`` has the same layout with the last size ``P``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


def _steps(input: Tensor, batch_sizes: Tensor | None, reverse: bool) -> Iterator[tuple[int, int, int]]:
    """(time, first row, rows) of every step, in processing order."""
    if batch_sizes is None:
        sizes = [input.size(1)] * input.size(0)
    else:
        sizes = [int(b) for b in batch_sizes.tolist()]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    order = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in order:
        yield t, offsets[t], sizes[t]


# step(x_proj_rows [r, G*H], states: tuple of [r, *]) -> (output rows [r, P], new states)
StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, tuple[Tensor, ...]]]


def _run_layer(
    input: Tensor,
    batch_sizes: Tensor | None,
    x_proj: Tensor,
    states: tuple[Tensor, ...],
    out_size: int,
    step: StepFn,
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Runs `step` over time; each state tensor is [B, *] and only its first
    `rows` rows advance at a step (the others belong to finished sequences)."""
    outputs: dict[int, Tensor] = {}
    for t, offset, rows in _steps(input, batch_sizes, reverse):
        out, new = step(x_proj[offset : offset + rows], tuple(s[:rows] for s in states))
        outputs[t] = out
        states = tuple(torch.cat([n, s[rows:]], 0) for n, s in zip(new, states))
    if outputs:
        output = torch.cat([outputs[t] for t in sorted(outputs)], 0)
    else:
        output = x_proj.new_empty(0, out_size)
    if batch_sizes is None:
        output = output.view(input.size(0), input.size(1), out_size)
    return output, states


def _rows(input: Tensor) -> Tensor:
    """[T, B, I] or [N, I] -> [N, I] (flatten, unlike reshape(-1, I), allows I = 0)."""
    return input.flatten(0, -2)


def rnn_layer(
    input: Tensor,
    batch_sizes: Tensor | None,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    relu: bool,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """Elman RNN layer: h' = act(W_ih x + b_ih + W_hh h + b_hh). Returns (output, h_n)."""
    activation = torch.relu if relu else torch.tanh

    def step(x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        h = activation(x + F.linear(states[0], w_hh, b_hh))
        return h, (h,)

    x_proj = F.linear(_rows(input), w_ih, b_ih)
    output, (h_n,) = _run_layer(input, batch_sizes, x_proj, (hx,), w_hh.size(0), step, reverse)
    return output, h_n


def lstm_layer(
    input: Tensor,
    batch_sizes: Tensor | None,
    hx: Tensor,
    cx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM layer, gates i, f, g, o; with w_hr, h' = W_hr (o * tanh(c')).
    Returns (output, h_n, c_n)."""

    def step(x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        h, c = states
        i, f, g, o = (x + F.linear(h, w_hh, b_hh)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        return h, (h, c)

    x_proj = F.linear(_rows(input), w_ih, b_ih)
    output, (h_n, c_n) = _run_layer(input, batch_sizes, x_proj, (hx, cx), hx.size(1), step, reverse)
    return output, h_n, c_n


def gru_layer(
    input: Tensor,
    batch_sizes: Tensor | None,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """GRU layer, gates r, z, n: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
    h' = (1 - z) * n + z * h. Returns (output, h_n)."""

    def step(x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        (h,) = states
        x_r, x_z, x_n = x.chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)

    x_proj = F.linear(_rows(input), w_ih, b_ih)
    output, (h_n,) = _run_layer(input, batch_sizes, x_proj, (hx,), hx.size(1), step, reverse)
    return output, h_n
