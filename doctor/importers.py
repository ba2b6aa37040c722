"""Logs recorded without doctor: TensorBoard event files, Lightning ``metrics.csv``, Hugging Face
``trainer_state.json``, plain CSV or JSON Lines.

Such logs hold step-indexed scalars only, so they become a :class:`RunView` with a ``steps`` frame and nothing
else; the engine then runs the rules whose data is there (loss curve, learning rate, validation loss, non-finite
values) and says for every other rule which data it needed and that ``doctor.watch`` records it.

Column names vary by framework; ``canonical_name`` maps the common spellings (``train/loss``, ``train_loss_step``,
``eval/loss``, ``lr-Adam``, ``train/learning_rate``, ``grad_norm``) to the names the rules read.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from doctor import schema
from doctor.errors import LogFormatError
from doctor.loader import MAX_LOG_BYTES, RunView, empty_view

EXTERNAL_FORMAT = "external"
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.")
_TRAIN_PREFIXES = ("train_", "training_", "trainer_")
_VAL_PREFIXES = ("val_", "valid_", "validation_", "eval_", "dev_")
_STEP_SUFFIXES = ("_step",)  # Lightning logs both loss_step and loss_epoch with on_step/on_epoch
_STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "steps", "_step")


def canonical_name(raw: str) -> str:
    """``train/loss`` -> ``loss``, ``eval/loss`` -> ``val_loss``, ``lr-Adam`` -> ``lr``; other names pass lowercased."""
    name = re.sub(r"[^0-9a-z]+", "_", raw.strip().lower()).strip("_")
    for suffix in _STEP_SUFFIXES:
        name = name.removesuffix(suffix)
    if name in ("learning_rate", "lr") or re.fullmatch(r"(train_)?(lr|learning_rate)(_[a-z0-9]+)?(_pg\d+)?", name):
        return "lr"
    for prefix in _VAL_PREFIXES:
        if name.startswith(prefix) and name.removeprefix(prefix) in ("loss", "nll", "ce"):
            return "val_loss"
    for prefix in _TRAIN_PREFIXES:
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
    if name in ("grad_norm", "gradient_norm", "grad_norm_total", "total_grad_norm", "grad_2_0_norm_total"):
        return "grad_norm"
    return name


def is_external(path: Path) -> bool:
    """Whether ``path`` looks like a log that doctor did not write (decided by name, then by the first line)."""
    if path.is_dir():
        return True
    if _EVENT_FILE.search(path.name) or path.suffix.lower() in (".csv", ".tsv"):
        return True
    if path.suffix.lower() == ".json":  # a whole-file JSON document (trainer_state.json); never a doctor log
        return True
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        try:
            with path.open("rb") as f:
                first = json.loads(f.readline() or b"null")
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return False
        return not (isinstance(first, dict) and first.get("format") == schema.FORMAT_NAME)
    return False


def load_external(path: Path) -> RunView:
    """Read an external log into a view with only ``steps``; raises :class:`LogFormatError` with one line."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _EVENT_FILE.search(p.name))
        if not files:
            raise LogFormatError(
                f"'{path}' is a directory without TensorBoard event files; expected a run log, a TensorBoard log "
                "directory, a metrics.csv or a JSON Lines file"
            )
        table, source = _tensorboard(path, files), "TensorBoard event files"
    elif _EVENT_FILE.search(path.name):
        table, source = _tensorboard(path.parent, [path]), "a TensorBoard event file"
    else:
        raw = _read(path)
        if path.suffix.lower() in (".csv", ".tsv"):
            table = _csv(raw, path)
            source = "a Lightning metrics.csv" if path.name == "metrics.csv" else "a CSV file"
        elif path.suffix.lower() == ".json":
            table, source = _trainer_state(raw, path), "a Hugging Face trainer_state.json"
        else:
            table, source = _jsonl(raw, path), "a JSON Lines file"
    return _view(path, *table, source)


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_LOG_BYTES:
            raise LogFormatError(f"'{path}' is larger than 8 GB")
        return path.read_bytes()
    except OSError as exc:
        raise LogFormatError(f"cannot read '{path}': {exc.strerror or exc}") from None


