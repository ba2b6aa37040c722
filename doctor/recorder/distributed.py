"""Data-parallel runs (DDP under torchrun): which rank records, and where each rank's log goes.

By default only rank 0 records: gradients are all-reduced, so one rank sees what every rank trains on, and one
log per run is what a user opens. ``all_ranks=True`` gives every rank its own log, ``exp.rank0.log``,
``exp.rank1.log`` ..., which ``doctor analyze`` merges to compare ranks (stragglers, ranks fed different data,
replicas whose weights drifted apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of an initialized default process group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_log_path(log: str | Path, rank: int) -> Path:
    """runs/exp.log -> runs/exp.rank1.log (a log per rank, side by side)."""
    path = Path(log)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix or '.log'}")


class InactiveRun:
    """What ``doctor.watch`` returns on a rank that does not record: the same calls, doing nothing."""

    closed = True
    hook_count = 0
    path = None
    step = 0

    def log(self, step: int | None = None, **scalars: Any) -> None:
        return None

    def record_crash(self, exc: BaseException) -> None:
        return None

    def close(self, reason: str = "clean") -> None:
        return None

    def __enter__(self) -> InactiveRun:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False
