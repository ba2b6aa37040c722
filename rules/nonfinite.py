"""NaN or Inf in the loss or the gradients.

What it detects:
    The first step where the training loss or a gradient became NaN or infinite,
    the parameters whose gradients were non-finite then, and what came just
    before: a gradient-norm spike, a large learning rate, or non-finite inputs.

Why it matters:
    One non-finite gradient turns every weight it touches into NaN; from then on
    the run computes nothing. The cause is almost always upstream of the step
    where it shows: corrupt data, an exploding gradient or a rate that is too high.

Evidence shown:
    The first non-finite step, the loss and global gradient norm before it, the
    parameters with non-finite gradients, input statistics sampled near it.

How to fix (cited):
    Fixes are ranked by what preceded the failure: non-finite inputs put the data
    check first; a gradient spike puts clipping first; otherwise the learning rate.

Thresholds:
    spike_ratio: a gradient norm this many times its median over the preceding
    window counts as a spike before the failure (10x: healthy zoo runs stay under 5x).

Known false positives:
    None by construction: a logged NaN is a NaN. A loss that is legitimately
    infinite (e.g. log of an exact zero probability in evaluation code logged as
    the training loss) is still reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import first_nonfinite_step, fmt


@dataclass(frozen=True)
class Thresholds:
    spike_ratio: float = 10.0  # preceding-window spike that implicates exploding gradients
    lookback: int = 50  # steps before the failure searched for a cause


class Nonfinite(Rule):
    id = "nonfinite"
    title = "Non-finite loss or gradients"
    severity = "error"
    requires = ("loss",)
    Thresholds = Thresholds
    explains = ("exploding_gradients", "lr_too_high", "loss_plateau")
    fixes = (fixes.FIND_NONFINITE_SOURCE, fixes.CLIP_GRAD_NORM, fixes.LOWER_LR, fixes.VARIANCE_INIT)

    def check(self, run, t):
        step = first_nonfinite_step(run)
        if step is None:
            return []
        steps = run.steps
        what = [c for c in ("loss", "grad_norm") if step in run.nonfinite.get(c, [])]
        params = []
        for event in run.events_of("nonfinite"):
            if event.get("what") == "parameter_gradient" and isinstance(event.get("params"), list):
                params = [str(p) for p in event["params"]]
                break
        if not params and not run.grad_norms.empty:
            after = run.grad_norms.loc[run.grad_norms.index >= step]
            if len(after):
                row = after.iloc[0]
                params = [str(p) for p in row.index[~np.isfinite(row.to_numpy()) & row.notna().to_numpy()]]
        before = steps.loc[(steps.index < step) & (steps.index >= step - t.lookback)]
        evidence = {"first_nonfinite_step": step, "nonfinite": what or ["gradient"], "params": params[:10]}
        causes = []
        ranked = list(self.fixes)
        bad_inputs = self._nonfinite_inputs(run, step)
        if bad_inputs:
            evidence["inputs_nonfinite_at"] = bad_inputs
            causes.append(f"inputs sampled at step {bad_inputs[0]:,} already contained NaN/Inf")
        if "grad_norm" in before and before["grad_norm"].notna().sum() >= 5:
            g = before["grad_norm"].dropna()
            ratio = float(g.max() / max(g.median(), 1e-30))
            evidence["grad_norm_max_before"] = float(g.max())
            evidence["grad_norm_median_before"] = float(g.median())
            if ratio >= t.spike_ratio and not bad_inputs:
                causes.append(f"the gradient norm spiked to {fmt(ratio)}x its median in the {t.lookback} steps before")
                ranked = [fixes.CLIP_GRAD_NORM, fixes.LOWER_LR, fixes.FIND_NONFINITE_SOURCE, fixes.VARIANCE_INIT]
        if "lr" in steps and steps["lr"].notna().any():
            evidence["lr_at_failure"] = float(steps["lr"].ffill().loc[:step].iloc[-1])
        last_loss = before["loss"].dropna() if "loss" in before else None
        if last_loss is not None and len(last_loss):
            evidence["last_finite_loss"] = float(last_loss.iloc[-1])
        subject = " and ".join("loss" if c == "loss" else "gradient norm" for c in what) or "gradients"
        summary = f"The {subject} became non-finite at step {step:,}"
        if params:
            summary += f"; {len(params)} parameter(s) had NaN/Inf gradients, first in model order `{params[0]}`"
        summary += f"; {causes[0]}." if causes else "; no spike or bad input preceded it in the recorded data."
        lo = max(int(steps.index.min()), step - t.lookback) if len(steps) else step
        return [
            self.finding(
                summary,
                steps=(step, int(steps.index.max()) if len(steps) else step),
                layers=params[:10],
                evidence=evidence,
                charts=[
                    Chart("steps:loss", "Training loss", highlight=(step, step), log_y=True),
                    Chart("steps:grad_norm", "Global gradient norm", highlight=(lo, step), log_y=True),
                ],
                fixes=ranked,
            )
        ]

    @staticmethod
    def _nonfinite_inputs(run, step):
        found = []
        for stat in ("min", "max", "mean"):
            frame = run.inputs.get(stat)
            if frame is None or frame.empty:
                continue
            near = frame.loc[frame.index <= step]
            values = near.to_numpy()
            bad = (~np.isfinite(values)).any(axis=1)
            found += [int(s) for s in near.index[bad]]
        return sorted(set(found))
