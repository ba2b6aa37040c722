"""Model inputs on a large scale or far from zero.

What it detects:
    Statistics of each floating-point model input, sampled through the run: a
    mean far from zero or a standard deviation far from one (over the whole
    tensor), e.g. raw pixel values in [0, 255] or sensor counts.

Why it matters:
    The first layer's pre-activations scale with the input: large inputs saturate
    tanh/sigmoid units and kill ReLUs from the first step, make the first layer's
    gradients huge next to the others, and stretch the loss surface so one
    learning rate cannot fit all directions.

Evidence shown:
    Mean, std, min and max of each input at the first sampled step.

How to fix (cited):
    Standardize with training-set statistics; squash unbounded ranges first;
    bring all dimensions to one scale.

Thresholds:
    max_abs_mean: |mean| above 5; max_std: std above 10 (images scaled to [0, 1]
    or [-1, 1] and standardized features pass).

Known false positives:
    Inputs that are already embedded or are indices (integer tensors) are not
    checked. Features on a common but large scale that the first layer is
    initialized for (rare) are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import fmt


@dataclass(frozen=True)
class Thresholds:
    max_abs_mean: float = 5.0  # |mean| of an input tensor above this is an offset to remove
    max_std: float = 10.0  # std of an input tensor above this is a scale to remove


class UnnormalizedInputs(Rule):
    id = "unnormalized_inputs"
    title = "Unnormalized inputs"
    severity = "warning"
    requires = ("inputs",)
    Thresholds = Thresholds
    fixes = (fixes.NORMALIZE_INPUTS, fixes.SQUASH_INPUTS, fixes.SAME_SCALE)

    def check(self, run, t):
        mean, std = run.inputs["mean"], run.inputs["std"]
        flagged = {}
        for name in mean.columns:
            m = mean[name].dropna()
            s = std[name].dropna() if name in std else m.iloc[:0]
            m, s = m[np.isfinite(m.to_numpy())], s[np.isfinite(s.to_numpy())]
            if m.empty:
                continue
            mu, sd = float(m.median()), float(s.median()) if len(s) else 0.0
            if abs(mu) > t.max_abs_mean or sd > t.max_std:
                first = int(m.index[0])
                flagged[name] = {
                    "mean": mu,
                    "std": sd,
                    "min": float(run.inputs["min"].loc[first, name]),
                    "max": float(run.inputs["max"].loc[first, name]),
                }
        if not flagged:
            return []
        name, stats = next(iter(flagged.items()))
        return [
            self.finding(
                f"Input `{name}` has mean {fmt(stats['mean'])} and std {fmt(stats['std'])} "
                f"(range {fmt(stats['min'])} to {fmt(stats['max'])}); the network expects roughly mean 0, std 1.",
                steps=(int(mean.index.min()), int(mean.index.max())),
                layers=list(flagged),
                evidence={"inputs": flagged},
                charts=[
                    Chart("inputs:mean", "Input mean", columns=tuple(flagged)),
                    Chart("inputs:std", "Input std", columns=tuple(flagged), threshold=t.max_std, log_y=True),
                ],
            )
        ]
