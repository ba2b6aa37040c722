"""The loss barely moves from its start although gradients are healthy.

What it detects:
    The smoothed loss at the end within `min_change` of its start, while every
    weight matrix receives a gradient (no vanishing, no dead layers) and the
    learning rate did not collapse. The update/weight ratio tells which of the
    usual causes it is: tiny updates mean the learning rate is far too low;
    normal-sized updates that do not reduce the loss point to a bug.

Why it matters:
    Nothing is learned, yet no layer is broken: the optimizer is either taking
    steps too small to matter or is optimizing something other than intended
    (wrong labels, a detached graph, a loss on the wrong tensors).

Evidence shown:
    Loss at start and end, the relative change, the median gradient norm and the
    median update/weight ratio.

How to fix (cited):
    The overfit-a-tiny-batch check; a higher learning rate.

Thresholds:
    min_change: 3% (healthy zoo runs drop by 20-100%). tiny_update: an update ratio
    below 1e-5 means the rate is far too low (healthy runs: 1e-5 to 1e-2).

Known false positives:
    A run resumed from a converged checkpoint is flat by design. On a log without
    per-layer gradients (TensorBoard, CSV) the gradient check cannot run, so a
    vanishing gradient is reported as a plateau, with that caveat.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import ends, finite_part, fmt, loss_curve, median_update_ratio, rms, weight_params


@dataclass(frozen=True)
class Thresholds:
    min_change: float = 0.03  # relative change of the smoothed loss from start to end
    tiny_update: float = 1e-5  # median update/weight ratio below this: the rate is far too low
    healthy_gradient: float = 1e-7  # every weight matrix's median RMS gradient above this
    layer_spread: float = 1e-3  # ... and within this factor of the strongest


class LossPlateau(Rule):
    id = "loss_plateau"
    title = "Loss plateau from the start"
    severity = "warning"
    requires = ("loss",)
    Thresholds = Thresholds
    fixes = (fixes.OVERFIT_TINY_BATCH, fixes.RAISE_LR)

    def check(self, run, t):
        loss = loss_curve(run)
        if len(loss) < 20:
            return []
        start, end = ends(loss, minimum=5)
        change = (start - end) / abs(start) if start else 0.0
        gradients_known = not run.grad_norms.empty
        if change >= t.min_change or (gradients_known and not self._gradients_healthy(run, t)):
            return []
        lr = run.steps["lr"].dropna() if "lr" in run.steps else None
        if lr is not None and len(lr) and float(lr.iloc[-1]) < 0.05 * float(lr.max()):
            return []  # the rate collapsed: lr_decay_too_fast's case
        update = median_update_ratio(run)
        evidence = {"loss_start": start, "loss_end": end, "relative_change": change}
        summary = f"The loss moved {fmt(100 * change)}% over {len(loss):,} steps ({fmt(start)} -> {fmt(end)})"
        summary += (
            " with healthy gradients"
            if gradients_known
            else " (the log has no per-layer gradients, so a vanishing gradient is not ruled out: record with doctor.watch)"
        )
        ranked = list(self.fixes)
        if update is not None:
            evidence["median_update_ratio"] = update
            if update < t.tiny_update:
                summary += (
                    f"; updates change the weights by only {fmt(100 * update)}% of their norm: the learning rate is far too low"
                )
                ranked = [fixes.RAISE_LR, fixes.OVERFIT_TINY_BATCH]
            else:
                summary += f"; updates are normal-sized ({fmt(100 * update)}% of the weight norm), so look for a bug"
        if lr is not None and len(lr):
            evidence["lr"] = float(lr.median())
        charts = [Chart("steps:loss", "Training loss")]
        if update is not None:
            charts.append(Chart("update_ratios", "Update / weight ratio", threshold=1e-3, log_y=True))
        return [
            self.finding(
                summary + ".",
                steps=(int(loss.index[0]), int(loss.index[-1])),
                evidence=evidence,
                charts=charts,
                fixes=ranked,
            )
        ]

    @staticmethod
    def _gradients_healthy(run, t):
        columns = [p for p in weight_params(run) if p in run.grad_norms and bool(run.params["requires_grad"].get(p, True))]
        if not columns:
            return False
        grads = rms(finite_part(run.grad_norms[columns], run), run).median()
        return bool((grads > t.healthy_gradient).all() and grads.min() >= t.layer_spread * grads.max())
