"""Drop-in subclasses of torch.nn's recurrent modules.

Everything but the computation is inherited: constructor, parameters and their
names, ``state_dict``, ``repr``, ``flatten_parameters``, pickling, the shape
checks and their messages. ``forward`` follows torch.nn's control flow (input
forms, default states, checks, PackedSequence sorting) and calls
``rnnfused.functional`` where torch.nn calls ``torch._VF``.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from rnnfused import _dynamo, _quantization
from rnnfused import functional as RF

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert"]


def _zeros(module: nn.RNNBase, batch: Any, size: int, like: Tensor) -> Tensor:
    directions = 2 if module.bidirectional else 1
    return torch.zeros(
        module.num_layers * directions, batch, size, dtype=like.dtype, device=like.device
    )


def _lstm_zeros(module: nn.LSTM, batch: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """An LSTM's (h0, c0) of zeros; one tensor for both without a projection (the ops
    only read them: a second torch.zeros was ~3 us of a small layer's ~160 us call)."""
    c0 = _zeros(module, batch, module.hidden_size, like)
    if module.proj_size == 0:
        return c0, c0
    return _zeros(module, batch, module.proj_size, like), c0


# torch.nn's own check_forward_args (nn.GRU and nn.RNN take RNNBase's).
_TORCH_NN_FORWARD_CHECKS = (nn.RNNBase.check_forward_args, nn.LSTM.check_forward_args)


def _state_left_to_op(module: nn.RNNBase) -> bool:
    """Whether a dense call without a state leaves the zeros to the op (RF.* with hx
    None: _C.*_stack makes them, ~7 us less than torch.zeros here in a small layer's
    call) and runs only check_input: torch.nn's check_forward_args, which its own
    zeros always pass, is the module's. A subclass's own check_forward_args gets
    the zeros, as under torch.nn."""
    return type(module).check_forward_args in _TORCH_NN_FORWARD_CHECKS


def _onnx_exporting() -> bool:
    """Whether torch.onnx.export is running (either exporter); torch.onnx is imported
    by then, and is not looked up otherwise."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def _torch_nn_runs(weights: Any) -> bool:
    """Whether a call runs torch.nn's own forward instead of the fused ops: under
    torch.func transforms (grad, vmap, jacrev, ...), which the ops' C++ autograd does
    not support, and when a weight is a tensor subclass with __torch_function__
    (Expanded Weights, for per-sample gradients), which torch.nn's _VF calls handle
    by decomposition. Under torch.onnx.export too, which has ONNX's LSTM/GRU/RNN for
    torch.nn's ops and nothing for rnnfused's (its exporters trace, or compile, the
    call). Inside a forward-mode AD level (torch.autograd.forward_ad.dual_level) too:
    the ops' C++ autograd has no forward derivatives, torch.nn's ops do. Never
    otherwise while torch.compile traces (its tensors are neither)."""
    if torch.compiler.is_compiling():
        return _onnx_exporting()
    if torch._C._is_tracing() and _onnx_exporting():
        return True
    return (
        torch._C._are_functorch_transforms_active() or torch._C._has_torch_function(weights)
        or forward_ad._current_level >= 0
    )


def _fx_leaf(module: nn.Module, input: Any, hx: Any) -> Any:
    """Under torch.fx.symbolic_trace: one call_module node, as fx makes for torch.nn's
    own modules (its tracer keeps modules from torch.nn whole; an rnnfused module
    would be traced into, and its input checks are control flow on a Proxy). The
    traced GraphModule then calls the module, on the fused kernels. None otherwise."""
    if not isinstance(input, torch.fx.Proxy):
        return None
    tracer = input.tracer
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


class _ScriptsAsTorchNN:
    """torch.jit.script compiles torch.nn's class over the same parameters
    (TorchScript cannot compile the fused forward; scripting is deprecated and runs
    torch.nn's kernels, not rnnfused's)."""

    def __prepare_scriptable__(self) -> nn.Module:
        twin = copy.copy(self)
        twin.__class__ = next(cls for cls in type(self).__mro__ if cls in _TWINS)
        return twin


def _check_packed_args_traced(module: nn.RNNBase, input: Tensor, hx: Tensor, batch_sizes: Tensor) -> None:
    """check_forward_args for packed input while torch.compile traces: the state's
    batch must equal batch_sizes[0], which is data to the compiler, so that one
    comparison is a runtime assert (torch._check) instead of a guard, which would
    fail the trace. The other checks and messages are torch.nn's."""
    module.check_input(input, batch_sizes)
    expected = module.get_expected_hidden_size(input, batch_sizes)
    if hx.dim() != 3 or hx.size(0) != expected[0] or hx.size(2) != expected[2]:
        raise RuntimeError(f"Expected hidden size {tuple(expected)}, got {list(hx.size())}")
    # A constant message: dynamo before torch 2.13 can't trace a closure there.
    torch._check(
        hx.size(1) == expected[1],
        lambda: "Expected hidden size (layers * directions, batch_sizes[0], hidden size), "
        "got another batch size",
    )


