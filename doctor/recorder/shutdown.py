"""Flush every open run when the process is asked to stop (SIGTERM) or exits normally.

Schedulers (Slurm, Kubernetes, a Ctrl-C'd launcher) stop jobs with SIGTERM, whose default action ends the
process without running ``atexit``. While a run is open we chain a handler that closes every open run (each
flushes its buffered steps) and then re-delivers the signal to whatever handler was there before, so the
process still stops as it would have. The handler is installed only from the main thread and only over the
default or a Python handler; SIGKILL cannot be caught, which is why the log is flushed periodically anyway.
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
