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


class Inert:
    """What a copied or unpickled recorder hook becomes: accepts any call, returns None (changes nothing)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class Hook:
    """Calls ``fn`` (which keeps the run alive, as the model keeps its hooks); copies become ``Inert``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[type, tuple]:
        return (Inert, ())
