"""One call per layer stack, with torch.nn's argument checks and the choice of
backend: the fused ops (``rnnfused.ops``) where a kernel exists for the tensor's
device and dtype, else the pure-PyTorch ``rnnfused.reference`` with one warning.

``rnn``, ``lstm`` and ``gru`` take the arguments of ``torch._VF.rnn_tanh / lstm /
gru`` (the calls torch.nn's modules make), so the modules stay thin.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from rnnfused import ops, reference

# Storage dtypes the fused kernels run (accumulating in float32 for 16-bit types).
_FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_KERNELS = {device_type: ops.has_kernel(device_type) for device_type in _FUSED_DTYPES}
_force_reference = False
_warned: set[tuple[str, torch.dtype]] = set()


@contextlib.contextmanager
def reference_mode() -> Iterator[None]:
    """Inside this context every call takes the pure-PyTorch reference path."""
    global _force_reference
    previous, _force_reference = _force_reference, True
    try:
        yield
    finally:
        _force_reference = previous


def backend_for(device: torch.device | str, dtype: torch.dtype) -> str:
    """'fused' or 'reference': the path a tensor of this device and dtype takes."""
    device_type = torch.device(device).type
    if _force_reference or not _KERNELS.get(device_type, False):
        return "reference"
    return "fused" if dtype in _FUSED_DTYPES[device_type] else "reference"


def backend_info(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """Without arguments: a dict of what is compiled and which path every device
    and dtype takes. With a device and dtype: 'fused' or 'reference'."""
    if device is not None:
        return backend_for(device, dtype if dtype is not None else torch.get_default_dtype())
    return {
        "extension": ops.EXTENSION_LOADED,
        "extension_error": ops.EXTENSION_ERROR,
        "cpu": _KERNELS["cpu"],
        "cuda": _KERNELS["cuda"],
        "reference_mode": _force_reference,
        "paths": {
            device_type: {str(dtype): backend_for(device_type, dtype) for dtype in dtypes}
            for device_type, dtypes in _FUSED_DTYPES.items()
        },
    }


def empty_cache() -> None:
    """Frees the CPU buffers rnnfused keeps for reuse. The layers' large per-call
    buffers (from 4 MB: outputs, saved workspaces, the backward's gradients) go to a
    cache when their tensors are freed, up to RNNFUSED_CPU_CACHE_MB (default 1024,
    0: no cache), so the next call of the same sizes skips the page faults and the
    kernel's clearing of fresh memory; this hands them back to the system, as
    torch.cuda.empty_cache() does for CUDA's cache. The buffers still in use stay."""
    if ops.EXTENSION_LOADED:
        torch.ops.rnnfused.cpu_cache_clear()


def _use_fused(input: Tensor) -> bool:
    # backend_for's answer without building a torch.device (a cell step calls this)
    device_type = "cpu" if input.is_cpu else "cuda" if input.is_cuda else None
    if device_type is not None and not _force_reference and _KERNELS[device_type] and (
        input.dtype in _FUSED_DTYPES[device_type]
    ):
        return True
    if backend_for(input.device, input.dtype) == "fused":
        return True
    key = (input.device.type, input.dtype)
    # meta tensors carry shapes only: nothing runs, on either path
    if not _force_reference and key not in _warned and input.device.type != "meta":
        _warned.add(key)
        reason = ops.EXTENSION_ERROR or f"no fused kernel for {input.device.type} {input.dtype}"
        warnings.warn(
            f"rnnfused: running the pure-PyTorch reference path ({reason})", stacklevel=4
        )
    return False


# ----------------------------------------------------------------- checks

# ATen's ScalarType names, as its messages print them.
_DTYPE_NAMES = {
    torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}
# The C++ type names that mm's dtype check prints.
_CPP_DTYPE_NAMES = {
    torch.float64: "double", torch.float32: "float", torch.float16: "c10::Half",
    torch.bfloat16: "c10::BFloat16",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _check_same_dtype(mat1: Tensor, mat2: Tensor, biased: bool) -> None:
    """torch.nn's error when a state or input dtype differs from the weights': ATen's
    linear runs addmm where the product has a bias, mm where it has none, and the
    two word it differently."""
    if mat1.dtype == mat2.dtype:
        return
    if biased:
        raise RuntimeError(
            "mat1 and mat2 must have the same dtype, but got "
            f"{_dtype_name(mat1.dtype)} and {_dtype_name(mat2.dtype)}"
        )
    names = [_CPP_DTYPE_NAMES.get(t.dtype, _dtype_name(t.dtype)) for t in (mat1, mat2)]
    raise RuntimeError(
        f"expected m1 and m2 to have the same dtype, but got: {names[0]} != {names[1]}"
    )


def _check_stack_args(
    input: Tensor, hiddens: Sequence[Tensor], weights: Sequence[Tensor], time_dim: int | None,
    has_biases: bool,
) -> None:
    """ATen's checks in _VF.rnn_* / lstm / gru that the modules don't make.
    time_dim: the time dimension of dense input, None for packed."""
    if time_dim is not None and input.size(time_dim) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if input.size(-1) != weights[0].size(1):  # reached by packed LSTM input, unchecked by torch.nn
        rows = input.numel() // max(input.size(-1), 1)
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.size(-1)} and "
            f"{weights[0].size(1)}x{weights[0].size(0)})"
        )
    if not (input.is_cpu and _all_cpu(hiddens) and _all_cpu(weights)):
        _check_same_device(input, hiddens, weights)
    for hidden in hiddens:
        _check_same_dtype(hidden, weights[0], has_biases)
    # reached by packed LSTM input (torch.nn checks the others); ATen's step multiplies
    # the state before the input, so a state's mismatch is the one reported
    _check_same_dtype(input, weights[0], has_biases)


