"""Read a run log into a :class:`RunView`: a few tidy pandas frames that rules read.

The reader trusts nothing: a partial last line (a killed process) is dropped
and noted, undecodable lines are skipped and counted, values of the wrong shape
are ignored, and anything that is not a doctor log is a one-line
:class:`LogFormatError`. It never evaluates anything it reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from doctor import schema
from doctor.errors import LogFormatError

MAX_LOG_BYTES = 8 * 1024**3


@dataclass
class RunView:
    """A read-only view of one recorded run. Rules read these frames, never the file.

    Attributes:
        header: the header record (model, optimizer, environment, config).
        steps: one row per optimizer step (index ``step``): ``loss`` and every logged
            scalar, ``lr`` (group 0), ``lr_g{i}``/``wd_g{i}`` per param group,
            ``grad_norm`` (global, every step, after any clipping), ``grad_norm_preclip`` and
            ``clip_max_norm`` (on steps that called ``clip_grad_norm_``), ``seconds`` (step wall time) and ``data_seconds``
            (from the previous step's end to this step's first forward: waiting for data).
        grad_norms: step x parameter, the max gradient norm over each sampling window.
        weight_norms, update_ratios: step x parameter on sampled steps.
        activations: statistic name -> step x module frame (``mean``, ``std``, ``absmax``,
            ``zero_frac``, ``saturated_frac``, ``dead_frac``), modules in call order.
        inputs: statistic name -> step x input tensor frame (``mean``, ``std``, ``min``, ``max``).
        spectra: step x recurrent matrix (and gate block), largest singular value.
        params: one row per parameter (module, shape, numel, group, weight_decay, recurrent ...).
        modules: one row per module (type, activation kind, order, leaf).
        call_order: recorded modules in the order the first forward pass called them.
        events: event records (nonfinite, crash, recorder_error, skipped, close), in order.
        nonfinite: column of ``steps`` -> steps where a logged value was NaN/Inf
            (told apart from values that were not logged, which are also NaN in ``steps``).
        truncated: the log ends without a ``close`` event (killed or crashed run).
        notes: what the reader had to work around, for the report.
        ranks: for a data-parallel run recorded with all_ranks=True, every rank's view (see ``merge_ranks``).
    """

    path: str
    header: dict[str, Any]
    steps: pd.DataFrame
    grad_norms: pd.DataFrame
    weight_norms: pd.DataFrame
    update_ratios: pd.DataFrame
    activations: dict[str, pd.DataFrame]
    inputs: dict[str, pd.DataFrame]
    spectra: pd.DataFrame
    params: pd.DataFrame
    modules: pd.DataFrame
    call_order: list[str]
    events: list[dict[str, Any]]
    truncated: bool
    nonfinite: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ranks: dict[int, RunView] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.header.get("name") or Path(self.path).stem)

    @property
    def loss(self) -> pd.Series:
        """The training loss per step (empty when none was logged)."""
        return self.steps["loss"].dropna() if "loss" in self.steps else pd.Series(dtype=float)

    @property
    def num_steps(self) -> int:
        return int(self.steps.index.max()) + 1 if len(self.steps) else 0

    def has(self, data: str) -> bool:
        """Whether the log holds ``data`` (a name used in a rule's ``requires``)."""
        if data in ("loss", "val_loss", "lr", "grad_norm", "grad_norm_preclip", "amp_skipped"):
            return data in self.steps and self.steps[data].notna().any()
        if data == "activations":
            return bool(self.activations) and not self.activations["std"].empty
        if data == "inputs":
            return bool(self.inputs) and not self.inputs["std"].empty
        if data in ("grad_norms", "weight_norms", "update_ratios", "spectra"):
            return not getattr(self, data).empty
        if data in ("model", "optimizer"):
            return bool(self.header.get(data))
        if data == "ranks":
            return len(self.ranks) > 1
        return False

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]

    def identity(self) -> dict[str, Any]:
        """The run's identity for reports and ``--json``."""
        env = self.header.get("env") or {}
        model = self.header.get("model") or {}
        optimizer = self.header.get("optimizer") or {}
        seconds = self.steps["seconds"].sum() if "seconds" in self.steps else 0.0
        crash = self.events_of("crash")
        return {
            "name": self.name,
            "path": self.path,
            "model": model.get("class"),
            "parameters": model.get("parameters"),
            "optimizer": optimizer.get("class"),
            "steps": self.num_steps,
            "device": env.get("device"),
            "device_name": env.get("device_name"),
            "torch": env.get("torch"),
            "started": env.get("started"),
            "duration_s": round(float(seconds), 3) if _finite(seconds) else None,
            "truncated": self.truncated,
            "crashed": bool(crash),
            "crash": {k: crash[0].get(k) for k in ("error", "message", "step")} if crash else None,
            "notes": list(self.notes),
            "schema": self.header.get("schema"),
            "source": self.header.get("source"),
        }


