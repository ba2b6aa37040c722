"""Gradient norms before clipping: ``torch.nn.utils.clip_grad_norm_`` observed while a run is open.

Why: the recorder reads gradients in the optimizer's pre-step hook, after any clipping, so the gradient
norm of a clipped run sits at ``max_norm`` and its real size is hidden (document 002's case analysis: clipping
only hides the actual problem). ``clip_grad_norm_`` computes the pre-clip total norm anyway and returns it as a
tensor on the device; keeping a reference to it costs no kernel and no sync.

The wrapper goes onto ``torch.nn.utils`` and ``torch.nn.utils.clip_grad`` when the first run opens and comes
off when the last one closes (if another library wrapped the function after us, ours stays inside its chain
and passes straight through). Lightning, Accelerate and the Hugging Face Trainer call the function through
``torch.nn.utils`` and are seen. Code that bound the name before ``watch()`` (``from torch.nn.utils import
clip_grad_norm_`` at the top of a script) calls the original: ``run.log(grad_norm_preclip=..., clip_max_norm=...)``
records it by hand, and the ``persistent_clipping`` rule still sees the norm pinned at the ceiling.

The call itself is never changed: same arguments (a one-shot iterator is read once and handed on as an
equivalent one), same result, same exceptions. What doctor does with it runs after the call, under a guard.
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections.abc import Iterator
from typing import Any

import torch

_MODULES = ("torch.nn.utils", "torch.nn.utils.clip_grad")
_lock = threading.Lock()
_runs: weakref.WeakSet[Any] = weakref.WeakSet()  # open runs that want clip calls, each with record_clip(...)
_original: Any = None
_wrapper: Any = None


def attach(run: Any) -> None:
    """Start passing ``clip_grad_norm_`` calls on the parameters of ``run`` to ``run.record_clip``."""
    with _lock:
        if not _runs:
            _install()
        _runs.add(run)


def detach(run: Any) -> None:
    """Stop for ``run``; the last run to go takes the wrapper off again."""
    with _lock:
        _runs.discard(run)
        if not _runs:
            _uninstall()


def _modules() -> list[types.ModuleType]:
    import importlib

    return [importlib.import_module(name) for name in _MODULES]


def _install() -> None:
    global _original, _wrapper
    current = torch.nn.utils.clip_grad_norm_
    if getattr(current, "_doctor_wrapper", False):  # ours, still in place
        return
    original = _original = current  # each wrapper keeps its own: an old one may live on inside another's chain

    @functools.wraps(current)
    def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
        if not _runs:
            return original(*args, **kwargs)
        args, kwargs, params = _parameters_of(args, kwargs)
        total = original(*args, **kwargs)
        _tell_runs(params, args, kwargs, total)
        return total

    clip_grad_norm_._doctor_wrapper = True  # type: ignore[attr-defined]
    _wrapper = clip_grad_norm_
    for module in _modules():
        if getattr(module, "clip_grad_norm_", None) is current:
            module.clip_grad_norm_ = clip_grad_norm_  # type: ignore[attr-defined]


def _uninstall() -> None:
    if _wrapper is None:
        return
    for module in _modules():
        if getattr(module, "clip_grad_norm_", None) is _wrapper:  # else someone wrapped us: leave their chain
            module.clip_grad_norm_ = _original  # type: ignore[attr-defined]


def _parameters_of(args: tuple, kwargs: dict) -> tuple[tuple, dict, list[Any]]:
    """The parameters of a call, read without consuming what the original will read.

    A generator is read into a list and handed on as a generator over that list (so the original still warns
    about an empty one); any other one-shot iterator is handed on as the list. An iterable that raises while it
    is read raises here exactly as it would have inside the original, which reads it the same way first.
    """
    in_kwargs = not args
    parameters = kwargs.get("parameters") if in_kwargs else args[0]
    if isinstance(parameters, torch.Tensor):
        return args, kwargs, [parameters]
    if isinstance(parameters, Iterator):
        params = list(parameters)
        passed: Any = (p for p in params) if isinstance(parameters, types.GeneratorType) else params
        if in_kwargs:
            kwargs = {**kwargs, "parameters": passed}
        else:
            args = (passed, *args[1:])
        return args, kwargs, params
    try:
        return args, kwargs, list(parameters) if parameters is not None else []
    except TypeError:
        return args, kwargs, []


def _tell_runs(params: list[Any], args: tuple, kwargs: dict, total: Any) -> None:
    """Hand the pre-clip norm to every open run that owns the clipped parameters; never raise."""
    try:
        max_norm = args[1] if len(args) > 1 else kwargs.get("max_norm")
        norm_type = args[2] if len(args) > 2 else kwargs.get("norm_type", 2.0)
        ids = {id(p) for p in params if isinstance(p, torch.Tensor)}
        for run in list(_runs):
            run.record_clip(ids, total, max_norm, norm_type)
    except Exception:  # noqa: BLE001 - a run's own guard reports its errors; this only protects the caller
        pass
