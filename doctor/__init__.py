"""Training Doctor: record a PyTorch training run, then diagnose why it fails to learn.

    import doctor
    with doctor.watch(model, optimizer, log="runs/exp1.log") as run:
        ...
        run.log(loss=loss)

then ``doctor analyze runs/exp1.log``. Importing this package is cheap and has
no side effects: torch and pandas are imported only when a name needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["watch", "Run", "Finding", "Fix", "Rule", "DoctorError", "NonFiniteError", "__version__"]

if TYPE_CHECKING:
    from doctor.errors import DoctorError, NonFiniteError
    from doctor.findings import Finding, Fix
    from doctor.recorder.run import Run
    from doctor.rule import Rule


def watch(model: Any, optimizer: Any, log: Any = None, **options: Any) -> Run:
    """Start recording ``model`` and ``optimizer`` into the run log ``log``.

    Use as a context manager (a crash in the loop is recorded, the log is always
    closed) or call ``close()`` yourself. Options are the fields of
    :class:`doctor.recorder.config.RecorderConfig` plus ``name``, ``scaler`` (a
    GradScaler, to record skipped steps), ``on_nonfinite`` ("warn" or "raise") and
    ``all_ranks`` (under DDP every rank writes ``<log>.rank<N>.log``; by default
    only rank 0 records and the others get a run that does nothing).
    """
    from doctor.errors import UsageError
    from doctor.recorder.distributed import InactiveRun, rank_and_world, rank_log_path
    from doctor.recorder.run import Run

    all_ranks = bool(options.pop("all_ranks", False))
    rank, world = rank_and_world()
    if world > 1:
        if rank != 0 and not all_ranks:
            return InactiveRun()  # type: ignore[return-value]
        if all_ranks:
            if log is None:
                raise UsageError("doctor.watch(..., all_ranks=True) needs log=: every rank derives its log's name from it")
            log = rank_log_path(log, rank)
    return Run(model, optimizer, log, **options)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from doctor.recorder.run import Run

        return Run
    if name in ("Finding", "Fix"):
        from doctor import findings

        return getattr(findings, name)
    if name == "Rule":
        from doctor.rule import Rule

        return Rule
    if name in ("DoctorError", "NonFiniteError"):
        from doctor import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'doctor' has no attribute {name!r}")
