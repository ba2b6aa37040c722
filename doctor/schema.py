"""The run-log format: one module owns the schema version, record kinds and field names.

A run log is JSON Lines: one JSON object per line, appended as training goes.
The first line is the ``header``; every later line is one of the record kinds
below. Non-finite numbers are written as the tokens ``NaN``, ``Infinity`` and
``-Infinity`` (what Python's ``json`` module reads back); a missing value is
``null``. A process that dies mid-write leaves at most one partial last line,
which the reader drops. The full description is in ``docs/log-format.md``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
FORMAT_NAME = "training-doctor-run-log"

# Record kinds (the "kind" field of every line). Stable strings, never class names.
HEADER = "header"  # once, first line: model, optimizer, environment, sampling config
STEPS = "steps"  # every optimizer step: loss, logged scalars, lr, weight decay, grad-norm total, time
GRADS = "grads"  # per-parameter gradient norm, max over each sampling window
WEIGHTS = "weights"  # per-parameter weight norm and update/weight ratio on sampled steps
ACTIVATIONS = "activations"  # per-module output statistics on sampled steps
INPUTS = "inputs"  # model input statistics on sampled steps
SPECTRA = "spectra"  # largest singular value of recurrent weight matrices (and gate blocks)
TRACE = "trace"  # once, after the first forward pass: modules in call order
EVENT = "event"  # nonfinite, crash, recorder_error, skipped, close

# Column order of the per-module activation statistics in an ``activations`` record.
ACTIVATION_STATS = ("mean", "std", "absmax", "zero_frac", "saturated_frac", "dead_frac")
# Column order of the per-tensor input statistics in an ``inputs`` record.
INPUT_STATS = ("mean", "std", "min", "max")