def load_run(path: str | Path) -> RunView:
    """Read one run log, or a log recorded without doctor (TensorBoard, CSV, JSON Lines: see ``importers``).

    Raises :class:`LogFormatError` (one-line message) for anything unreadable.
    """
    from doctor import importers

    path = Path(path)
    if not path.exists():
        raise LogFormatError(f"no such file: '{path}'")
    if importers.is_external(path):
        return importers.load_external(path)
    try:
        size = path.stat().st_size
        if size > MAX_LOG_BYTES:
            raise LogFormatError(f"'{path}' is {size / 1e9:.1f} GB; expected a run log under 8 GB")
        raw = path.read_bytes()
    except OSError as exc:
        raise LogFormatError(f"cannot read '{path}': {exc.strerror or exc}") from None
    return parse_run(raw, str(path))


def parse_run(raw: bytes, path: str = "<memory>") -> RunView:
    """Parse the bytes of a run log (see :func:`load_run`)."""
    if not raw.strip():
        raise LogFormatError(f"'{path}' is empty; expected a run log written by doctor.watch(...)")
    lines = raw.split(b"\n")
    partial_tail = bool(lines[-1].strip())  # the writer ends every record with a newline
    if not partial_tail:
        lines = lines[:-1]
    records, bad = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            if i == 0:
                raise LogFormatError(
                    f"'{path}' is not a doctor run log (its first line is not JSON); expected a file written by doctor.watch(...)"
                ) from None
            if i == len(lines) - 1:
                partial_tail = True
            else:
                bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    header = records[0] if records else {}
    if header.get("kind") != schema.HEADER or header.get("format") != schema.FORMAT_NAME:
        raise LogFormatError(
            f"'{path}' is not a doctor run log (no doctor header on its first line); expected a file written by doctor.watch(...)"
        )
    version = header.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LogFormatError(f"'{path}' has a malformed schema version {version!r}; expected an integer")
    if version > schema.SCHEMA_VERSION:
        raise LogFormatError(
            f"'{path}' was written with log schema {version}, newer than this doctor reads "
            f"({schema.SCHEMA_VERSION}); upgrade training-doctor"
        )
    notes: list[str] = []
    if bad:
        notes.append(f"{bad} damaged line(s) were skipped")
    if partial_tail:
        notes.append("the last line was incomplete (the process stopped while writing) and was dropped")
    return _build_view(path, header, records[1:], notes)