_ABSENT = object()


def _weight(module: nn.Module, name: str) -> Tensor | None:
    """module.<name>, read straight from `_parameters` where it is a plain parameter
    (a fraction of nn.Module.__getattr__'s cost, paid on every call), through getattr
    where a parametrization or functional_call supplies it; None where absent."""
    weight = module._parameters.get(name, _ABSENT)  # a parameter registered as None stays None
    return weight if weight is not _ABSENT else getattr(module, name, None)


class _FlatWeights:
    """torch.nn's check that the flat weights still are the module's weights
    (parametrizations, torch.func.functional_call, reassigned parameters), with
    plain parameters read straight from `_parameters`. Any other weight is read as
    torch.nn reads it (hasattr, then getattr, up to the first change), so that a
    parametrization with side effects (spectral_norm's power iteration) runs as
    often per forward as under torch.nn."""

    def _weights_have_changed(self) -> bool:
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            weight = self._parameters.get(name, _ABSENT)
            if weight is _ABSENT:
                weight = getattr(self, name) if hasattr(self, name) else None
            if weight is not None and ref is not None and ref() is not weight:
                return True
        return False


class _SingleStateStack(_FlatWeights, _ScriptsAsTorchNN):
    """forward() of RNN and GRU: one state tensor hx [L*D, B, H]."""

    _dim_error: str  # torch.nn's wording differs between RNN and GRU

    def forward(self, input, hx=None):
        traced = _fx_leaf(self, input, hx)
        if traced is not None:
            return traced
        self._update_flat_weights()
        if _torch_nn_runs(self._flat_weights):
            return super().forward(input, hx)
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = _zeros(self, batch_sizes[0], self.hidden_size, input)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(self._dim_error.format(input.dim()))
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            sorted_indices = unsorted_indices = None
            if hx is None and not _state_left_to_op(self):
                hx = _zeros(self, input.size(0) if self.batch_first else input.size(1), self.hidden_size, input)
        if hx is None:
            self.check_input(input, batch_sizes)
        elif batch_sizes is not None and torch.compiler.is_compiling():
            _check_packed_args_traced(self, input, hx, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)
        output, hidden = self._stack(input, hx, batch_sizes)
        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class RNN(_SingleStateStack, nn.RNN):
    """torch.nn.RNN on fused kernels (tanh or relu). Same arguments and results."""

    _dim_error = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"

    def _stack(self, input: Tensor, hx: Tensor, batch_sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.mode not in ("RNN_TANH", "RNN_RELU"):
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        return RF.rnn(
            input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
            self.training, self.bidirectional, self.batch_first, batch_sizes,
            nonlinearity="relu" if self.mode == "RNN_RELU" else "tanh",
        )


class GRU(_SingleStateStack, nn.GRU):
    """torch.nn.GRU on fused kernels. Same arguments and results."""

    _dim_error = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def _stack(self, input: Tensor, hx: Tensor, batch_sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        return RF.gru(
            input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
            self.training, self.bidirectional, self.batch_first, batch_sizes,
        )


class LSTM(_FlatWeights, _ScriptsAsTorchNN, nn.LSTM):
    """torch.nn.LSTM on fused kernels, projections included. Same arguments and results."""

    def forward(self, input, hx=None):
        traced = _fx_leaf(self, input, hx)
        if traced is not None:
            return traced
        self._update_flat_weights()
        if _torch_nn_runs(self._flat_weights):
            return super().forward(input, hx)
        orig_input = input
        batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = _lstm_zeros(self, batch_sizes[0], input)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            # torch.nn makes no module-level checks here: the op's checks apply.
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            sorted_indices = unsorted_indices = None
            if hx is None:
                if not _state_left_to_op(self):
                    hx = _lstm_zeros(self, input.size(0) if self.batch_first else input.size(1), input)
            elif is_batched:
                if hx[0].dim() != 3 or hx[1].dim() != 3:
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should also be 3-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
            else:
                if hx[0].dim() != 2 or hx[1].dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should also be 2-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            if hx is None:
                self.check_input(input, batch_sizes)
            else:
                self.check_forward_args(input, hx, batch_sizes)
        output, h_n, c_n = RF.lstm(
            input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
            self.training, self.bidirectional, self.batch_first, batch_sizes,
        )
        hidden = (h_n, c_n)
        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1))
        return output, self.permute_hidden(hidden, unsorted_indices)