def _all_cpu(tensors: Sequence[Tensor]) -> bool:
    """Whether every tensor is on the CPU, without building a torch.device per tensor
    (a small layer's call pays for every attribute read of its checks)."""
    for t in tensors:
        if not t.is_cpu:
            return False
    return True


def _check_same_device(input: Tensor, hiddens: Sequence[Tensor], weights: Sequence[Tensor]) -> None:
    """ATen's errors for a state or a parameter on another device than the input."""
    device = input.device
    for hidden in hiddens:
        if hidden.device != device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {hidden.device}"
            )
    for weight in weights:
        if weight.device != device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {weight.device}"
            )


def _check_packed_lstm_batch(batch_sizes: Tensor, hx: Tensor, gate_rows: int) -> None:
    """torch.nn leaves a packed LSTM's state batch unchecked; ATen's step then
    fails on adding the gates. The same errors, raised before any work."""
    if torch.compiler.is_compiling():
        # batch_sizes[0] is data to the compiler: a runtime assert, not a guard. The
        # message is a constant: dynamo before torch 2.13 can't trace a closure there.
        torch._check(
            hx.size(1) == batch_sizes[0].item(),
            lambda: "The size of tensor a (hx.size(1)) must match the size of tensor b "
            "(batch_sizes[0]) at non-singleton dimension 0",
        )
        return
    batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
    if hx.size(1) == batch:
        return
    if hx.size(1) == 1:
        raise RuntimeError(
            f"output with shape [1, {gate_rows}] doesn't match the broadcast shape [{batch}, {gate_rows}]"
        )
    raise RuntimeError(
        f"The size of tensor a ({hx.size(1)}) must match the size of tensor b ({batch}) "
        "at non-singleton dimension 0"
    )


def _time_dim(batch_sizes: Tensor | None, batch_first: bool) -> int | None:
    if batch_sizes is not None:
        return None
    return 1 if batch_first else 0


def _initial_state(
    input: Tensor, batch_sizes: Tensor | None, batch_first: bool, num_layers: int,
    bidirectional: bool, size: int,
) -> Tensor:
    """torch.nn's initial state where none is given: zeros [L*D, B, size] in the
    input's dtype, B the dense input's batch or batch_sizes[0]. (The one-call path
    makes them in C++ instead: _C.*_stack's initial_state.)"""
    slots = num_layers * (2 if bidirectional else 1)
    batch = batch_sizes[0] if batch_sizes is not None else input.size(0 if batch_first else 1)
    return torch.zeros(slots, batch, size, dtype=input.dtype, device=input.device)


