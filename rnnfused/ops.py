"""Typed wrappers of the ``torch.ops.rnnfused.*`` layer ops, their fake
(meta) kernels, and the differentiable backward that double backward takes (the
ops' autograd is in C++, csrc/autograd.cpp; its backward is itself an op).

The ops exist only when the compiled extension ``rnnfused._C`` loads;
``EXTENSION_ERROR`` says why it did not, and callers then take
``rnnfused.reference``. Layouts are described in ``csrc/ops.cpp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rnnfused import reference

try:
    from rnnfused import _C  # loading it registers the ops

    EXTENSION_ERROR: str | None = None
except ImportError as error:  # no compiled extension: the reference path runs
    EXTENSION_ERROR = f"{type(error).__name__}: {error}"

EXTENSION_LOADED = EXTENSION_ERROR is None


def has_kernel(device_type: str) -> bool:
    """Whether the extension registered kernels for this device type ('cpu', 'cuda')."""
    if not EXTENSION_LOADED:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "rnnfused::lstm_layer", key
    )


# ----------------------------------------------------------------- wrappers


def _typed_call(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether a call may take _C's typed binding of the op (csrc/bindings.cpp)
    instead of torch.ops: not while torch.compile traces (dynamo sees torch.ops
    calls only), not while torch.jit.trace records (the bindings decide
    need_workspace from the grad mode of the moment, see _backward_follows) and not
    where __torch_function__ applies (a subclass argument or a mode), which only
    torch.ops honours. Everything below Python dispatches alike."""
    return (
        not torch.compiler.is_compiling()
        and not torch._C._is_tracing()
        and not torch._C._has_torch_function(tensors)
    )


