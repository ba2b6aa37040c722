"""Flush every open run when the process is asked to stop (SIGTERM) or exits normally.

Schedulers (Slurm, Kubernetes, a Ctrl-C'd launcher) stop jobs with SIGTERM, whose default action ends the
process without running ``atexit``. While a run is open we chain a handler that closes every open run (each
flushes its buffered steps) and then re-delivers the signal to whatever handler was there before, so the
process still stops as it would have. The handler is installed only from the main thread and only over the
default or a Python handler; SIGKILL cannot be caught, which is why the log is flushed periodically anyway.

A signal that lands while a run is writing (inside a flush) is held until the write is done, so the handler never
re-enters a half-written batch. A forked child (DataLoader worker) gets the runs' hooks removed and never writes.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from typing import Any

_open_runs: weakref.WeakSet[Any] = weakref.WeakSet()
_previous: Any = None
_installed = False


class _Writing:
    """Context manager marking a run's write as in progress; a SIGTERM arriving meanwhile waits for its end."""

    depth = 0
    deferred: tuple[int, Any] | None = None

    def __enter__(self) -> None:
        _Writing.depth += 1

    def __exit__(self, *exc: Any) -> bool:
        _Writing.depth -= 1
        if _Writing.depth == 0 and _Writing.deferred is not None:
            signum, frame = _Writing.deferred
            _Writing.deferred = None
            _on_sigterm(signum, frame)
        return False


writing = _Writing()


def register(run: Any) -> None:
    global _previous, _installed
    _open_runs.add(run)
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is None:  # installed from C: leave it alone
            return
        _previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True
    except (ValueError, OSError):  # not the main interpreter / unsupported platform
        pass


def unregister(run: Any) -> None:
    _open_runs.discard(run)


def _on_sigterm(signum: int, frame: Any) -> None:
    if _Writing.depth:
        _Writing.deferred = (signum, frame)
        return
    for run in list(_open_runs):
        try:
            run.close(reason="SIGTERM")
        except Exception:  # noqa: BLE001 - never let our cleanup change how the process stops
            pass
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous in (None, signal.SIG_DFL) else previous)
    if previous != signal.SIG_IGN:
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    """The child of a fork inherits every open run; it must neither record nor write, so each is let go."""
    _Writing.depth = 0
    _Writing.deferred = None
    for run in list(_open_runs):
        try:
            run._let_go_after_fork()
        except Exception:  # noqa: BLE001 - a child must start whatever happens here
            pass
    _open_runs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