def _lstm_initial_states(
    input: Tensor, batch_sizes: Tensor | None, flat_weights: Sequence[Tensor], num_layers: int,
    bidirectional: bool, batch_first: bool,
) -> tuple[Tensor, Tensor]:
    """(h0, c0) of zeros: [L*D, B, P] and [L*D, B, H] (w_hh [4H, P]); one tensor for
    both without a projection (the ops only read them)."""
    hidden, output = flat_weights[1].size(0) // 4, flat_weights[1].size(1)
    c0 = _initial_state(input, batch_sizes, batch_first, num_layers, bidirectional, hidden)
    if output == hidden:
        return c0, c0
    return _initial_state(input, batch_sizes, batch_first, num_layers, bidirectional, output), c0


def _single_initial_state(
    input: Tensor, batch_sizes: Tensor | None, flat_weights: Sequence[Tensor], num_layers: int,
    bidirectional: bool, batch_first: bool,
) -> Tensor:
    """A GRU or RNN stack's h0 of zeros, [L*D, B, H] (w_hh [G*H, H])."""
    return _initial_state(input, batch_sizes, batch_first, num_layers, bidirectional,
                          flat_weights[1].size(1))


# ----------------------------------------------------------------- autocast

# The dtypes torch.autocast casts (float64 and the rest it leaves alone).
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(input: Tensor) -> torch.dtype | None:
    """The dtype torch.autocast runs a recurrent call in, as it does the matmuls;
    None when autocast is off for the input's device or leaves its dtype alone."""
    if not torch._C._is_any_autocast_enabled():  # the common case, in a tenth of the time
        return None
    device_type = input.device.type
    if input.dtype not in _AUTOCAST_ELIGIBLE or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _stack_autocast_dtype(input: Tensor) -> torch.dtype | None:
    """_autocast_dtype for the layer stacks (RNN, LSTM, GRU; not the cells). On CUDA,
    where cuDNN takes the input (float32, float16, float64, cuDNN enabled), torch.nn
    runs cuDNN under autocast in float16 whatever the autocast dtype (ATen's
    cudnn/AutocastRNN.cpp casts to kHalf): so does rnnfused, for the same dtypes."""
    low = _autocast_dtype(input)
    if low is not None and input.is_cuda and torch.backends.cudnn.is_acceptable(input):
        return torch.float16
    return low


def _cast(tensors: Sequence[Tensor | None], dtype: torch.dtype) -> list[Any]:
    """autocast's cast of the arguments: eligible tensors to `dtype`, others as they are."""
    return [t.to(dtype) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t for t in tensors]


def _carried_dtype(low: torch.dtype, state: Tensor) -> torch.dtype:
    """torch.nn's dtype under autocast for a state updated outside the matmuls
    (GRU's h, LSTM's c, and h = o * tanh(c)). On CUDA, cuDNN and the autocast cell
    ops run wholly in `low`; elsewhere the update promotes `low` with the dtype of
    the incoming state (float32 where it is the default zeros)."""
    return low if state.device.type == "cuda" else torch.promote_types(low, state.dtype)