def _tensorboard(root: Path, files: list[Path]) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Scalars of every event file, read with tensorboard's own reader; tags of several runs get the run's folder."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise LogFormatError(
            "reading TensorBoard logs needs the tensorboard package: pip install 'training-doctor[tensorboard]'"
        ) from None
    folders = sorted({f.parent for f in files})
    columns: dict[str, dict[int, float]] = {}
    for folder in folders:
        prefix = "" if len(folders) == 1 else f"{folder.relative_to(root)}/"
        for file in (f for f in files if f.parent == folder):
            try:
                accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
                accumulator.Reload()
            except Exception as exc:  # noqa: BLE001 - a corrupt event file is bad input, not a crash
                raise LogFormatError(f"cannot read the TensorBoard event file '{file}': {type(exc).__name__}") from None
            tags = accumulator.Tags()
            for tag in tags.get("scalars", []):
                column = columns.setdefault(prefix + tag, {})
                for event in accumulator.Scalars(tag):
                    column[int(event.step)] = float(event.value)
            for tag in tags.get("tensors", []):
                values = _tensor_scalars(accumulator.Tensors(tag))
                if values:
                    columns.setdefault(prefix + tag, {}).update(values)
    if not columns:
        raise LogFormatError(f"the TensorBoard log '{root}' holds no scalar summaries")
    numeric = pd.DataFrame(columns).sort_index()
    present = pd.DataFrame({tag: dict.fromkeys(values, True) for tag, values in columns.items()}).reindex_like(numeric)
    return _collapse(numeric, present.fillna(False).astype(bool), root)


def _tensor_scalars(events: list[Any]) -> dict[int, float]:
    """TF2-style summaries keep scalars as 0-d tensors; anything else (histograms, text) is ignored."""
    from tensorboard.util import tensor_util

    out = {}
    for event in events:
        try:
            value = tensor_util.make_ndarray(event.tensor_proto)
        except Exception:  # noqa: BLE001
            return {}
        if value.shape != () or not np.issubdtype(value.dtype, np.number):
            return {}
        out[int(event.step)] = float(value)
    return out


def _csv(raw: bytes, path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    try:
        text = raw.decode("utf-8-sig")
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;") if text.strip() else csv.excel
        with warnings.catch_warnings():  # ragged rows: extra cells are dropped, as the warning would say
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), sep=dialect.delimiter, keep_default_na=False, na_values=[""], dtype=str, index_col=False
            )
    except (UnicodeDecodeError, csv.Error, ValueError, pd.errors.ParserError) as exc:
        raise LogFormatError(f"'{path}' is not a readable CSV file ({type(exc).__name__})") from None
    words = {"nan", "inf", "+inf", "-inf", "infinity", "-infinity"}
    present = frame.apply(lambda c: c.str.strip().str.lower().isin(words) | pd.to_numeric(c, errors="coerce").notna())
    return _by_step(frame, present, path)


