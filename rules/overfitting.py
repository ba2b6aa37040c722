"""Validation loss rises for a sustained stretch while the training loss keeps falling.

What it detects:
    The validation loss (``run.log(val_loss=...)``), smoothed over a few
    evaluations, reaches its minimum and then stays well above it through the
    end, while the training loss keeps falling after that point. It names the
    step with the best validation loss: where early stopping would have stopped.

Why it matters:
    Past that point the model memorizes the training set instead of learning what
    generalizes; every further step makes it worse on new data while the training
    curve looks better and better.

Evidence shown:
    Best validation loss and its step, the final validation loss, the rise, and
    the training loss at both points.

How to fix (cited):
    Early stopping at the named step; dropout; weight decay; more data through augmentation.

Thresholds:
    rise: the smoothed final validation loss at least 10% above its minimum, with
    the last `sustained` evaluations (3) all at least 5% above it; train_drop: the
    training loss fell by at least 10% after the best step.

Known false positives:
    A validation set that is tiny or drawn from another distribution can rise for
    other reasons; the finding quotes the numbers so they can be judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, loss_curve, smooth


@dataclass(frozen=True)
class Thresholds:
    rise: float = 0.10  # final smoothed validation loss above its minimum by this fraction
    sustained: int = 3  # the last evaluations must all sit above the minimum
    sustained_rise: float = 0.05  # ... by at least this fraction
    train_drop: float = 0.10  # training loss fell by this fraction after the best validation step
    min_evaluations: int = 5


class Overfitting(Rule):
    id = "overfitting"
    title = "Overfitting"
    severity = "warning"
    requires = ("loss", "val_loss")
    Thresholds = Thresholds
    fixes = (fixes.EARLY_STOP, fixes.EARLY_STOP_PATIENCE, fixes.DROPOUT, fixes.WEIGHT_DECAY, fixes.AUGMENT)

    def check(self, run, t):
        val = finite_part(run.steps["val_loss"], run).dropna()
        if len(val) < t.min_evaluations:
            return []
        curve = smooth(val, 3)
        best_step = int(curve.idxmin())
        best = float(curve.min())
        final = float(curve.iloc[-1])
        tail = val.iloc[-t.sustained :]
        if best <= 0 or final < (1 + t.rise) * best or (tail < (1 + t.sustained_rise) * best).any():
            return []
        train = loss_curve(run)
        smooth_train = smooth(train, max(5, len(train) // 20))
        at_best = float(smooth_train.loc[:best_step].iloc[-1])
        train_end = float(smooth_train.iloc[-1])
        if train_end > (1 - t.train_drop) * at_best:
            return []
        end = int(val.index[-1])
        return [
            self.finding(
                f"Validation loss bottomed out at {fmt(best)} at step {best_step:,} and rose to {fmt(final)} "
                f"(+{fmt(100 * (final / best - 1))}%) by step {end:,}, while the training loss fell from "
                f"{fmt(at_best)} to {fmt(train_end)}; stop at step {best_step:,}.",
                steps=(best_step, end),
                evidence={
                    "best_val_loss": best,
                    "best_step": best_step,
                    "final_val_loss": final,
                    "train_loss_at_best": at_best,
                    "final_train_loss": train_end,
                },
                charts=[
                    Chart(
                        "steps:val_loss",
                        "Validation vs training loss",
                        columns=("loss", "val_loss"),
                        highlight=(best_step, end),
                    )
                ],
            )
        ]