def _backward_follows(*tensors: Tensor | None) -> bool:
    """Whether autograd will need the op's saved workspace. Always while
    torch.jit.trace records: the flag is a constant of the traced graph, which must
    serve training as well as inference (and trace's check reruns it under no_grad)."""
    if not torch.compiler.is_compiling() and torch._C._is_tracing():  # dynamo can't trace the 2nd
        return True
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a loop: any() over a generator costs twice as much per cell step
        if t is not None and t.requires_grad:
            return True
    return False


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
    """One RNN layer-direction. input [T, B, I] or packed [N, I]; hx [B, H].
    Returns (output [T, B, H] or [N, H], h_n [B, H])."""
    args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh)
    op = _C.rnn_layer if _typed_call(args) else torch.ops.rnnfused.rnn_layer.default
    return op(*args, relu, reverse)


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
    """One LSTM layer-direction. hx [B, P], cx [B, H], w_hr [P, H] or None.
    Returns (output [T, B, P] or [N, P], h_n [B, P], c_n [B, H])."""
    args = (input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    if _typed_call(args):  # which decides need_workspace itself, in C++
        return _C.lstm_layer(*args, reverse)
    need_workspace = _backward_follows(*args)
    output, h_n, c_n, _, _ = torch.ops.rnnfused.lstm_layer.default(*args, reverse, need_workspace)
    return output, h_n, c_n


def lstm_cell(
    input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
    b_ih: Tensor | None, b_hh: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step, the layer op on the one-step sequence input [1, B, I] (the
    typed binding takes that view in C++). Returns (h' [B, H], c' [B, H])."""
    args = (input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    if _typed_call(args):
        return _C.lstm_cell(*args)
    _, h, c = lstm_layer(input.unsqueeze(0), None, hx, cx, w_ih, w_hh, b_ih, b_hh, None, False)
    return h, c


def gru_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
) -> Tensor:
    """One GRU step, as `lstm_cell`. Returns h' [B, H]."""
    args = (input, hx, w_ih, w_hh, b_ih, b_hh)
    if _typed_call(args):
        return _C.gru_cell(*args)
    return gru_layer(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, False)[1]


def rnn_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
    relu: bool,
) -> Tensor:
    """One RNN step (tanh or relu), as `lstm_cell`. Returns h' [B, H]."""
    args = (input, hx, w_ih, w_hh, b_ih, b_hh)
    if _typed_call(args):
        return _C.rnn_cell(*args, relu)
    return rnn_layer(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, relu, False)[1]


def stack_in_one_call(input: Tensor, states: Sequence[Tensor], flat_weights: Sequence[Tensor]) -> bool:
    """Whether a fused layer stack runs as one call of _C.*_stack (csrc/bindings.cpp:
    the layers, the concatenation of directions, dropout and the finals' stacking in
    C++) instead of functional._run_stack: where the layer ops' typed bindings
    apply (_typed_call) and the input is a plain tensor."""
    return type(input) is Tensor and _typed_call((input, *states, *flat_weights))


def lstm_stack(
    input: Tensor, batch_sizes: Tensor | None, hx: Sequence[Tensor] | None, flat_weights: Sequence[Tensor],
    has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
    batch_first: bool, together: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """functional._run_stack of LSTM layers in one call (where stack_in_one_call);
    together: both directions of each layer at once; hx None: zeros, made in C++.
    Returns (output, h_n, c_n)."""
    h0, c0 = (None, None) if hx is None else hx
    output, h_n, c_n = _C.lstm_stack(
        input, batch_sizes, h0, c0, list(flat_weights), has_biases, num_layers,
        float(dropout), train, bidirectional, batch_first, together,
    )
    return output, h_n, c_n


def gru_stack(
    input: Tensor, batch_sizes: Tensor | None, hx: Tensor | None, flat_weights: Sequence[Tensor],
    has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
    batch_first: bool, together: bool,
) -> tuple[Tensor, Tensor]:
    """As lstm_stack, for GRU layers. Returns (output, h_n)."""
    output, h_n = _C.gru_stack(
        input, batch_sizes, hx, list(flat_weights), has_biases, num_layers, float(dropout), train,
        bidirectional, batch_first, together,
    )
    return output, h_n


def rnn_stack(
    input: Tensor, batch_sizes: Tensor | None, hx: Tensor | None, flat_weights: Sequence[Tensor],
    has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
    batch_first: bool, relu: bool,
) -> tuple[Tensor, Tensor]:
    """As lstm_stack, for RNN layers (whose directions run in turn). Returns (output, h_n)."""
    output, h_n = _C.rnn_stack(
        input, batch_sizes, hx, list(flat_weights), has_biases, num_layers, float(dropout), train,
        bidirectional, batch_first, relu,
    )
    return output, h_n


def _pair_call(
    op: Any, input: Tensor, batch_sizes: Tensor | None, states: Sequence[Sequence[Tensor]],
    weights: Sequence[Sequence[Tensor | None]],
) -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Calls a two-direction op (csrc/directions.cpp) with each direction's states
    and weights flattened, forward first; returns (output, final states) per direction."""
    flat_states = [*states[0], *states[1]]
    flat_weights = [*weights[0], *weights[1]]
    need_workspace = _backward_follows(input, *flat_states, *flat_weights)
    r = op(input, batch_sizes, flat_states, flat_weights, need_workspace)
    per_direction = len(r) // 2  # output and one final state per state argument
    return [(r[k], tuple(r[k + 1 : k + per_direction])) for k in (0, per_direction)]


def lstm_layer_pair(
    input: Tensor, batch_sizes: Tensor | None, states: Sequence[Sequence[Tensor]],
    weights: Sequence[Sequence[Tensor | None]],
) -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Both directions of an LSTM layer at once, a thread each (csrc/directions.cpp).
    states: (hx, cx) per direction; weights: (w_ih, w_hh, b_ih, b_hh, w_hr) per
    direction, forward first. Returns (output, (h_n, c_n)) per direction."""
    return _pair_call(torch.ops.rnnfused._lstm_layer_pair.default, input, batch_sizes, states, weights)


def gru_layer_pair(
    input: Tensor, batch_sizes: Tensor | None, states: Sequence[Sequence[Tensor]],
    weights: Sequence[Sequence[Tensor | None]],
) -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Both directions of a GRU layer at once; as `lstm_layer_pair`, with states
    (hx,) and weights (w_ih, w_hh, b_ih, b_hh) per direction."""
    return _pair_call(torch.ops.rnnfused._gru_layer_pair.default, input, batch_sizes, states, weights)


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
    """One GRU layer-direction. Returns (output [T, B, H] or [N, H], h_n [B, H])."""
    args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh)
    if _typed_call(args):  # which decides need_workspace itself, in C++
        return _C.gru_layer(*args, reverse)
    need_workspace = _backward_follows(*args)
    output, h_n, _ = torch.ops.rnnfused.gru_layer.default(*args, reverse, need_workspace)
    return output, h_n


# ----------------------------------------------------------------- fake kernels


def _sequence_shapes(
    input: Tensor, batch_sizes: Tensor | None, width: int
) -> tuple[tuple[Any, ...], Any]:
    """(shape of a sequence output with last size `width`, number of rows N)."""
    if batch_sizes is None:
        torch._check(input.dim() == 3, lambda: f"expected 'input' [T, B, I], got {input.dim()}-D")
        return (input.size(0), input.size(1), width), input.size(0) * input.size(1)
    torch._check(input.dim() == 2, lambda: f"expected packed 'input' [N, I], got {input.dim()}-D")
    return (input.size(0), width), input.size(0)


def _check_weights(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, gates: int) -> int:
    """The checks of csrc/checks.h that concern shapes; returns hidden_size."""
    for name, t in (("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh)):
        torch._check(t.dim() == 2, lambda: f"expected '{name}' to be 2-D, got {t.dim()}-D")
        torch._check(t.dtype == input.dtype, lambda: f"expected '{name}' of dtype {input.dtype}")
    torch._check(w_ih.size(0) % gates == 0, lambda: "w_ih.size(0) must be a multiple of the gates")
    torch._check(w_ih.size(1) == input.size(-1), lambda: "input.size(-1) must equal w_ih.size(1)")
    torch._check(hx.size(1) == w_hh.size(1), lambda: "hx.size(1) must equal w_hh.size(1)")
    return w_ih.size(0) // gates


if EXTENSION_LOADED:

    @torch.library.register_fake("rnnfused::rnn_layer")
    def _rnn_layer_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
        hidden = _check_weights(input, hx, w_ih, w_hh, 1)
        out_shape, _ = _sequence_shapes(input, batch_sizes, hidden)
        return input.new_empty(out_shape), hx.new_empty(hx.shape)

    @torch.library.register_fake("rnnfused::lstm_layer")
    def _lstm_layer_fake(
        input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need_workspace
    ):
        hidden = _check_weights(input, hx, w_ih, w_hh, 4)
        out_shape, rows = _sequence_shapes(input, batch_sizes, hx.size(1))
        return (
            input.new_empty(out_shape),
            hx.new_empty(hx.shape),
            cx.new_empty(cx.shape),
            input.new_empty(rows, 4 * hidden) if need_workspace else input.new_empty(0),
            input.new_empty(rows, hidden) if need_workspace else input.new_empty(0),
        )

    @torch.library.register_fake("rnnfused::gru_layer")
    def _gru_layer_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace):
        hidden = _check_weights(input, hx, w_ih, w_hh, 3)
        out_shape, rows = _sequence_shapes(input, batch_sizes, hidden)
        workspace = input.new_empty(rows, 4 * hidden) if need_workspace else input.new_empty(0)
        return input.new_empty(out_shape), hx.new_empty(hx.shape), workspace

    def _grads_fake(like: dict[str, Tensor | None], mask) -> list[Tensor]:
        """A backward op's gradients: the shape of each input in `like` (in
        output_mask's order) where the mask asks for it, else [0]."""
        empty = like["input"].new_empty(0)
        return [t.new_empty(t.shape) if wanted and t is not None else empty
                for t, wanted in zip(like.values(), mask)]

    def _params_like(input, hx, w_ih, w_hh, *w_hr) -> dict[str, Tensor | None]:
        """What each gradient is shaped like, in output_mask's order; w_hr for LSTM only."""
        bias = w_ih.new_empty(w_ih.size(0))
        like = dict(input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=bias, b_hh=bias)
        return {**like, "w_hr": w_hr[0]} if w_hr else like

    @torch.library.register_fake("rnnfused::rnn_layer_backward")
    def _rnn_layer_backward_fake(
        grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse,
        output_mask,
    ):
        like = _params_like(input, hx, w_ih, w_hh)
        return tuple(_grads_fake(like, output_mask))

    @torch.library.register_fake("rnnfused::gru_layer_backward")
    def _gru_layer_backward_fake(
        grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, output, workspace, reverse,
        output_mask,
    ):
        like = _params_like(input, hx, w_ih, w_hh)
        return tuple(_grads_fake(like, output_mask))

    @torch.library.register_fake("rnnfused::lstm_layer_backward")
    def _lstm_layer_backward_fake(
        grad_output, grad_h_n, grad_c_n, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, output,
        gates, cells, reverse, output_mask,
    ):
        like = _params_like(input, hx, w_ih, w_hh, w_hr)
        grads = _grads_fake(like, output_mask)
        cx_grad = cx.new_empty(cx.shape) if output_mask[1] else input.new_empty(0)
        return (*grads[:2], cx_grad, *grads[2:])


# ----------------------------------------------------------------- double backward

# The ops' autograd is C++ (csrc/autograd.cpp). When a backward is itself
# recorded (create_graph=True), it calls these ops instead of the fused backward
# ops, which are not differentiable.


def _graph_grads(layer: Any, args: tuple, grads: tuple, needs: list[bool]) -> list[Tensor]:
    """Gradients on the layer op's arguments, recorded for double backward: the
    layer recomputed with `reference.<kind>_layer` on `args` (the op's arguments
    up to the ones the reference takes) and differentiated with create_graph.
    One tensor per entry of `needs` (an empty one where it is False)."""
    wrt = [i for i, need in enumerate(needs) if need]
    outputs = layer(*args)
    pairs = [(out, g) for out, g in zip(outputs, grads) if out.requires_grad]
    found = torch.autograd.grad(
        [out for out, _ in pairs], [args[i] for i in wrt], [g for _, g in pairs],
        create_graph=True, allow_unused=True,
    )
    result = [grads[0].new_empty(0)] * len(needs)
    for i, grad in zip(wrt, found):
        result[i] = grad if grad is not None else torch.zeros_like(args[i])
    return result


if EXTENSION_LOADED:

    @torch.library.impl("rnnfused::_lstm_layer_backward_graph", "CompositeImplicitAutograd")
    def _lstm_layer_backward_graph(
        grad_output, grad_h_n, grad_c_n, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
        w_hr, reverse, needs,
    ):
        args = (input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        return _graph_grads(reference.lstm_layer, args, (grad_output, grad_h_n, grad_c_n), needs)

    @torch.library.impl("rnnfused::_gru_layer_backward_graph", "CompositeImplicitAutograd")
    def _gru_layer_backward_graph(
        grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, needs
    ):
        args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse)
        return _graph_grads(reference.gru_layer, args, (grad_output, grad_h_n), needs)

    @torch.library.impl("rnnfused::_rnn_layer_backward_graph", "CompositeImplicitAutograd")
    def _rnn_layer_backward_graph(
        grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse,
        needs,
    ):
        args = (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)
        return _graph_grads(reference.rnn_layer, args, (grad_output, grad_h_n), needs)
