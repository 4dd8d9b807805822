"""Lets torch.compile trace the rnnfused modules without a graph break.

Dynamo refuses every instance of ``nn.RNN / GRU / LSTM`` (a graph break, or an
error under ``fullgraph=True``) unless ``torch._dynamo.config.allow_rnn`` is set,
because torch.nn's forward calls ``_VF`` functions it cannot trace well. The
rnnfused subclasses pass that ``isinstance`` check too, though their forward
calls custom ops with fake kernels that trace cleanly. So ``allow_rnn`` is set
while dynamo wraps an rnnfused module, and for no other module: torch.nn's own
recurrent modules keep dynamo's default.

Importing dynamo takes seconds, so the patch is applied when dynamo's
``VariableBuilder`` module is first imported (at the first torch.compile), or at
once if it already is. Should a future torch move ``VariableBuilder.wrap_module``,
nothing is patched and the modules break the graph as torch.nn's do.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

_BUILDER = "torch._dynamo.variables.builder"


def _patch(builder: ModuleType, fused_types: tuple[type, ...]) -> None:
    variable_builder = getattr(builder, "VariableBuilder", None)
    wrap_module = getattr(variable_builder, "wrap_module", None)
    if wrap_module is None:
        return
    config = sys.modules["torch._dynamo.config"]

    @functools.wraps(wrap_module)
    def wrap_module_allowing_rnnfused(self: Any, value: Any) -> Any:
        if isinstance(value, fused_types):
            with config.patch(allow_rnn=True):
                return wrap_module(self, value)
        return wrap_module(self, value)

    variable_builder.wrap_module = wrap_module_allowing_rnnfused


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when dynamo's builder module is imported, wraps its
    loader so that `_patch` runs right after the module executes; then leaves."""

    def __init__(self, fused_types: tuple[type, ...]) -> None:
        self.fused_types = fused_types

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _BUILDER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module, self.fused_types)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def allow_tracing(fused_types: tuple[type, ...]) -> None:
    """Makes dynamo trace instances of `fused_types` (the rnnfused RNN, GRU, LSTM)."""
    if _BUILDER in sys.modules:
        _patch(sys.modules[_BUILDER], fused_types)
    else:
        sys.meta_path.insert(0, _PatchOnImport(fused_types))
