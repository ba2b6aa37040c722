"""Recorder settings: what is recorded every step and what only on sampled steps.

Defaults are chosen from the measurements in BENCHMARKS.md: everything that is
cheap (loss, logged scalars, learning rate, global gradient norm, step time) is
recorded every step; per-parameter gradient norms are reduced on the device to
a max over each sampling window (spikes survive thinning); the costlier
statistics are sampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from doctor.errors import UsageError
from doctor.recorder.schedule import Schedule


@dataclass(frozen=True)
class RecorderConfig:
    # Copy statistics to the host every this many steps or seconds, whichever comes first.
    # One copy per flush, never one per step; a killed process loses at most this much.
    flush_every: int = 100
    flush_seconds: float = 5.0
    # Per-parameter gradient norm: one row per step for the first `grad_rows` steps, then
    # the window max at doubling intervals. The global norm is exact every step regardless.
    grad_rows: int = 2048
    # Weight norms and update/weight ratios. Each sample copies the weights once (a full pass over
    # them): every 50 steps keeps that under 0.5% of step time on a CPU-bound MLP (BENCHMARKS.md).
    weight_every: int = 50
    weight_rows: int = 512
    # At most this many MB of weights are copied per sample for update ratios; larger models are
    # covered in turn over consecutive samples (weight norms are always taken for every parameter).
    update_copy_mb: float = 256.0
    # Per-module output statistics, from step 0 (initialization) on: six reductions per module output,
    # so every 50 steps (about 0.3 ms per step amortized on the 6x512 MLP at every 25).
    activation_every: int = 50
    activation_rows: int = 256
    # Model input statistics.
    input_every: int = 50
    # Largest singular values of recurrent weight matrices, from step 0 on.
    spectral_every: int = 50
    spectral_rows: int = 512
    # At most this many input tensors are described per forward pass.
    max_inputs: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise UsageError(f"recorder option {f.name} expects a number >= 0, got {value!r}")
        if self.flush_every < 1:
            raise UsageError(f"recorder option flush_every expects an integer >= 1, got {self.flush_every!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RecorderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown doctor.watch option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def schedules(self) -> dict[str, Schedule]:
        return {
            "grads": Schedule(1 if self.grad_rows else 0, max(self.grad_rows, 1)),
            "weights": Schedule(self.weight_every, self.weight_rows),
            "activations": Schedule(self.activation_every, self.activation_rows),
            "inputs": Schedule(self.input_every, self.activation_rows),
            "spectra": Schedule(self.spectral_every, self.spectral_rows),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
