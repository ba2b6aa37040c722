"""Tanh or sigmoid units stuck in their flat tails for most of the run.

What it detects:
    For every tanh/sigmoid-type output (including RNN hidden states), the fraction
    of values in the flat tails (|y| > 0.99 for tanh; y < 0.01 or y > 0.99 for
    sigmoid), sampled through the run: a layer is flagged when most samples,
    including the late ones, have at least `saturated_frac` of their units saturated.

Why it matters:
    A saturated unit has a derivative near zero: it passes almost no gradient, so
    the layers below it stop learning, and it carries one bit instead of a graded
    value. Inputs on a large scale, weights initialized too large or blown up by an
    exploding gradient put units there.

Evidence shown:
    Saturated fraction per layer (median and last sample), and the steps covered.

How to fix (cited):
    Normalize inputs, variance-scaling init, normalization layers, ReLU family.

Thresholds:
    saturated_frac: 0.25 of units saturated; persistence: in at least 80% of the
    sampled steps and in the last one (healthy zoo runs stay below 0.05).

Known false positives:
    Gating layers meant to act as switches (attention gates, the sigmoid of a
    mixture weight) can be legitimately saturated.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, persistent_layers, span


@dataclass(frozen=True)
class Thresholds:
    saturated_frac: float = 0.25  # fraction of a layer's values in the flat tails
    persistence: float = 0.8  # fraction of sampled steps that must exceed it
    min_samples: int = 3


class SaturatedActivations(Rule):
    id = "saturated_activations"
    title = "Saturated activations"
    severity = "warning"
    requires = ("activations",)
    Thresholds = Thresholds
    fixes = (fixes.NORMALIZE_INPUTS, fixes.VARIANCE_INIT, fixes.NORM_LAYERS, fixes.USE_RELU)

    def check(self, run, t):
        sat = finite_part(run.activations["saturated_frac"], run)
        if len(sat) < t.min_samples:
            return []
        layers = persistent_layers(sat, run, t.saturated_frac, t.persistence)
        if not layers:
            return []
        first = layers[0]
        median = {m: float(sat[m].median()) for m in layers}
        return [
            self.finding(
                f"{fmt(100 * median[first])}% of `{first}`'s outputs sit in the flat tails of its non-linearity "
                f"(median over {len(sat)} samples)"
                + (f"; {len(layers) - 1} more layer(s) likewise" if len(layers) > 1 else "")
                + ".",
                steps=span(sat.index),
                layers=layers,
                evidence={
                    "median_saturated_frac": median,
                    "last_saturated_frac": {m: float(sat[m].iloc[-1]) for m in layers},
                },
                charts=[
                    Chart(
                        "activations:saturated_frac",
                        "Fraction of saturated units",
                        columns=tuple(layers),
                        threshold=t.saturated_frac,
                    )
                ],
            )
        ]
