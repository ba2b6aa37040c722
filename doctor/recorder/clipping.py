"""Gradient norms before clipping: ``torch.nn.utils.clip_grad_norm_`` (and ``_value_``) observed while a run is open.

Why: the recorder reads gradients in the optimizer's pre-step hook, after any clipping, so the gradient
norm of a clipped run sits at ``max_norm`` and its real size is hidden (document 002's case analysis: clipping
only hides the actual problem). ``clip_grad_norm_`` computes the pre-clip total norm anyway and returns it as a
tensor on the device; keeping a reference to it costs no kernel and no sync.

The wrapper goes onto ``torch.nn.utils`` and ``torch.nn.utils.clip_grad`` when the first run opens and comes
off when the last one closes (if another library wrapped the function after us, ours stays inside its chain
and passes straight through). Lightning calls the function through ``torch.nn.utils`` and is seen. Accelerate
(1.x, and so the Hugging Face Trainer) computes the total itself with ``get_total_norm`` and clips with
``clip_grads_with_norm_(parameters, max_norm, total_norm)``, both looked up on ``torch.nn.utils`` at call time;
that pair is observed too (torch 2.6 and later have it), taking the norm type from the thread's last
``get_total_norm`` call (L2, torch's default, when there was none). Torch's own ``clip_grad_norm_`` calls the
private names of the pair, so a clip is never seen twice. Code that bound the name before ``watch()``
(``from torch.nn.utils import clip_grad_norm_`` at the top of a script) calls the original:
``run.log(grad_norm_preclip=..., clip_max_norm=...)`` records it by hand, and the ``persistent_clipping`` rule
still sees the norm pinned at the ceiling.

``clip_grad_value_`` is observed too, only to say in the log that the recorded norms are after a value clip:
how much such a clip cut would take another pass over every gradient, which doctor does not spend.

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

_MODULES = (torch.nn.utils, torch.nn.utils.clip_grad)  # both names of each function
_lock = threading.Lock()
_runs: weakref.WeakSet[Any] = weakref.WeakSet()  # open runs, each with record_clip(...) and record_value_clip(...)
_installed: dict[str, tuple[Any, Any]] = {}  # function name -> (the function we found, our wrapper around it)
_last_total = threading.local()  # norm_type of this thread's last get_total_norm call, for clip_grads_with_norm_


def attach(run: Any) -> None:
    """Start passing clip calls on the parameters of ``run`` to ``run.record_clip`` / ``run.record_value_clip``."""
    with _lock:
        if not _runs:
            _install()
        _runs.add(run)


def detach(run: Any) -> None:
    """Stop for ``run``; the last run to go takes the wrappers off again."""
    with _lock:
        _runs.discard(run)
        if not _runs:
            _uninstall()


def _argument(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    """One argument of a call, passed by position or by name."""
    return args[position] if len(args) > position else kwargs.get(name, default)


def _norm_clip(run: Any, ids: set[int], args: tuple, kwargs: dict, total: Any) -> None:
    max_norm, norm_type = _argument(args, kwargs, 1, "max_norm"), _argument(args, kwargs, 2, "norm_type", 2.0)
    run.record_clip(ids, total, max_norm, norm_type)


def _value_clip(run: Any, ids: set[int], args: tuple, kwargs: dict, _result: Any) -> None:
    run.record_value_clip(ids, _argument(args, kwargs, 1, "clip_value"))


def _clip_with_norm(run: Any, ids: set[int], args: tuple, kwargs: dict, _result: Any) -> None:
    max_norm, total = _argument(args, kwargs, 1, "max_norm"), _argument(args, kwargs, 2, "total_norm")
    run.record_clip(ids, total, max_norm, getattr(_last_total, "norm_type", 2.0))


_OBSERVERS = {
    "clip_grad_norm_": _norm_clip,
    "clip_grad_value_": _value_clip,
    "get_total_norm": None,  # not a clip: only its norm type is noted, for the clip_grads_with_norm_ that follows
    "clip_grads_with_norm_": _clip_with_norm,
}


def _install() -> None:
    for name, observe in _OBSERVERS.items():
        current = getattr(torch.nn.utils, name, None)
        if current is None or getattr(current, "_doctor_wrapper", False):  # missing, or ours still in place
            continue
        wrapper = _wrap(current, observe)
        _installed[name] = (current, wrapper)
        for module in _MODULES:
            if getattr(module, name, None) is current:
                setattr(module, name, wrapper)


def _wrap(original: Any, observe: Any) -> Any:
    """A pass-through around ``original`` that shows each call to the open runs (each wrapper keeps its own
    original: an old wrapper may live on inside another library's chain, and must not call a newer one)."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _runs:
            return original(*args, **kwargs)
        if observe is None:
            _last_total.norm_type = _argument(args, kwargs, 1, "norm_type", 2.0)
            return original(*args, **kwargs)
        args, kwargs, params = _parameters_of(args, kwargs)
        result = original(*args, **kwargs)
        _tell_runs(observe, params, args, kwargs, result)
        return result

    wrapper._doctor_wrapper = True  # type: ignore[attr-defined]
    return wrapper


def _uninstall() -> None:
    for name, (original, wrapper) in list(_installed.items()):
        for module in _MODULES:
            if getattr(module, name, None) is wrapper:  # else someone wrapped us: leave their chain
                setattr(module, name, original)
        del _installed[name]


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


def _tell_runs(observe: Any, params: list[Any], args: tuple, kwargs: dict, result: Any) -> None:
    """Show the call to every open run that owns the clipped parameters; never raise."""
    try:
        ids = {id(p) for p in params if isinstance(p, torch.Tensor)}
        for run in list(_runs):
            observe(run, ids, args, kwargs, result)
    except Exception:  # noqa: BLE001 - a run's own guard reports its errors; this only protects the caller
        pass