_dynamo.allow_tracing((RNN, GRU, LSTM))


def _cell_input(name: str, input: Tensor, hiddens: tuple[Tensor, ...], labels: tuple[str, ...]) -> bool:
    """torch.nn's dimension checks of a cell; returns whether the input is batched."""
    dim = input.dim()
    if dim not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {dim}D instead")
    for label, hidden in zip(labels, hiddens):
        if hidden.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {hidden.dim()}D instead")
    return dim == 2


def _cell_weights(cell: nn.RNNCellBase) -> tuple[Tensor | None, ...]:
    """(weight_ih, weight_hh, bias_ih, bias_hh), each read through `_weight`."""
    return (_weight(cell, "weight_ih"), _weight(cell, "weight_hh"), _weight(cell, "bias_ih"),
            _weight(cell, "bias_hh"))


class _SingleStateCell(_ScriptsAsTorchNN):
    """forward() of RNNCell and GRUCell: one state tensor h [B, H]."""

    _name: str  # in torch.nn's messages

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        traced = _fx_leaf(self, input, hx)
        if traced is not None:
            return traced
        weights = _cell_weights(self)
        if _torch_nn_runs(weights[:2]):
            return super().forward(input, hx)
        is_batched = _cell_input(self._name, input, () if hx is None else (hx,), ("hidden",))
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        h = self._step(input, hx, *weights)
        return h if is_batched else h.squeeze(0)


class RNNCell(_SingleStateCell, nn.RNNCell):
    """torch.nn.RNNCell on the fused kernels."""

    _name = "RNNCell"

    def _step(self, input: Tensor, hx: Tensor, *weights: Tensor | None) -> Tensor:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return RF.rnn_cell(input, hx, *weights, self.nonlinearity)


class GRUCell(_SingleStateCell, nn.GRUCell):
    """torch.nn.GRUCell on the fused kernels."""

    _name = "GRUCell"

    def _step(self, input: Tensor, hx: Tensor, *weights: Tensor | None) -> Tensor:
        return RF.gru_cell(input, hx, *weights)


class LSTMCell(_ScriptsAsTorchNN, nn.LSTMCell):
    """torch.nn.LSTMCell on the fused kernels."""

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        traced = _fx_leaf(self, input, hx)
        if traced is not None:
            return traced
        w_ih, w_hh, b_ih, b_hh = _cell_weights(self)
        if _torch_nn_runs((w_ih, w_hh)):
            return super().forward(input, hx)
        is_batched = _cell_input("LSTMCell", input, () if hx is None else hx, ("hx[0]", "hx[1]"))
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = RF.lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


_TWINS: dict[type, type] = {
    nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU,
    nn.RNNCell: RNNCell, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
}
_quantization.register_dynamic(_TWINS)


def _twin_class(module: nn.Module) -> type | None:
    """The rnnfused class for `module`, or None. A module that
    torch.nn.utils.parametrize has wrapped has a class generated for it, a subclass
    of its class (its first base, as parametrize's removal assumes): the twin is the
    same generated class over the rnnfused class."""
    cls = type(module)
    if cls in _TWINS:
        return _TWINS[cls]
    base = cls.__bases__[0]
    if base in _TWINS and cls.__module__ == parametrize.__name__ and parametrize.is_parametrized(module):
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        return type(f"Parametrized{_TWINS[base].__name__}", (_TWINS[base],), namespace)
    return None


def convert(model: nn.Module) -> nn.Module:
    """Turns every torch.nn RNN/LSTM/GRU/*Cell inside `model` (and `model` itself)
    into its rnnfused twin, in place: the same objects with the same Parameters,
    buffers, hooks and training mode, now running the fused kernels. Modules
    under torch.nn.utils.parametrize keep their parametrizations. Subclasses of the
    torch.nn classes (their own forward) are left alone. Returns `model`."""
    for module in model.modules():
        twin = _twin_class(module)
        if twin is not None:
            module.__class__ = twin
    return model
