"""Lets torch.ao.quantization.quantize_dynamic quantize the rnnfused modules as it
does torch.nn's.

quantize_dynamic picks a module's quantized class by its exact type in
``DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS``, built when torch is imported, with
torch.nn's own classes as keys. A program that swapped rnnfused in
(``torch.nn.LSTM = rnnfused.LSTM``) still asks for ``nn.LSTM`` in its qconfig, now
rnnfused's, and without an entry here its LSTM would stay in float. The entries
added map each rnnfused class to a converter for the same quantized class.

The quantized classes' ``from_float`` accept only a module whose type is the
current ``torch.nn.<name>``: rnnfused's where it was swapped in, else torch.nn's.
The converter hands them the module as that class (a shallow copy, the same
parameters). A qconfig naming torch.nn's original class (modules turned by
``rnnfused.convert``) still does not match an rnnfused module, as it matches no
subclass of it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _converter(name: str, quantized: type) -> type:
    """A mapping value for quantize_dynamic: `from_float` of `quantized` on the
    module presented as ``torch.nn.<name>``, as that check reads it at call time."""

    def from_float(cls: type, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        twin = copy.copy(mod)
        twin.__class__ = getattr(torch.nn, name)
        return quantized.from_float(twin, use_precomputed_fake_quant=use_precomputed_fake_quant)

    return type(f"_Quantize{name}", (), {"from_float": classmethod(from_float)})


def register_dynamic(twins: dict[type, type]) -> None:
    """Adds {rnnfused class: converter} to torch's default dynamic-quantization
    mappings for every torch.nn class in `twins` ({torch.nn class: rnnfused
    class}) that torch maps. Does nothing on a torch without those mappings."""
    try:
        from torch.ao.quantization import quantization_mappings
    except ImportError:
        return
    mappings: dict[Any, Any] = getattr(quantization_mappings, "DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS", {})
    for torch_cls, fused_cls in twins.items():
        quantized = mappings.get(torch_cls)
        if quantized is not None and hasattr(quantized, "from_float"):
            mappings.setdefault(fused_cls, _converter(torch_cls.__name__, quantized))
