"""Append-only JSON Lines writer for the run log.

Each record is encoded to one line and handed to the OS at once (write + flush),
so a process killed at any moment leaves every earlier record intact and at
most one partial last line, which the reader drops.

Only the process that opened the log writes to it: a forked child (a DataLoader
worker, a multiprocessing pool) inherits the open file but its writes are
dropped, so the parent's log never gets duplicated or interleaved records.
Before each record the writer checks that the path still names its file; a log
deleted or replaced mid-run raises ``LogFileGone`` instead of writing into an
unlinked inode nobody will ever read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from doctor.errors import UsageError


def rounded(values: list[float | None], digits: int = 6, no_value: float | None = None) -> list[float | None]:
    """Round to ``digits`` significant digits to keep the log small; ``no_value`` (a sentinel) becomes null."""
    out: list[float | None] = []
    for v in values:
        if v is None or v == no_value:
            out.append(None)
        elif math.isfinite(v):
            out.append(float(f"{v:.{digits}g}"))
        else:
            out.append(v)
    return out


class LogFileGone(OSError):
    """The log file was deleted or replaced while the run was writing it."""


class LogWriter:
    """Owns the log file: validated at open, one line per record, fsync on close."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered text would flush per line anyway; we flush explicitly per record.
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        except OSError as exc:
            raise UsageError(
                f"cannot write the run log at '{self.path}': {exc.strerror or exc}; "
                "pass a writable path as doctor.watch(..., log='runs/name.log')"
            ) from None
        self.bytes_written = 0
        self._owner_pid = os.getpid()
        self._identity = _identity(os.fstat(self._file.fileno()))

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, record: dict[str, Any]) -> None:
        """Encode one record as a single line and hand it to the OS (raises OSError on disk errors)."""
        if os.getpid() != self._owner_pid:
            return
        try:
            on_disk = _identity(os.stat(self.path))
        except FileNotFoundError:
            on_disk = None
        if on_disk != self._identity:
            raise LogFileGone(f"the log file {self.path} was deleted or replaced during the run")
        line = json.dumps(record, separators=(",", ":"), allow_nan=True, ensure_ascii=False) + "\n"
        self._file.write(line)
        self._file.flush()
        self.bytes_written += len(line)

    def close(self) -> None:
        """fsync and close; never raises (a full disk has already been reported by ``write``)."""
        if self._file.closed:
            return
        try:
            if os.getpid() == self._owner_pid:  # a forked child only drops its copy of the descriptor
                self._file.flush()
                os.fsync(self._file.fileno())
        except OSError:
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return (stat.st_dev, stat.st_ino)
