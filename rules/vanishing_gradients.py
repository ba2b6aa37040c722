"""Early layers get gradients orders of magnitude smaller than late layers, or gradients die out.

What it detects:
    Per-element (RMS) gradient size of each weight matrix over the run: the
    earliest layers' median gradient is orders of magnitude below the largest
    layer's. Or the global gradient norm collapses toward zero while the loss
    is still near where it started.

Why it matters:
    Layers whose gradients are a thousand times smaller effectively do not
    train: the network behaves like its last few layers on fixed random
    features. Saturating activations (sigmoid, tanh) and poor init in deep
    stacks shrink the gradient at every layer it passes.

Evidence shown:
    Median RMS gradient of the first and the strongest layers and their ratio;
    the global norm collapse and the loss at that point.

How to fix (cited):
    ReLU-family activations, variance-scaling init, normalization layers.

Thresholds:
    layer_ratio: 1e-3, three orders of magnitude between the weakest early layer and
    the strongest (healthy zoo runs stay within 10x). collapse_ratio: the late
    global norm below 1e-3 of the early one while the loss kept above
    `loss_kept` (90%) of its start.

Known false positives:
    Layers that are dead (ReLU units that never fire) also get zero gradient;
    that case is reported by `dead_relu` and skipped here. Weights that decay
    shrank toward zero (their gradients shrink with them: `over_regularized_rnn`)
    and frozen layers are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import activation_kind, finite_part, fmt, loss_curve, module_order, rms, weight_params


@dataclass(frozen=True)
class Thresholds:
    layer_ratio: float = 1e-3  # weakest early layer's RMS gradient over the strongest layer's
    early_layers: int = 2  # how many of the first weight layers are checked
    collapse_ratio: float = 1e-3  # late over early global gradient norm
    loss_kept: float = 0.9  # the loss stayed above this fraction of its start
    dead_limit: float = 0.5  # skip when a ReLU in between has at least this fraction of dead units
    decayed: float = 0.1  # skip weights whose norm shrank below this fraction of its start


class VanishingGradients(Rule):
    id = "vanishing_gradients"
    title = "Vanishing gradients"
    severity = "error"
    requires = ("grad_norms",)
    Thresholds = Thresholds
    fixes = (fixes.USE_RELU, fixes.VARIANCE_INIT, fixes.NORM_LAYERS, fixes.VARIANCE_BY_FAN)

    def check(self, run, t):
        found = self._layer_gap(run, t) or self._collapse(run, t)
        return [found] if found else []

    def _layer_gap(self, run, t):
        trainable = [
            p
            for p in weight_params(run)
            if bool(run.params["requires_grad"].get(p, True)) and p in run.grad_norms and not self._decayed(run, p, t)
        ]
        if len(trainable) < 3:
            return None
        grads = rms(finite_part(run.grad_norms[trainable], run), run).median()
        grads = grads[np.isfinite(grads.to_numpy())]
        if grads.empty or grads.max() <= 0:
            return None
        strongest = str(grads.idxmax())
        early = grads.iloc[: t.early_layers]
        ratio = float(early.min() / grads.max())
        if ratio >= t.layer_ratio or self._dead_units_explain(run, t):
            return None
        weakest = str(early.idxmin())
        below = [str(p) for p in grads.index if grads[p] / grads.max() < t.layer_ratio]
        return self.finding(
            f"Early layer `{weakest}` gets gradients {fmt(1 / max(ratio, 1e-30))}x smaller than `{strongest}` "
            f"(median RMS {fmt(float(early.min()))} vs {fmt(float(grads.max()))}); {len(below)} of {len(grads)} "
            f"weight matrices are more than {fmt(1 / t.layer_ratio)}x below the strongest.",
            steps=(int(run.grad_norms.index.min()), int(run.grad_norms.index.max())),
            layers=below,
            evidence={
                "weakest_early_layer": weakest,
                "weakest_rms_grad": float(early.min()),
                "strongest_layer": strongest,
                "strongest_rms_grad": float(grads.max()),
                "ratio": ratio,
                "median_rms_grad_by_layer": {k: float(v) for k, v in grads.items()},
            },
            charts=[
                Chart(
                    "grad_norms",
                    "Gradient norm per parameter",
                    columns=tuple([weakest, *below[:2], strongest]),
                    log_y=True,
                )
            ],
        )

    def _collapse(self, run, t):
        if not run.has("grad_norm") or not run.has("loss"):
            return None
        g = finite_part(run.steps["grad_norm"], run).dropna()
        loss = loss_curve(run)
        if len(g) < 20 or len(loss) < 20:
            return None
        tenth = max(len(g) // 10, 1)
        early, late = float(g.iloc[:tenth].median()), float(g.iloc[-tenth:].median())
        l_start, l_end = float(loss.iloc[:tenth].median()), float(loss.iloc[-tenth:].median())
        if early <= 0 or late / early >= t.collapse_ratio or l_end < t.loss_kept * l_start:
            return None
        return self.finding(
            f"The global gradient norm fell {fmt(early / max(late, 1e-30))}x (from {fmt(early)} to {fmt(late)}) "
            f"while the loss stayed at {fmt(l_end)} (start {fmt(l_start)}).",
            steps=(int(g.index[-tenth]), int(g.index[-1])),
            evidence={"early_grad_norm": early, "late_grad_norm": late, "loss_start": l_start, "loss_end": l_end},
            charts=[
                Chart("steps:grad_norm", "Global gradient norm", log_y=True),
                Chart("steps:loss", "Training loss"),
            ],
        )

    @staticmethod
    def _decayed(run, param, t):
        """Weights shrunk toward zero by regularization have tiny gradients for that reason, not depth."""
        if param not in run.weight_norms:
            return False
        norms = run.weight_norms[param].dropna()
        return len(norms) >= 2 and norms.iloc[-1] < t.decayed * norms.iloc[0]

    @staticmethod
    def _dead_units_explain(run, t):
        dead = run.activations.get("dead_frac")
        if dead is None or dead.empty:
            return False
        order = [m for m in module_order(run) if activation_kind(run, m) == "relu" and m in dead]
        return any(float(dead[m].median()) >= t.dead_limit for m in order)
