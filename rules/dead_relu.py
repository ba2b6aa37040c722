"""ReLU units that output zero for every sample of the batch, for the whole run.

What it detects:
    For every ReLU layer, the fraction of units (features, or channels of a conv
    output) that are zero for the entire sampled batch. A layer is flagged when at
    least `dead_frac` of its units are dead in most samples, including the last.

Why it matters:
    A dead ReLU passes no gradient, so it never gets the update that could revive
    it: the capacity is gone for good, and when whole layers die the layers below
    them stop learning too. Large negative biases, too high a learning rate (one
    big update pushes units negative for all inputs) and unnormalized inputs kill units.

Evidence shown:
    The dead fraction per layer (median and last sample).

How to fix (cited):
    Recoverable activations and bias init, a lower learning rate, normalized inputs,
    variance-scaling init.

Thresholds:
    dead_frac: 0.4 of the units; persistence: in at least 80% of the sampled steps
    and the last one (healthy zoo runs stay below 0.1).

Known false positives:
    Small evaluation batches make rare-firing units look dead; the statistic is
    taken on training batches only.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, persistent_layers, span


@dataclass(frozen=True)
class Thresholds:
    dead_frac: float = 0.4  # fraction of a layer's units that never fire in the batch
    persistence: float = 0.8  # fraction of sampled steps that must exceed it
    min_samples: int = 3


class DeadRelu(Rule):
    id = "dead_relu"
    title = "Dead ReLU units"
    severity = "warning"
    requires = ("activations",)
    Thresholds = Thresholds
    explains = ("loss_plateau", "vanishing_gradients")
    fixes = (fixes.RECOVERABLE_RELU, fixes.LOWER_LR, fixes.NORMALIZE_INPUTS, fixes.VARIANCE_INIT)

    def check(self, run, t):
        dead = finite_part(run.activations["dead_frac"], run)
        if len(dead) < t.min_samples:
            return []
        layers = persistent_layers(dead, run, t.dead_frac, t.persistence)
        if not layers:
            return []
        median = {m: float(dead[m].median()) for m in layers}
        worst = max(layers, key=median.get)
        return [
            self.finding(
                f"{fmt(100 * median[worst])}% of the units of `{worst}` never fire on a whole batch "
                f"(median over {len(dead)} samples)"
                + (f"; {len(layers)} ReLU layer(s) affected" if len(layers) > 1 else "")
                + ".",
                steps=span(dead.index),
                layers=layers,
                evidence={"median_dead_frac": median, "last_dead_frac": {m: float(dead[m].iloc[-1]) for m in layers}},
                charts=[Chart("activations:dead_frac", "Fraction of dead units", columns=tuple(layers), threshold=t.dead_frac)],
            )
        ]