def _build_view(path: str, header: dict[str, Any], records: list[dict[str, Any]], notes: list[str]) -> RunView:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_kind.setdefault(str(record.get("kind")), []).append(record)
    model = header.get("model") if isinstance(header.get("model"), dict) else {}
    params = _params_frame(model.get("params"))
    param_names = list(params.index)
    events = [e for e in by_kind.get(schema.EVENT, []) if isinstance(e.get("type"), str)]
    closed = any(e.get("type") == "close" for e in events)
    notes += _recorder_notes(events)
    if not closed:
        notes.append("the log has no close event: the run was killed or is still running; analyzed up to its last record")
    trace = by_kind.get(schema.TRACE, [])
    call_order = (
        [str(n) for n in trace[0].get("call_order", [])] if trace and isinstance(trace[0].get("call_order"), list) else []
    )
    steps, nonfinite = _steps_frame(by_kind.get(schema.STEPS, []))
    bad_inputs: list[int] = []
    inputs = _tables(by_kind.get(schema.INPUTS, []), "names", schema.INPUT_STATS, bad_inputs)
    if bad_inputs:
        nonfinite["inputs"] = sorted(set(bad_inputs))
    activations = _tables(by_kind.get(schema.ACTIVATIONS, []), "modules", schema.ACTIVATION_STATS)
    return RunView(
        path=path,
        header=header,
        steps=steps,
        nonfinite=nonfinite,
        grad_norms=_wide(by_kind.get(schema.GRADS, []), "norm", param_names),
        weight_norms=_wide(by_kind.get(schema.WEIGHTS, []), "norm", param_names),
        update_ratios=_wide(by_kind.get(schema.WEIGHTS, []), "update_ratio", param_names),
        activations=activations,
        inputs=inputs,
        spectra=_wide(by_kind.get(schema.SPECTRA, []), "sigma_max", None, columns_key="matrices"),
        params=params,
        modules=_modules_frame(model.get("modules")),
        call_order=call_order,
        events=events,
        truncated=not closed,
        notes=notes,
    )


def merge_ranks(views: list[RunView]) -> list[RunView]:
    """Logs of one data-parallel run (exp.rank0.log, exp.rank1.log ...) become one view with every rank in ``ranks``.

    The lowest rank present is the view the other rules read (all ranks train the same all-reduced model); the
    ``rank_drift`` rule compares the ranks. Logs that are not rank logs pass through unchanged, in order.
    """
    groups: dict[Any, list[RunView]] = {}
    for view in views:
        env = view.header.get("env") if isinstance(view.header.get("env"), dict) else {}
        match = re.fullmatch(r"(.*)\.rank(\d+)", Path(view.path).stem)
        rank, world = env.get("rank"), env.get("world_size")
        ranked = match and isinstance(rank, int) and isinstance(world, int) and int(match.group(2)) == rank
        key = (str(Path(view.path).parent / match.group(1)), world) if ranked else id(view)
        groups.setdefault(key, []).append(view)
    merged = []
    for key, members in groups.items():
        if len(members) == 1 or not isinstance(key, tuple):
            for view in members:
                if view.header.get("sharded"):
                    view.notes.append(
                        "gradient and weight norms are of this rank's shard only (FSDP): record with all_ranks=True "
                        "and analyze the rank logs together to get the norms of whole parameters"
                    )
            merged.extend(members)
            continue
        members.sort(key=lambda v: v.header["env"]["rank"])
        primary = dataclasses.replace(members[0], notes=list(members[0].notes))  # ranks keep each log as recorded
        primary.ranks = {v.header["env"]["rank"]: v for v in members}
        primary.header = {**primary.header, "name": Path(key[0]).name}
        if primary.header.get("sharded"):
            _combine_shards(primary, members)
        listed = ", ".join(str(r) for r in primary.ranks)
        primary.notes.append(
            f"merged the logs of ranks {listed} (world size {key[1]}); rank_drift compares them, "
            f"the other rules read rank {members[0].header['env']['rank']}"
        )
        merged.append(primary)
    return merged


def _combine_shards(primary: RunView, members: list[RunView]) -> None:
    """FSDP: each rank recorded the norms of its own shard; a whole parameter's norm is the root of their squares.

    Gradient norms per parameter are maxima over sampling windows, so after the first 2,048 steps the combined
    value is an upper bound (each shard's maximum may come from a different step of the window).
    """

    def root_sum_squares(frames: list[pd.DataFrame]) -> pd.DataFrame:
        squares = [f.pow(2) for f in frames if not f.empty]
        if len(squares) < len(frames) or not squares:
            return frames[0]
        total = squares[0]
        for f in squares[1:]:
            total = total.add(f, fill_value=0.0)
        return total.pow(0.5)

    weights = root_sum_squares([m.weight_norms for m in members])
    deltas = root_sum_squares([m.update_ratios * m.weight_norms for m in members])
    primary.steps = primary.steps.copy()
    primary.grad_norms = root_sum_squares([m.grad_norms for m in members])
    primary.weight_norms = weights
    primary.update_ratios = deltas / weights.where(weights > 0)
    grad_totals = [m.steps["grad_norm"] for m in members if "grad_norm" in m.steps]
    if len(grad_totals) == len(members):
        primary.steps["grad_norm"] = root_sum_squares([g.to_frame() for g in grad_totals]).iloc[:, 0]
    primary.notes.append("FSDP: norms of whole parameters combined from every rank's shard")


