"""The learning rate collapses while the loss is still falling, and progress stops with it.

What it detects:
    The step where the learning rate falls below `min_fraction` of its peak,
    when that happens with a good part of the run still ahead, the loss was still
    improving right before it, and improved much more slowly after it.

Why it matters:
    Document 002's case: with the rate multiplied by 0.9995 every iteration the
    rate is gone long before the model has converged, and the run ends worse than
    with no decay at all. A schedule that decays too early freezes the model
    wherever it happens to be.

Evidence shown:
    Peak learning rate and its step, the collapse step and the rate there, the
    loss improvement per step before and after the collapse.

How to fix (cited):
    Slower decay, or decay only at the end; a schedule spanning the whole run
    (cosine); with Adam, little or no decay.

Thresholds:
    min_fraction: 5% of the peak rate. min_remaining: at least 20% of the run after
    the collapse (decay at the very end is good practice). stall_ratio: the loss
    improved per step after the collapse less than 20% as fast as before it.
    min_progress: the loss fell by at least 2% over the window before the collapse.

Known false positives:
    A run that had in fact converged before the collapse: then the loss was not
    improving before it and nothing is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, loss_curve, smooth


@dataclass(frozen=True)
class Thresholds:
    min_fraction: float = 0.05  # the rate counts as collapsed below this fraction of its peak
    min_remaining: float = 0.2  # fraction of the run that must remain after the collapse
    stall_ratio: float = 0.2  # per-step improvement after / before the collapse
    min_progress: float = 0.02  # relative loss drop over the window before the collapse


class LrDecayTooFast(Rule):
    id = "lr_decay_too_fast"
    title = "Learning rate decays too fast"
    severity = "warning"
    requires = ("lr", "loss")
    Thresholds = Thresholds
    explains = ("loss_plateau",)
    fixes = (fixes.SLOWER_DECAY, fixes.COSINE_OVER_RUN, fixes.ADAM_NO_DECAY, fixes.WARMUP)

    def check(self, run, t):
        lr = finite_part(run.steps["lr"], run).dropna()
        loss = loss_curve(run)
        if len(lr) < 20 or len(loss) < 20 or lr.max() <= 0:
            return []
        peak_step = int(lr.idxmax())
        peak = float(lr.max())
        after_peak = lr.loc[lr.index > peak_step]
        collapsed = after_peak[after_peak < t.min_fraction * peak]
        if collapsed.empty:
            return []
        collapse = int(collapsed.index[0])
        end = int(loss.index[-1])
        total = end - int(loss.index[0]) + 1
        if (end - collapse) < t.min_remaining * total:
            return []
        curve = smooth(loss, max(5, len(loss) // 20))
        window = max(5, min(collapse - peak_step, total // 5))
        at = float(curve.loc[:collapse].iloc[-1])
        before = (
            float(curve.loc[: collapse - window].iloc[-1]) if (curve.index <= collapse - window).any() else float(curve.iloc[0])
        )
        final = float(curve.iloc[-1])
        rate_before = (before - at) / window
        rate_after = (at - final) / max(end - collapse, 1)
        if (before - at) < t.min_progress * abs(before) or rate_after >= t.stall_ratio * rate_before:
            return []
        return [
            self.finding(
                f"The learning rate fell below {fmt(100 * t.min_fraction)}% of its peak ({fmt(peak)}) at step {collapse:,}, "
                f"{fmt(100 * (end - collapse) / total)}% before the end, while the loss was still improving: "
                f"{fmt(rate_before)} per step before, {fmt(rate_after)} per step after (loss {fmt(at)} -> {fmt(final)}).",
                steps=(collapse, end),
                evidence={
                    "peak_lr": peak,
                    "peak_step": peak_step,
                    "collapse_step": collapse,
                    "lr_at_collapse": float(collapsed.iloc[0]),
                    "final_lr": float(lr.iloc[-1]),
                    "loss_improvement_per_step_before": rate_before,
                    "loss_improvement_per_step_after": rate_after,
                    "loss_at_collapse": at,
                    "final_loss": final,
                },
                charts=[
                    Chart("steps:lr", "Learning rate", highlight=(collapse, end), log_y=True),
                    Chart("steps:loss", "Training loss", highlight=(collapse, end)),
                ],
            )
        ]
