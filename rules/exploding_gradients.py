"""Gradient norms that spike far above their running level or grow geometrically.

What it detects:
    A gradient-norm spike far above the median of the preceding steps that drives
    the loss above where training started; or the largest singular value of a
    recurrent matrix multiplying between two samples (the weights blown away by
    one step); or a sustained geometric rise of the gradient norm over the run.
    It names the parameter whose own norm jumped most at the first spike.
    Where the run clips with ``clip_grad_norm_``, it judges the norm before clipping
    (doctor.watch records it); the norm after clipping would hide the spikes.

Why it matters:
    One oversized step throws the weights far from where they were: a recurrent
    matrix blown up this way saturates its units and the run rarely recovers.
    Left alone, growth ends in NaN. RNNs are prone to it because the gradient
    through time multiplies the recurrent matrix once per step.

Evidence shown:
    The spike's height against the running median, the step, the parameter where
    it starts, and the recurrent spectral norm before and after.

How to fix (cited):
    Clipping first; then a lower learning rate and warm-up.

Thresholds:
    spike_ratio: 10x the median of the preceding `window` steps, and the loss within
    a step of it above `loss_jump` (1.5x) its initial level. Healthy zoo runs
    have gradient spikes of up to 26x (an LSTM at the moment it solves its task),
    but their loss falls, or stays far below its start, at those steps.
    sigma_jump: 3x between two spectral samples (healthy LSTMs grow about 1.5x per
    sample). growth_ratio: the late median over the early median, 100x.

Known false positives:
    A spike the run recovers from (the loss ends back below where it was before
    the spike) is reported as a warning, not an error: it was real, and clipping
    still protects the next one. If the run already clips and the clip cut that
    spike, a recovered spike is only an info note (the clip did its job; a zoo
    tanh RNN clipped at 1.0 has a 32x spike at step 12 at one seed and learns),
    and an unrecovered one is still an error, with a lower learning rate and
    warm-up as the advice instead of clipping. A deliberate learning-rate restart can produce
    one spike with a loss bump.
    Spikes need 5 steps of history, so a blow-up in the first steps is caught
    by the spectral jump or by `nonfinite` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, fmt, unclipped_grad_norm, weight_params


@dataclass(frozen=True)
class Thresholds:
    spike_ratio: float = 10.0  # a step's norm over the median of the preceding window
    window: int = 20  # steps of history a spike is measured against (at least 5 needed)
    loss_jump: float = 1.5  # the loss around the spike above this multiple of its initial level
    growth_ratio: float = 100.0  # median of the last 20% over the first 20% of the run
    sigma_jump: float = 3.0  # recurrent sigma_max multiplied by this between two samples
    spectral_limit: float = 1.0  # ... and ending above this


class ExplodingGradients(Rule):
    id = "exploding_gradients"
    title = "Exploding gradients"
    severity = "error"
    requires = ("grad_norm",)
    Thresholds = Thresholds
    explains = ("vanishing_gradients",)  # units saturated by blown-up weights stop passing gradient
    fixes = (fixes.CLIP_GRAD_NORM, fixes.LOWER_LR, fixes.WARMUP, fixes.VARIANCE_INIT)

    def check(self, run, t):
        preclip = run.has("grad_norm_preclip")
        g = finite_part(unclipped_grad_norm(run), run)
        g = g[np.isfinite(g.to_numpy())]
        if len(g) < 10:
            return []
        spikes, ratio, baseline = self._harmful_spikes(run, g, t)
        fifth = max(len(g) // 5, 1)
        growth = float(g.iloc[-fifth:].median() / max(g.iloc[:fifth].median(), 1e-30))
        jumps = self._recurrent_jumps(run, t)
        if spikes.empty and growth < t.growth_ratio and not jumps:
            return []
        evidence = {"growth_late_over_early": growth}
        if not spikes.empty:
            first = int(spikes.index[0])
            peak = int(ratio.loc[spikes.index].idxmax())
            evidence |= {
                "first_spike_step": first,
                "spike_steps": len(spikes),
                "peak_ratio": float(ratio.loc[peak]),
                "peak_step": peak,
                "peak_grad_norm": float(g.loc[peak]),
                "median_before_peak": float(baseline.loc[peak]),
            }
            where = (first, int(spikes.index[-1]))
            summary = (
                f"The gradient norm spiked to {fmt(float(ratio.loc[peak]))}x its running median at step {peak:,} "
                f"({fmt(float(g.loc[peak]))} vs {fmt(float(baseline.loc[peak]))}) and the loss jumped with it"
            )
        elif jumps:
            name, (before, after, step) = next(iter(jumps.items()))
            earlier = run.spectra.index[run.spectra.index < step]
            start = int(earlier.max()) if len(earlier) else int(g.index[0])
            window = g.loc[start:step]
            peak = int(window.idxmax())
            level = float(g.loc[: max(start, int(g.index[0]) + 4)].median())
            first = peak
            where = (start, step)
            evidence |= {"peak_grad_step": peak, "peak_grad_norm": float(window.max()), "grad_norm_at_start": level}
            summary = (
                f"The largest singular value of `{name}` jumped from {fmt(before)} to {fmt(after)} between steps "
                f"{start:,} and {step:,}, while the gradient norm peaked at {fmt(float(window.max()))} at step {peak:,} "
                f"({fmt(float(window.max()) / max(level, 1e-30))}x its level at the start)"
            )
        else:
            first = int(g.index[-fifth])
            where = (int(g.index[0]), int(g.index[-1]))
            summary = f"The gradient norm grew {fmt(growth)}x from the start to the end of the run"
        layer = self._starting_layer(run, first) if not (jumps and spikes.empty) else None
        layers = [layer] if layer else []
        if layer:
            summary += f", starting in `{layer}`"
        if jumps:
            evidence["recurrent_sigma_max_jump"] = {k: list(v) for k, v in jumps.items()}
            if not spikes.empty:
                name, (before, after, _) = next(iter(jumps.items()))
                summary += f"; recurrent `{name}` went from sigma_max {fmt(before)} to {fmt(after)}"
            layers += [k for k in jumps if k not in layers]
        if preclip:
            evidence["before_clipping"] = True
            summary = summary.replace("gradient norm", "gradient norm (before clipping)", 1)
        charts = self._charts(run, where, layers, jumps, preclip)
        severity, ranked = None, None
        clip_limit = self._clip_limit_at(run, evidence.get("peak_step", first)) if preclip else None
        if clip_limit is not None:  # the run clips and the clip bit at the spike: "clip" is no longer the advice
            evidence["clipped_to"] = clip_limit
            ranked = (fixes.LOWER_LR, fixes.WARMUP, fixes.VARIANCE_INIT)
        if not spikes.empty and not jumps and self._recovered(run, where[1], t):
            if clip_limit is not None:
                severity = "info"
                summary += (
                    f"; clip_grad_norm_ cut it to {fmt(clip_limit)} and the loss recovered: the clip did the job "
                    "it is there for"
                )
            else:
                severity = "warning"
                summary += "; the loss recovered afterwards, but the next spike may not be survivable"
        elif clip_limit is not None:
            summary += f"; clip_grad_norm_ cut it to {fmt(clip_limit)}, and that was not enough"
        return [
            self.finding(
                summary + ".", steps=where, layers=layers, evidence=evidence, charts=charts, severity=severity, fixes=ranked
            )
        ]

    @staticmethod
    def _charts(run, where, layers, jumps, preclip):
        if preclip:
            title = "Gradient norm before clipping (and after)"
            charts = [Chart("steps:grad_norm_preclip", title, columns=("grad_norm",), highlight=where, log_y=True)]
        else:
            charts = [Chart("steps:grad_norm", "Global gradient norm", highlight=where, log_y=True)]
        if run.has("loss"):
            charts.append(Chart("steps:loss", "Training loss", highlight=where))
        if jumps:
            charts.append(Chart("spectra", "Largest singular value of recurrent weights", columns=tuple(jumps), threshold=1.0))
        elif not run.grad_norms.empty and layers:
            charts.append(
                Chart("grad_norms", "Gradient norm per parameter", columns=tuple(layers[:4]), highlight=where, log_y=True)
            )
        return charts

    @staticmethod
    def _clip_limit_at(run, step):
        """The max_norm the spike's step was clipped to, when clip_grad_norm_ actually cut that step."""
        if "clip_max_norm" not in run.steps or step not in run.steps.index:
            return None
        limit, before = run.steps.at[step, "clip_max_norm"], run.steps.at[step, "grad_norm_preclip"]
        if not (np.isfinite(limit) and np.isfinite(before)) or before <= limit:
            return None
        return float(limit)

    @staticmethod
    def _recovered(run, step, t):
        """The loss at the end of the run is back below its level before the spike."""
        loss = run.loss
        before = loss.loc[: step - 2].tail(20)
        after = loss.loc[step:].tail(max(20, len(loss) // 10))
        if before.empty or len(after) < 5:
            return False
        return float(after.median()) <= t.loss_jump * float(before.median())

    @staticmethod
    def _harmful_spikes(run, g, t):
        """Steps far above the running median where the loss also rose well above its starting level.

        Gradient spikes alone are common in healthy runs (the moment a model starts to solve
        its task, or near-zero losses in a sharp basin); a spike that drives the loss above
        where training began is the explosion that does damage.
        """
        baseline = g.rolling(t.window, min_periods=5).median().shift(1)
        ratio = (g / baseline.clip(lower=1e-30)).dropna()
        candidates = ratio[ratio >= t.spike_ratio]
        if candidates.empty or not run.has("loss"):
            return candidates.iloc[:0], ratio, baseline
        loss = run.loss
        initial = float(loss.iloc[: max(5, min(20, len(loss) // 10))].median())
        around = loss.rolling(3, center=True, min_periods=1).max().reindex(candidates.index)
        return candidates[around.to_numpy() >= t.loss_jump * initial], ratio, baseline

    @staticmethod
    def _starting_layer(run, step):
        """The parameter whose norm rose most, relative to its own history, at the first spike."""
        grads = run.grad_norms
        if grads.empty:
            return None
        at = grads.loc[grads.index >= step].head(1)
        history = grads.loc[grads.index < step].tail(20)
        if at.empty or history.empty:
            return None
        jump = at.iloc[0] / history.median().clip(lower=1e-30)
        jump = jump[np.isfinite(jump.to_numpy())]
        matrices = [p for p in weight_params(run) if p in jump.index]
        jump = jump[matrices] if matrices else jump  # name a weight matrix rather than a bias
        return str(jump.idxmax()) if len(jump) else None

    @staticmethod
    def _recurrent_jumps(run, t):
        """Recurrent matrices whose sigma_max multiplied between two samples and ended above the limit."""
        out = {}
        for column in run.spectra.columns:
            if "[" in column:
                continue  # whole matrices only; gate blocks are shown in the chart
            sigma = run.spectra[column].dropna()
            sigma = sigma[np.isfinite(sigma.to_numpy())]
            if len(sigma) < 2:
                continue
            factor = sigma / sigma.shift(1)
            step = factor.idxmax()
            if factor.max() >= t.sigma_jump and sigma.loc[step] > t.spectral_limit:
                out[column] = (float(sigma.shift(1).loc[step]), float(sigma.loc[step]), int(step))
        return out
