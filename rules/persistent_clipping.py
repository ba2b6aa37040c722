"""Gradient clipping rescales most steps: the clip threshold, not the learning rate, sets the step size.

What it detects:
    In the second half of the run, most steps called ``clip_grad_norm_`` with a pre-clip gradient norm well above
    ``max_norm`` (recorded by doctor.watch, which observes ``torch.nn.utils.clip_grad_norm_``). Where the
    pre-clip norm was not recorded (the function was bound before ``watch()``, or the log came from elsewhere),
    the recorded gradient norm sitting at exactly the same ceiling on most steps gives the clipping away.
    It also notes a clip called before ``scaler.unscale_(optimizer)`` under GradScaler.

Why it matters:
    Clipping is meant for the rare oversized step. When it rescales nearly every step, training has quietly become
    normalized gradient descent with step size lr x max_norm: the learning rate stops meaning what it says, and
    whatever makes the gradient huge (an init that is far too large, unscaled inputs or targets, a learning rate
    that is too high) is hidden behind a gradient norm that looks calm. Clipping the scaled gradients of mixed
    precision clips them thousands of times too hard.

Evidence shown:
    The share of clipped steps in the second half, the median and largest pre-clip norm over max_norm, and the
    pre-clip gradient norm against the recorded (post-clip) one with max_norm drawn.

How to fix (cited):
    Find and fix what makes the gradient large (the init, the data scale, the learning rate); then set max_norm
    just above the typical pre-clip norm so that it catches only spikes.

Thresholds:
    clipped_share: 50% of the steps of the second half clipped. min_ratio: their median pre-clip norm at least 2x
    max_norm (each clipped step at least halved). Healthy zoo runs that clip at 1.0 clip 0-1% of the second half
    (an LSTM and a tanh RNN) and 0% (a regression on unit-scale targets); the faulty ones clip 100% of it, by a
    median 380x (targets x100) and over 1,000x (an N(0, 1) init). pinned_share: 50% of the second half's recorded
    norms within pinned_tolerance (1e-4, relative) of their maximum, when no pre-clip norm was recorded.
    The first half is left out: clipping the first steps of a run is what clipping is for.

Known false positives:
    Recipes that clip on purpose at a low threshold throughout (some large-language-model and reinforcement-
    learning setups clip at 1.0 while the norm sits at 2-3) are flagged; with an adaptive optimizer such as Adam,
    whose steps barely depend on the gradient's scale, uniform clipping costs little, but it still hides the
    norm's true size. Raise min_ratio with ``--set persistent_clipping.min_ratio=5`` if that is your recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, span


@dataclass(frozen=True)
class Thresholds:
    clipped_share: float = 0.5  # share of second-half steps whose pre-clip norm exceeded max_norm
    min_ratio: float = 2.0  # median pre-clip norm / max_norm over those clipped steps
    pinned_share: float = 0.5  # without pre-clip norms: share of second-half norms at the ceiling
    pinned_tolerance: float = 1e-4  # relative distance from the ceiling that counts as "at" it
    min_steps: int = 20  # steps needed in the second half


class PersistentClipping(Rule):
    id = "persistent_clipping"
    title = "Gradient clipping rescales most steps"
    severity = "warning"
    requires = ("grad_norm",)
    Thresholds = Thresholds
    fixes = (fixes.CLIP_HIDES_CAUSE, fixes.VARIANCE_INIT, fixes.SCALE_TARGETS, fixes.LOWER_LR, fixes.CLIP_ONLY_SPIKES)

    def check(self, run, t):
        steps = finite_part(run.steps, run)
        late = steps.loc[steps.index >= (steps.index.max() + 1) / 2] if len(steps) else steps
        unscaled = run.events_of("clip_before_unscale")
        if run.has("grad_norm_preclip") and "clip_max_norm" in late:
            return self._measured(late, t, unscaled)
        return self._pinned(late, t)

    def _measured(self, late, t, unscaled):
        calls = late[["grad_norm_preclip", "clip_max_norm"]].dropna()
        calls = calls[np.isfinite(calls.to_numpy()).all(axis=1) & (calls["clip_max_norm"] > 0)]
        if len(calls) < t.min_steps:
            return []
        ratio = calls["grad_norm_preclip"] / calls["clip_max_norm"]
        over = ratio[ratio > 1.0]
        share = len(over) / len(ratio)
        median_ratio = float(over.median()) if len(over) else 0.0
        if share < t.clipped_share or median_ratio < t.min_ratio:
            return []
        max_norm = float(calls["clip_max_norm"].median())
        peak = int(ratio.idxmax())
        evidence = {
            "clipped_share_second_half": share,
            "median_preclip_over_max_norm": median_ratio,
            "peak_preclip_over_max_norm": float(ratio.max()),
            "peak_step": peak,
            "max_norm": max_norm,
            "median_preclip_norm": float(calls["grad_norm_preclip"].median()),
        }
        summary = (
            f"clip_grad_norm_(max_norm={fmt(max_norm)}) rescaled {fmt(100 * share)}% of the steps in the second half "
            f"of the run, by a median {fmt(median_ratio)}x (pre-clip norm {fmt(evidence['median_preclip_norm'])}, "
            f"peak {fmt(float(ratio.max()) * max_norm)} at step {peak:,}): the clip, not the learning rate, sets the "
            "step size, and the gradient's real size is hidden"
        )
        ranked = self.fixes
        if unscaled:
            evidence["clip_before_unscale_step"] = unscaled[0].get("step")
            summary = (
                "clip_grad_norm_ ran before scaler.unscale_(optimizer), on gradients still multiplied by the loss "
                f"scale (first at step {unscaled[0].get('step')}); " + summary
            )
            ranked = (fixes.UNSCALE_THEN_CLIP, *self.fixes)
        charts = [
            Chart(
                "steps:grad_norm_preclip",
                "Gradient norm before and after clipping; max_norm dashed",
                columns=("grad_norm",),
                highlight=span(over.index),
                threshold=max_norm,
                log_y=True,
            )
        ]
        return [self.finding(summary + ".", steps=span(over.index), evidence=evidence, charts=charts, fixes=ranked)]

    def _pinned(self, late, t):
        if "grad_norm" not in late:
            return []
        g = late["grad_norm"].dropna()
        g = g[np.isfinite(g.to_numpy()) & (g > 0)]
        if len(g) < t.min_steps:
            return []
        ceiling = float(g.max())
        at = g[(ceiling - g) <= t.pinned_tolerance * ceiling]
        share = len(at) / len(g)
        if share < t.pinned_share:
            return []
        evidence = {"pinned_share_second_half": share, "ceiling": ceiling}
        summary = (
            f"The gradient norm sits at exactly {fmt(ceiling)} on {fmt(100 * share)}% of the steps in the second half "
            "of the run: a clipping threshold that most steps hit. How far above it the gradients were is not in the "
            "log (call clip through torch.nn.utils after doctor.watch(), or run.log(grad_norm_preclip=norm, "
            "clip_max_norm=max_norm) with the norm it returns)"
        )
        charts = [Chart("steps:grad_norm", "Recorded gradient norm (after clipping)", threshold=ceiling, log_y=True)]
        return [self.finding(summary + ".", steps=span(at.index), evidence=evidence, charts=charts)]
