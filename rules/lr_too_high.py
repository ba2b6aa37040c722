"""The learning rate is too high: the loss diverges or jumps around, updates are large next to the weights.

What it detects:
    A loss that ends well above where it started (divergence), or a loss that
    jumps from step to step far more than mini-batch noise explains while the
    update/weight ratio ||dw|| / ||w|| of the weight matrices is far above the
    usual ~1e-3.

Why it matters:
    Steps that overshoot bounce the parameters across the valley instead of down
    it: the loss is erratic, progress is slow or reverses, and the run is one bad
    batch away from NaN.

Evidence shown:
    Loss at start and end, the median step-to-step change of log-loss, the
    median update/weight ratio of the weight matrices.

How to fix (cited):
    Lower the rate, warm it up, clip gradients.

Thresholds:
    diverge_ratio: smoothed final loss above 1.5x the initial loss. roughness: median
    |change in log loss| between consecutive steps above 0.25 (healthy zoo runs:
    0.01-0.21) together with update_ratio above 0.03 (healthy zoo runs: median
    0.00002-0.015).

Known false positives:
    Very small batches make the loss noisy at any rate; the update ratio keeps
    that case out when weights are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import fmt, loss_curve, median_update_ratio, smooth


@dataclass(frozen=True)
class Thresholds:
    diverge_ratio: float = 1.5  # smoothed final loss over the initial loss
    roughness: float = 0.25  # median |log-loss change| between consecutive steps
    update_ratio: float = 0.03  # median ||dw|| / ||w|| of weight matrices


class LrTooHigh(Rule):
    id = "lr_too_high"
    title = "Learning rate too high"
    severity = "warning"
    requires = ("loss",)
    Thresholds = Thresholds
    fixes = (fixes.LOWER_LR, fixes.WARMUP, fixes.CLIP_GRAD_NORM)

    def check(self, run, t):
        loss = loss_curve(run)
        if len(loss) < 20 or (loss <= 0).any():
            return []
        tenth = max(len(loss) // 10, 5)
        start = float(loss.iloc[:tenth].median())
        final = float(smooth(loss, tenth).iloc[-1])
        rough = float(np.median(np.abs(np.diff(np.log(loss.to_numpy())))))
        update = median_update_ratio(run)
        evidence = {"loss_start": start, "loss_end": final, "log_loss_roughness": rough}
        if update is not None:
            evidence["median_update_ratio"] = update
        diverged = final > t.diverge_ratio * start
        oscillating = rough > t.roughness and (update is None or update > t.update_ratio)
        if not (diverged or oscillating):
            return []
        if diverged:
            summary = f"The loss diverged: it ends at {fmt(final)}, {fmt(final / start)}x its start ({fmt(start)})"
        else:
            summary = (
                f"The loss jumps by {fmt(100 * (np.exp(rough) - 1))}% from one step to the next (median) instead of "
                f"descending smoothly"
            )
        if update is not None:
            summary += f"; each update changes the weights by {fmt(100 * update)}% of their norm (median; ~0.1% is typical)"
        charts = [Chart("steps:loss", "Training loss", highlight=(int(loss.index[0]), int(loss.index[-1])))]
        if update is not None:
            charts.append(Chart("update_ratios", "Update / weight ratio", threshold=t.update_ratio, log_y=True))
        lr = run.steps["lr"].dropna() if "lr" in run.steps else None
        if lr is not None and len(lr):
            evidence["lr"] = float(lr.median())
        return [self.finding(summary + ".", steps=(int(loss.index[0]), int(loss.index[-1])), evidence=evidence, charts=charts)]
