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
import os
from pathlib import Path
from typing import Any

import numpy as np

from doctor.errors import UsageError


def rounded(values: Any, digits: int = 6, no_value: float | None = None) -> list:
    """Round to ``digits`` significant digits to keep the log small; None and ``no_value`` (a sentinel) become null.

    Takes a list or a table (nested lists, one row per step) and returns the same shape as Python lists, NaN
    and infinities kept. Vectorized: a flush rounds thousands of values, and formatting each one in Python
    (``f"{v:.6g}"``) was half the flush's time.
    """
    if not len(values):
        return []
    array = np.array(values, dtype=np.float64)  # None -> NaN; told apart again below
    null = array == no_value if no_value is not None else np.zeros(array.shape, dtype=bool)
    if array.ndim == 1 and any(v is None for v in values):
        null |= np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    result = _round_significant(array, digits).tolist()
    for index in zip(*np.nonzero(null)):
        cell = result
        for i in index[:-1]:
            cell = cell[i]
        cell[index[-1]] = None
    return result


def _round_significant(array: np.ndarray, digits: int) -> np.ndarray:
    """Each finite non-zero value to the nearest value with ``digits`` significant decimal digits.

    ``round(x * 10**d) / 10**d`` divides two exactly represented numbers (10**d is exact for |d| <= 22), so
    the result is the double nearest the short decimal and prints as it. The few values that need |d| > 22
    (below about 1e-17 or above about 1e27) are formatted one by one.
    """
    out = array.copy()
    ok = np.isfinite(array) & (array != 0)
    x = array[ok]
    decimals = digits - 1 - np.floor(np.log10(np.abs(x)))
    scaled = np.empty_like(x)
    up, down = (decimals >= 0) & (decimals <= 22), (decimals < 0) & (decimals >= -22)
    scaled[up] = np.round(x[up] * 10.0 ** decimals[up]) / 10.0 ** decimals[up]
    scaled[down] = np.round(x[down] / 10.0 ** -decimals[down]) * 10.0 ** -decimals[down]
    tiny = ~(up | down)
    scaled[tiny] = [float(f"{v:.{digits}g}") for v in x[tiny]]
    out[ok] = scaled
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
