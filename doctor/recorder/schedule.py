"""Sampling schedules whose interval doubles as the run grows, so a log's size stays bounded.

A schedule with ``every=E`` and ``rows=R`` records every E steps for the first
E*R steps, then every 2E steps until 2E*R, every 4E until 4E*R, and so on:
about R/2 more rows per doubling of the run length. A 100k-step run keeps
detail at the start (where bad init shows) and a steadily thinning record later.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    every: int
    rows: int = 2048

    def interval(self, step: int) -> int:
        """The sampling interval in force at ``step``."""
        if self.every <= 0:
            return 0
        return self.every * (1 << (step // (self.every * self.rows)).bit_length())

    def due(self, step: int) -> bool:
        """Whether ``step`` is sampled (step 0 always is, unless the schedule is off)."""
        interval = self.interval(step)
        return interval > 0 and step % interval == 0

    def to_json(self) -> dict[str, int]:
        return {"every": self.every, "rows": self.rows}
