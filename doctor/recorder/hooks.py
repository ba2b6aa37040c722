"""Hook objects that copy and pickle as no-ops.

A hook registered on a module lives in that module's hook dictionaries, so it
travels with every ``copy.deepcopy(model)`` (EMA weights, "best model"
snapshots) and every ``torch.save(model)``. A bound method of the run would drag
the run, and its open log file, along and make both fail. ``Hook`` forwards
calls to the run while it lives in the watched model and reduces to ``Inert``
when copied, so a copy carries a hook that does nothing and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_compiler = getattr(torch, "compiler", None)
_is_compiling: Callable[[], bool] = getattr(_compiler, "is_compiling", None) or (lambda: False)


class Inert:
    """What a copied or unpickled recorder hook becomes: accepts any call, returns None (changes nothing)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class Hook:
    """Calls ``fn`` (which keeps the run alive, as the model keeps its hooks); copies become ``Inert``.

    Under ``torch.compile`` a hook is traced into the graph, and a hook that reads the run's counters would
    make Dynamo recompile at every step until it gives up and runs the model eagerly. So while compiling,
    the call goes to ``torch.compiler.disable(fn)``: the graph breaks at the hook, which then runs as plain
    Python at every call, and the graph guards on none of the run's state.
    """

    __slots__ = ("fn", "_eager")

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._eager: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _is_compiling():
            if self._eager is None:
                self._eager = _compiler.disable(self.fn)
            return self._eager(*args, **kwargs)
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[type, tuple]:
        return (Inert, ())