def empty_view(path: str, header: dict[str, Any], steps: pd.DataFrame) -> RunView:
    """A view holding only step-indexed scalars (a log recorded without doctor.watch)."""
    return RunView(
        path=path,
        header=header,
        steps=steps,
        grad_norms=pd.DataFrame(),
        weight_norms=pd.DataFrame(),
        update_ratios=pd.DataFrame(),
        activations={},
        inputs={},
        spectra=pd.DataFrame(),
        params=_params_frame(None),
        modules=_modules_frame(None),
        call_order=[],
        events=[],
        truncated=False,
    )


def _recorder_notes(events: list[dict[str, Any]]) -> list[str]:
    """What the recorder could not record, in words, so the report says which evidence is missing and why."""
    notes = []
    for e in events:
        if e["type"] == "recorder_error":
            notes.append(
                f"the recorder stopped recording {e.get('stat')} at step {e.get('step')} after an error: {e.get('error')}"
            )
        elif e["type"] == "skipped":
            notes.append(f"not recorded: {e.get('stat')} of {e.get('what')} ({e.get('reason')})")
    return notes


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _as_float_array(rows: Any) -> np.ndarray | None:
    """Numbers (None as NaN) as a float array, or None when the value is not a regular array of numbers."""
    if not isinstance(rows, list):
        return None
    try:
        return np.array(rows, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return None


def _step_index(record: dict[str, Any]) -> list[int] | None:
    steps = record.get("step")
    if not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
        return None
    return steps


def _nonfinite_steps(steps: list[int], column: list[Any]) -> list[int]:
    return [s for s, v in zip(steps, column) if isinstance(v, float) and not math.isfinite(v)]


def _group_columns(table: Any, n: int, prefix: str) -> dict[str, np.ndarray]:
    """Per-param-group lists (lr, weight decay) as one column per group: ``lr_g0``, ``lr_g1`` ..."""
    if not isinstance(table, list) or len(table) != n:
        return {}
    width = max((len(r) for r in table if isinstance(r, list)), default=0)
    padded = [r + [None] * (width - len(r)) if isinstance(r, list) else [None] * width for r in table]
    values = _as_float_array(padded)
    if values is None or values.ndim != 2:
        return {}
    return {f"{prefix}{g}": values[:, g] for g in range(values.shape[1])}


def _steps_frame(records: Iterable[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    frames = []
    nonfinite: dict[str, list[int]] = {}
    for record in records:
        steps = _step_index(record)
        if not steps:
            continue
        n = len(steps)
        columns: dict[str, Any] = {}
        for key in ("grad_norm", "grad_norm_preclip", "clip_max_norm", "seconds", "data_seconds"):
            values = _as_float_array(record.get(key))
            if values is not None and values.shape == (n,):
                columns[key] = values
                if key == "grad_norm":
                    nonfinite.setdefault(key, []).extend(_nonfinite_steps(steps, record[key]))
        for key, prefix in (("lr", "lr_g"), ("weight_decay", "wd_g")):
            columns |= _group_columns(record.get(key), n, prefix)
        scalars = record.get("scalars")
        if isinstance(scalars, dict):
            for key, column in scalars.items():
                values = _as_float_array(column)
                if values is not None and values.shape == (n,) and key not in columns:
                    columns[str(key)] = values
                    nonfinite.setdefault(str(key), []).extend(_nonfinite_steps(steps, column))
        if columns:
            frames.append((steps, list(columns), np.column_stack(list(columns.values()))))
    nonfinite = {k: sorted(set(v)) for k, v in nonfinite.items() if v}
    steps = _stack_blocks(frames)  # late-logged scalars merge into their step
    if "lr_g0" in steps:
        steps["lr"] = steps["lr_g0"]
    return steps, nonfinite


def _stack_blocks(blocks: list[tuple[list[int], list[str], np.ndarray]]) -> pd.DataFrame:
    """One frame from many (steps, column names, 2-D values) blocks, without a DataFrame per block.

    Consecutive blocks with the same columns (the normal case) are concatenated as arrays; rows for
    a step that appears more than once are merged, later non-missing values winning.
    """
    if not blocks:
        return pd.DataFrame(index=pd.Index([], name="step", dtype=int))
    frames, i = [], 0
    while i < len(blocks):
        j = i
        while j + 1 < len(blocks) and blocks[j + 1][1] == blocks[i][1]:
            j += 1
        steps = np.concatenate([np.asarray(b[0], dtype=np.int64) for b in blocks[i : j + 1]])
        values = np.concatenate([b[2] for b in blocks[i : j + 1]])
        frames.append(pd.DataFrame(values, index=pd.Index(steps, name="step"), columns=[str(c) for c in blocks[i][1]]))
        i = j + 1
    frame = frames[0] if len(frames) == 1 else pd.concat(frames)
    if not frame.columns.is_unique:
        frame = frame.T.groupby(level=0, sort=False).last().T
    if not frame.index.is_unique:
        frame = frame.groupby(level=0).last()
    return frame.sort_index()


def _wide(records: list[dict[str, Any]], key: str, columns: list[str] | None, columns_key: str | None = None) -> pd.DataFrame:
    blocks = []
    for record in records:
        steps = _step_index(record)
        names = record.get(columns_key) if columns_key else columns
        if not steps or not isinstance(names, list):
            continue
        values = _as_float_array(record.get(key))
        if values is None or values.ndim != 2 or values.shape != (len(steps), len(names)):
            continue
        blocks.append((steps, names, values))
    return _stack_blocks(blocks)


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, list) and any(_has_nonfinite(v) for v in value)


def _tables(
    records: list[dict[str, Any]], names_key: str, stats: tuple[str, ...], nonfinite: list[int] | None = None
) -> dict[str, pd.DataFrame]:
    """Per-statistic wide frames; steps whose logged values held NaN/Inf (not nulls) go to ``nonfinite``."""
    blocks = []
    for record in records:
        steps = _step_index(record)
        names = record.get(names_key)
        if not steps or not isinstance(names, list):
            continue
        raw = record.get("values")
        if isinstance(raw, list):
            raw = [[c if c is not None else [None] * len(stats) for c in r] if isinstance(r, list) else r for r in raw]
        values = _as_float_array(raw)
        if values is None or values.shape != (len(steps), len(names), len(stats)):
            continue
        if nonfinite is not None:
            nonfinite.extend(s for s, row in zip(steps, record["values"]) if _has_nonfinite(row))
        blocks.append((steps, names, values))
    return {stat: _stack_blocks([(st, names, v[:, :, k]) for st, names, v in blocks]) for k, stat in enumerate(stats)}


_PARAM_COLUMNS = (
    "module",
    "module_type",
    "numel",
    "group",
    "weight_decay",
    "recurrent",
    "requires_grad",
    "gates",
    "shape",
)


def _params_frame(params: Any) -> pd.DataFrame:
    rows = []
    if isinstance(params, list):
        for p in params:
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                rows.append({"name": p["name"], **{k: p.get(k) for k in _PARAM_COLUMNS}})
    frame = pd.DataFrame(rows, columns=["name", *_PARAM_COLUMNS])
    frame = frame.drop_duplicates("name").set_index("name")
    frame["recurrent"] = frame["recurrent"].fillna(False).astype(bool)
    frame["weight_decay"] = pd.to_numeric(frame["weight_decay"], errors="coerce")
    frame["numel"] = pd.to_numeric(frame["numel"], errors="coerce")
    return frame


def _modules_frame(modules: Any) -> pd.DataFrame:
    rows = []
    if isinstance(modules, list):
        for m in modules:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                rows.append({k: m.get(k) for k in ("name", "type", "activation", "order", "leaf", "params")})
    frame = pd.DataFrame(rows, columns=["name", "type", "activation", "order", "leaf", "params"])
    return frame.drop_duplicates("name").set_index("name")