def _jsonl(raw: bytes, path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    rows = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue  # a partial last line or a damaged line: skip it, as the run log reader does
        if isinstance(record, dict):
            rows.append(record)
    if not rows:
        raise LogFormatError(f"'{path}' holds no JSON objects; expected one object of step-indexed scalars per line")
    return _rows(rows, path)


def _rows(rows: list[Any], path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """JSON objects of scalars -> a step table; a value that is a number (NaN included) counts as logged."""
    rows = [{k: v for k, v in row.items() if isinstance(k, str)} for row in rows if isinstance(row, dict)]
    if not rows:
        raise LogFormatError(f"'{path}' holds no JSON objects of step-indexed scalars")
    numbers = [{k: isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in row.items()} for row in rows]
    present = pd.DataFrame(numbers).fillna(False).astype(bool)
    return _by_step(pd.DataFrame(rows), present, path)


def _trainer_state(raw: bytes, path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Hugging Face Trainer's ``trainer_state.json``: its ``log_history`` is a list of step-indexed dicts."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise LogFormatError(f"'{path}' is not valid JSON; expected a trainer_state.json or a doctor run log") from None
    history = document.get("log_history") if isinstance(document, dict) else None
    if not isinstance(history, list) or not history:
        raise LogFormatError(f"'{path}' has no log_history; expected a Hugging Face trainer_state.json")
    return _rows(history, path)


def _by_step(frame: pd.DataFrame, present: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Rows of scalars (several rows per step, as Lightning writes) -> one row per step, numeric columns only."""
    frame, present = frame.loc[:, ~frame.columns.duplicated()], present.loc[:, ~present.columns.duplicated()]
    lowered = {str(c).strip().lower(): c for c in frame.columns}
    step_column = next((lowered[c] for c in _STEP_COLUMNS if c in lowered), None)
    if step_column is None:
        raise LogFormatError(
            f"'{path}' has no step column; expected one of {', '.join(_STEP_COLUMNS[:3])} "
            f"(columns found: {', '.join(map(str, list(frame.columns)[:8]))})"
        )
    steps = pd.to_numeric(frame[step_column], errors="coerce")
    keep = steps.notna() & steps.abs().lt(2**53)
    numeric = frame.drop(columns=[step_column]).apply(pd.to_numeric, errors="coerce").astype(float)[keep]
    present = present.drop(columns=[step_column]).reindex_like(numeric).fillna(False).astype(bool)
    numeric.index = present.index = steps[keep].astype("int64")
    return _collapse(numeric, present, path)


def _collapse(numeric: pd.DataFrame, present: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """One row per step (the last value logged wins) and, per column, the steps where a NaN/Inf was logged.

    ``present`` marks the cells that held a value, so a logged NaN is told apart from a value never logged.
    """
    bad = present & ~np.isfinite(numeric)
    useful = numeric.notna().any() | bad.any()
    numeric, bad = numeric.loc[:, useful], bad.loc[:, useful]
    if numeric.empty:
        raise LogFormatError(f"'{path}' has no numeric columns besides its step column")
    nonfinite = {str(c): sorted({int(s) for s in numeric.index[bad[c].to_numpy()]}) for c in numeric if bad[c].any()}
    return numeric.groupby(level=0).last(), nonfinite


def _view(path: Path, frame: pd.DataFrame, nonfinite: dict[str, list[int]], source: str) -> RunView:
    """Give the scalars the names the rules read; keep the rest as they are (they show in the report)."""
    renamed: dict[str, str] = {}
    for column in map(str, frame.columns):
        name = canonical_name(column)
        if name in renamed.values():  # loss_step and loss: the first keeps the canonical name
            name = column
        while name in renamed.values():
            name += "_"
        renamed[column] = name
    steps = frame.set_axis([renamed[str(c)] for c in frame.columns], axis=1).sort_index()
    steps.index = steps.index.rename("step")
    if "epoch" in steps:
        steps["epoch"] = steps["epoch"].ffill()
    header = {
        "kind": schema.HEADER,
        "format": EXTERNAL_FORMAT,
        "source": source,
        "name": path.stem if path.is_file() else path.name,
        "columns": renamed,
    }
    view = empty_view(str(path), header, steps.astype(float))
    view.nonfinite = {renamed[c]: s for c, s in nonfinite.items()}
    found = ", ".join(sorted({"loss", "val_loss", "lr", "grad_norm"} & set(steps.columns))) or "no loss or lr column"
    view.notes.append(
        f"read from {source}: {len(steps):,} steps ({found}); per-layer statistics need a run recorded with doctor.watch"
    )
    return view