def _onednn_lstm(input: Tensor, batch_sizes: Tensor | None, projected: bool) -> bool:
    """Whether torch.nn's LSTM runs in oneDNN here (its CPU path for dense,
    unprojected input), which autocast runs wholly in the low dtype."""
    return (
        input.device.type == "cpu" and batch_sizes is None and not projected
        and input.numel() != 0 and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


# ----------------------------------------------------------------- layer stacks

# layer(input, batch_sizes, states tuple, weights of one layer-direction, reverse)
#   -> (output, final states tuple)
LayerFn = Callable[[Tensor, "Tensor | None", tuple, Sequence[Tensor], bool], tuple[Tensor, tuple]]


# pair(input, batch_sizes, [states per direction], [weights per direction])
#   -> [(output, final states tuple) per direction]
PairFn = Callable[[Tensor, "Tensor | None", list, list], list]

# One direction's W_hh in floats up to which both directions run at once, a thread
# each: 1 MB, half of one core's L2 here. Larger, each direction on every thread
# holds only its share of W_hh per core, which is faster.
_PAIR_MAX_RECURRENT = 1 << 18


# The dtypes whose CPU layers run the persistent loops (AVX-512 for the 16-bit ones).
_PAIR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _two_threads() -> bool:
    """Whether the CPU kernels fork 2 threads: torch's 2, or more capped at the 2 CPUs
    the process may run on (torch.ops.rnnfused.cpu_threads, asked only then)."""
    threads = torch.get_num_threads()
    return threads == 2 or (threads > 2 and torch.ops.rnnfused.cpu_threads() == 2)


def _directions_together(input: Tensor, w_hh: Tensor) -> bool:
    """Whether both directions of a layer run at once, a thread each
    (csrc/directions.cpp): eager CPU float32, bfloat16 or float16 on exactly 2 threads,
    torch's or, with more, the CPU kernels' where the process may run on 2 CPUs only
    (cpu_threads; else each direction in turn gets them all: one thread each was
    measured to pay on 2 only), W_hh small enough, and
    nothing that would run Python inside the threads: modes, tensor subclasses,
    saved-tensor hooks (activation checkpointing, save_on_cpu), anomaly mode."""
    # A traced graph keeps one op per direction (torch.compile; torch.jit.trace can't
    # record the pair ops' Tensor?[] argument).
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    return (
        input.is_cpu and input.dtype in _PAIR_DTYPES and type(input) is Tensor
        and w_hh.numel() <= _PAIR_MAX_RECURRENT and _two_threads()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
        and not torch.is_anomaly_enabled()
    )


def _run_stack(
    layer: LayerFn,
    input: Tensor,
    batch_sizes: Tensor | None,
    states: tuple[Tensor, ...],
    flat_weights: Sequence[Tensor],
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    pair: PairFn | None = None,
    own_output: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Runs the layers over time, both directions of a layer on the same input
    with outputs concatenated (reverse last), dropout between layers in training
    as torch.nn does it (torch.dropout on each non-last layer's output).
    states: each [num_layers * directions, B, *]. pair: runs both directions of a
    layer together, where `_directions_together` says it pays (the fused path only).
    own_output: return an output of the stack's own, as torch.nn's GRU and RNN do
    on the CPU, and its LSTM wherever oneDNN doesn't run it (float64, proj_size,
    packed input: ATen concatenates the steps' states; a batch_first output is that
    tensor transposed in place, not a view): programs modify it in place (`out += x`,
    `relu_`, in-place dropout, `output.detach_()`) and still call backward. A fused
    layer op's backward keeps a copy of the output it returns (csrc/autograd.cpp),
    so the op's output is the caller's to change. A compiled or traced batch_first
    output is a view."""
    directions = 2 if bidirectional else 1
    per_layer = len(flat_weights) // (num_layers * directions)
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)
    finals: list[list[Tensor]] = [[] for _ in states]
    layer_input = input
    for index in range(num_layers):
        slots = [index * directions + direction for direction in range(directions)]
        layer_states = [tuple(s[slot] for s in states) for slot in slots]
        layer_weights = [flat_weights[slot * per_layer : (slot + 1) * per_layer] for slot in slots]
        if pair is not None and directions == 2 and _directions_together(layer_input, layer_weights[0][1]):
            results = pair(layer_input, batch_sizes, layer_states, layer_weights)
        else:
            results = [
                layer(layer_input, batch_sizes, layer_states[d], layer_weights[d], d == 1)
                for d in range(directions)
            ]
        outputs = []
        for output, final in results:
            outputs.append(output)
            for collected, state in zip(finals, final):
                collected.append(state)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout != 0 and train and index < num_layers - 1:
            layer_input = torch.dropout(layer_input, dropout, True)
    output = layer_input
    if own_output:
        if batch_first and batch_sizes is None:
            if torch.jit.is_tracing() or torch.compiler.is_compiling():
                output = output.transpose(0, 1)
            else:
                output.transpose_(0, 1)  # no view: output.detach_() works on it
    elif batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    # Stacked even for one layer-direction, as ATen does: programs detach the final
    # states in place (h_n.detach_()), which a view would refuse.
    return output, tuple(torch.stack(collected, 0) for collected in finals)


def _split_weights(weights: Sequence[Tensor], has_biases: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer-direction."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_biases else (None, None)
    w_hr = weights[4 if has_biases else 2] if len(weights) > (4 if has_biases else 2) else None
    return w_ih, w_hh, b_ih, b_hh, w_hr


def lstm(
    input: Tensor,
    hx: Sequence[Tensor] | None,
    flat_weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    batch_sizes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM stack. input [T, B, I] ([B, T, I] if batch_first) or packed data [N, I]
    with batch_sizes; hx = (h0 [L*D, B, P], c0 [L*D, B, H]), or None for zeros.
    Returns (output, h_n [L*D, B, P], c_n [L*D, B, H]).
    Under torch.autocast it runs in torch.nn's dtype (_stack_autocast_dtype) and
    returns torch.nn's dtypes."""
    low = _stack_autocast_dtype(input)
    if low is not None:
        if hx is None:  # torch.nn's zeros, in the input's dtype, set the carried dtype
            hx = _lstm_initial_states(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)
        per_layer = len(flat_weights) // (num_layers * (2 if bidirectional else 1))
        projected = per_layer == (5 if has_biases else 3)
        c_dtype = low if _onednn_lstm(input, batch_sizes, projected) else _carried_dtype(low, hx[1])
        h_dtype = low if projected else c_dtype
        input, *hx = _cast((input, *hx), low)
        flat_weights = _cast(flat_weights, low)
    states = () if hx is None else hx
    _check_stack_args(input, states, flat_weights, _time_dim(batch_sizes, batch_first), has_biases)
    if batch_sizes is not None and hx is not None:
        _check_packed_lstm_batch(batch_sizes, hx[0], flat_weights[0].size(0))
    fused = _use_fused(input)
    if fused and ops.stack_in_one_call(input, states, flat_weights):
        together = bidirectional and _directions_together(input, flat_weights[1])
        output, h_n, c_n = ops.lstm_stack(
            input, batch_sizes, hx, flat_weights, has_biases, num_layers, dropout, train,
            bidirectional, batch_first, together,
        )
    else:
        if hx is None:
            hx = _lstm_initial_states(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)

        def layer(x, batch_sizes, states, weights, reverse):
            w_ih, w_hh, b_ih, b_hh, w_hr = _split_weights(weights, has_biases)
            fn = ops.lstm_layer if fused else reference.lstm_layer
            output, h_n, c_n = fn(x, batch_sizes, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
            return output, (h_n, c_n)

        def pair(x, batch_sizes, states, weights):
            return ops.lstm_layer_pair(
                x, batch_sizes, states, [_split_weights(w, has_biases) for w in weights]
            )

        output, (h_n, c_n) = _run_stack(
            layer, input, batch_sizes, tuple(hx), flat_weights, num_layers, dropout, train,
            bidirectional, batch_first, pair if fused else None, own_output=fused,
        )
    if low is not None:
        return output.to(h_dtype), h_n.to(h_dtype), c_n.to(c_dtype)
    return output, h_n, c_n


def gru(
    input: Tensor,
    hx: Tensor | None,
    flat_weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    batch_sizes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """GRU stack; arguments as `lstm`, hx [L*D, B, H] or None for zeros. Returns
    (output, h_n); under torch.autocast, as `lstm`."""
    low = _stack_autocast_dtype(input)
    if low is not None:
        if hx is None:
            hx = _single_initial_state(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)
        h_dtype = _carried_dtype(low, hx)
        input, hx, *flat_weights = _cast((input, hx, *flat_weights), low)
    states = () if hx is None else (hx,)
    _check_stack_args(input, states, flat_weights, _time_dim(batch_sizes, batch_first), has_biases)
    fused = _use_fused(input)
    if fused and ops.stack_in_one_call(input, states, flat_weights):
        together = bidirectional and _directions_together(input, flat_weights[1])
        output, h_n = ops.gru_stack(
            input, batch_sizes, hx, flat_weights, has_biases, num_layers, dropout, train,
            bidirectional, batch_first, together,
        )
    else:
        if hx is None:
            hx = _single_initial_state(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)

        def layer(x, batch_sizes, states, weights, reverse):
            w_ih, w_hh, b_ih, b_hh, _ = _split_weights(weights, has_biases)
            fn = ops.gru_layer if fused else reference.gru_layer
            output, h_n = fn(x, batch_sizes, states[0], w_ih, w_hh, b_ih, b_hh, reverse)
            return output, (h_n,)

        def pair(x, batch_sizes, states, weights):
            return ops.gru_layer_pair(
                x, batch_sizes, states, [_split_weights(w, has_biases)[:4] for w in weights]
            )

        output, (h_n,) = _run_stack(
            layer, input, batch_sizes, (hx,), flat_weights, num_layers, dropout, train,
            bidirectional, batch_first, pair if fused else None, own_output=fused,
        )
    if low is not None:
        return output.to(h_dtype), h_n.to(h_dtype)
    return output, h_n


def rnn(
    input: Tensor,
    hx: Tensor | None,
    flat_weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    batch_sizes: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """Elman RNN stack (tanh or relu); arguments as `gru`. Returns (output, h_n),
    in the autocast dtype under torch.autocast (h' = act(matmuls), as torch.nn's)."""
    low = _stack_autocast_dtype(input)
    if low is not None:
        if hx is None:
            hx = _single_initial_state(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)
        input, hx, *flat_weights = _cast((input, hx, *flat_weights), low)
    states = () if hx is None else (hx,)
    _check_stack_args(input, states, flat_weights, _time_dim(batch_sizes, batch_first), has_biases)
    fused = _use_fused(input)
    relu = nonlinearity == "relu"
    if fused and ops.stack_in_one_call(input, states, flat_weights):
        return ops.rnn_stack(
            input, batch_sizes, hx, flat_weights, has_biases, num_layers, dropout, train,
            bidirectional, batch_first, relu,
        )
    if hx is None:
        hx = _single_initial_state(input, batch_sizes, flat_weights, num_layers, bidirectional, batch_first)

    def layer(x, batch_sizes, states, weights, reverse):
        w_ih, w_hh, b_ih, b_hh, _ = _split_weights(weights, has_biases)
        fn = ops.rnn_layer if fused else reference.rnn_layer
        output, h_n = fn(x, batch_sizes, states[0], w_ih, w_hh, b_ih, b_hh, relu, reverse)
        return output, (h_n,)

    output, (h_n,) = _run_stack(
        layer, input, batch_sizes, (hx,), flat_weights, num_layers, dropout, train,
        bidirectional, batch_first, own_output=fused,
    )
    return output, h_n


# ----------------------------------------------------------------- cells


def _product_device_error(
    input: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
    b_hh: Tensor | None, bias_in_cuda_products: bool,
) -> RuntimeError | None:
    """ATen's error for the first of a cell's products, input @ w_ih^T then h @ w_hh^T,
    whose arguments are on a CUDA device and another: through linear (addmm with a
    bias, mm without), except that the LSTM and GRU cells take the biases out of the
    products for a CUDA input (bias_in_cuda_products=False). Read from torch.nn on an
    H200 for every mix of the module's, the input's and the state's devices."""
    for x, w, b in ((input, w_ih, b_ih), (h, w_hh, b_hh)):
        if b is not None and (bias_in_cuda_products or not input.is_cuda):
            if x.device == b.device and w.device == b.device:
                continue
            name, other = ("mat1", x) if x.device != b.device else ("mat2", w)
            common, op = b, "addmm"
        elif x.device != w.device:
            name, other, common, op = "mat2", w, x, "mm"
        else:
            continue
        if "cuda" not in (other.device.type, common.device.type):
            return None
        return RuntimeError(
            f"Expected all tensors to be on the same device, but got {name} is on {other.device}, "
            f"different from other tensors on {common.device} (when checking argument in method "
            f"wrapper_CUDA_{op})"
        )
    return None


def _check_cell(
    input: Tensor, hiddens: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
    b_ih: Tensor | None, b_hh: Tensor | None, bias_in_cuda_products: bool = True,
) -> None:
    """ATen's checks in _VF.*_cell, with its messages. (Shapes read once: a cell
    step in a Python loop pays for every attribute read here.)"""
    batch, features = input.shape
    state_features = w_hh.shape[1]
    if features != w_ih.shape[1]:
        raise RuntimeError(
            f"input has inconsistent input_size: got {features} expected {w_ih.shape[1]}"
        )
    for label, hidden in enumerate(hiddens):
        hidden_shape = hidden.shape
        if batch != hidden_shape[0]:
            raise RuntimeError(
                f"Input batch size {batch} doesn't match hidden{label} batch size "
                f"{hidden_shape[0]}"
            )
        if len(hidden_shape) < 2:  # a 1-D state with batched input: ATen reads its size(1)
            raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
        if hidden_shape[1] != state_features:
            raise RuntimeError(
                f"hidden{label} has inconsistent hidden_size: got {hidden_shape[1]}, "
                f"expected {state_features}"
            )
    _check_same_dtype(input, w_ih, b_ih is not None)
    for hidden in hiddens:
        _check_same_dtype(hidden, w_hh, b_hh is not None)
    if input.is_cpu and _all_cpu(hiddens) and w_ih.is_cpu and w_hh.is_cpu:
        return
    device = input.device
    for t in (*hiddens, w_ih, w_hh):
        if t.device != device:
            error = _product_device_error(input, hiddens[0], w_ih, w_hh, b_ih, b_hh, bias_in_cuda_products)
            if error is not None:
                raise error
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{input.device} and {t.device}!"
            )


def _cell_step(
    fused: Callable[..., Any], ref: Callable[..., Any],
    checked: tuple,
    *args: Any,
) -> Any:
    """A cell step: `fused` (ops.*_cell, the layer op on a one-step sequence) or, off
    the fused path, `ref` on `args`, with
    torch.nn's argument checks on checked = _check_cell's arguments. The fused
    op checks every shape, dtype and device itself, so a step pays for _check_cell
    only when the op raises: it then raises torch.nn's error where torch.nn has one
    (else the op's error stands). The reference path is checked up front."""
    if not _use_fused(checked[0]):
        _check_cell(*checked)
        return ref(*args)
    try:
        return fused(*args)
    except RuntimeError:
        _check_cell(*checked)
        raise


# The reference path's cell steps, with ops.*_cell's arguments: the layer on a
# one-step sequence.
def _reference_lstm_cell(
    input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
    b_ih: Tensor | None, b_hh: Tensor | None,
) -> tuple[Tensor, Tensor]:
    _, h, c = reference.lstm_layer(input.unsqueeze(0), None, hx, cx, w_ih, w_hh, b_ih, b_hh, None, False)
    return h, c


def _reference_gru_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
) -> Tensor:
    return reference.gru_layer(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, False)[1]


def _reference_rnn_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
    relu: bool,
) -> Tensor:
    return reference.rnn_layer(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, relu, False)[1]


def lstm_cell(
    input: Tensor,
    hx: Sequence[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step: input [B, I], hx = (h [B, H], c [B, H]). Returns (h', c')."""
    low = _autocast_dtype(input)
    if low is not None:
        dtype = _carried_dtype(low, hx[1])
        input, *hx, w_ih, w_hh, b_ih, b_hh = _cast((input, *hx, w_ih, w_hh, b_ih, b_hh), low)
    h, c = _cell_step(ops.lstm_cell, _reference_lstm_cell, (input, hx, w_ih, w_hh, b_ih, b_hh, False),
                      input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    if low is not None:
        return h.to(dtype), c.to(dtype)
    return h, c


def gru_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
    b_ih: Tensor | None = None, b_hh: Tensor | None = None,
) -> Tensor:
    """One GRU step: input [B, I], hx [B, H]. Returns h'."""
    low = _autocast_dtype(input)
    if low is not None:
        dtype = _carried_dtype(low, hx)
        input, hx, w_ih, w_hh, b_ih, b_hh = _cast((input, hx, w_ih, w_hh, b_ih, b_hh), low)
    h = _cell_step(ops.gru_cell, _reference_gru_cell, (input, (hx,), w_ih, w_hh, b_ih, b_hh, False),
                   input, hx, w_ih, w_hh, b_ih, b_hh)
    return h if low is None else h.to(dtype)


def rnn_cell(
    input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
    b_ih: Tensor | None = None, b_hh: Tensor | None = None, nonlinearity: str = "tanh",
) -> Tensor:
    """One RNN step (tanh or relu): input [B, I], hx [B, H]. Returns h', in the
    autocast dtype under torch.autocast."""
    low = _autocast_dtype(input)
    if low is not None:
        input, hx, w_ih, w_hh, b_ih, b_hh = _cast((input, hx, w_ih, w_hh, b_ih, b_hh), low)
    return _cell_step(ops.rnn_cell, _reference_rnn_cell, (input, (hx,), w_ih, w_hh, b_ih, b_hh),
                      input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu")
