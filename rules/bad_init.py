"""Weights initialized at the wrong scale: activations explode or collapse layer by layer at step 0.

What it detects:
    At step 0 (before any update), the RMS of each Linear/Conv weight compared with
    the variance-scaling (He) value sqrt(2 / fan_in), together with the layer's
    gain: the std of its output over the std of its input. A layer whose weights
    are far off that scale and whose gain is far from 1 is badly initialized. If
    the next layer is a normalization layer, the finding says batch norm is
    masking it (document 002's case); a gradient clip that rescales most steps
    because of it is shown as a consequence. The initial loss against chance level
    (ln C for C classes) is shown as supporting evidence.

Why it matters:
    With too large a scale, every layer multiplies the signal: the outputs and
    gradients of a deep stack blow up, tanh/sigmoid units saturate and the first
    updates are huge. With too small a scale the signal dies out. Batch norm
    rescales each layer's output and so hides the problem, until it is removed or
    the batch statistics get noisy; then the network turns NaN within a few steps.

Evidence shown:
    Per flagged layer: weight RMS, the He value, their ratio, the layer's gain at
    step 0; the overall activation growth; the initial loss and ln C.

How to fix (cited):
    Variance-scaling init; when batch norm follows the layers, test without it.

Thresholds:
    weight_high/weight_low: weight RMS over He value above 3 or below 0.1
    (PyTorch's default init is 0.41, Xavier and LeCun sit between 0.4 and 1).
    gain_high/gain_low: the layer's output/input std above 3 or below 0.1 at step 0
    (default-initialized zoo layers have gains of 0.3-1.5).

Known false positives:
    Layers deliberately initialized large or small (zero-initialized last layers of
    residual blocks, scaled-down output layers) are flagged only if their gain is
    also extreme; zero-init gives a gain of 0 and is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import WEIGHT_MODULE_TYPES, chance_loss, fmt, module_order, module_type, ratio_text


@dataclass(frozen=True)
class Thresholds:
    weight_high: float = 3.0  # weight RMS / He std above this is too large
    weight_low: float = 0.1  # ... below this is too small
    gain_high: float = 3.0  # output std / input std of the layer at step 0
    gain_low: float = 0.1


class BadInit(Rule):
    id = "bad_init"
    title = "Bad weight initialization"
    severity = "error"
    requires = ("activations", "weight_norms")
    Thresholds = Thresholds
    fixes = (fixes.VARIANCE_INIT, fixes.VARIANCE_BY_FAN, fixes.BN_HIDES_INIT)
    # Oversized weights make oversized gradients: a clip that rescales every step is then the init's doing.
    explains = ("persistent_clipping",)

    def check(self, run, t):
        weights0 = run.weight_norms.iloc[0]
        if int(run.weight_norms.index[0]) != 0:
            return []
        std0 = run.activations["std"]
        if std0.empty or int(std0.index[0]) != 0:
            return []
        std0 = std0.iloc[0]
        order = [m for m in module_order(run) if m in std0.index]
        input_std = (
            float(run.inputs["std"].iloc[0].dropna().iloc[0])
            if run.has("inputs") and len(run.inputs["std"].iloc[0].dropna())
            else math.nan
        )
        flagged = []
        for i, module in enumerate(order):
            if module_type(run, module) not in WEIGHT_MODULE_TYPES:
                continue
            weight = f"{module}.weight" if module != "<model>" else "weight"
            if weight not in weights0 or weight not in run.params.index:
                continue
            shape = run.params.loc[weight, "shape"]
            numel = float(run.params.loc[weight, "numel"])
            fan_in = numel / shape[0] if isinstance(shape, list) and shape and shape[0] else math.nan
            he = math.sqrt(2.0 / fan_in) if fan_in and fan_in > 0 else math.nan
            scale = float(weights0[weight]) / math.sqrt(numel) / he
            in_std = float(std0[order[i - 1]]) if i > 0 else input_std
            gain = float(std0[module]) / in_std if in_std and in_std > 0 else math.nan
            wrong_scale = scale > t.weight_high or scale < t.weight_low
            wrong_gain = gain > t.gain_high or (0 < gain < t.gain_low)
            if wrong_scale and wrong_gain:
                following = order[i + 1] if i + 1 < len(order) else ""
                masked = run.modules["activation"].get(following) == "norm"
                flagged.append({"layer": module, "weight_rms_over_he": scale, "gain": gain, "masked_by_norm": bool(masked)})
        if not flagged:
            return []
        first = flagged[0]
        direction = "too large" if first["weight_rms_over_he"] > 1 else "too small"
        masked = [f["layer"] for f in flagged if f["masked_by_norm"]]
        evidence = {"layers": flagged}
        if order:
            growth = float(std0[order[-1]]) / input_std if input_std and input_std > 0 else math.nan
            evidence["output_std_over_input_std"] = growth
        chance = chance_loss(run)
        if chance and run.has("loss"):
            loss0 = float(run.loss.iloc[0])
            evidence |= {"initial_loss": loss0, "chance_loss": chance}
        summary = (
            f"{len(flagged)} layer(s) start with weights {direction}: `{first['layer']}` has weight RMS "
            f"{ratio_text(first['weight_rms_over_he'])} the variance-scaling value and multiplies the activation "
            f"std by {fmt(first['gain'])} at step 0"
        )
        if masked:
            summary += f"; batch norm after {len(masked)} of them rescales the output and masks the bad init"
        if "initial_loss" in evidence and evidence["initial_loss"] > 2 * chance:
            summary += f"; initial loss {fmt(evidence['initial_loss'])} vs chance {fmt(chance)}"
        # The batch-norm test run is advice for a model whose batch norm masks the init; without one it is noise.
        ranked = (fixes.VARIANCE_INIT, fixes.BN_HIDES_INIT, fixes.VARIANCE_BY_FAN) if masked else self.fixes[:2]
        return [
            self.finding(
                summary + ".",
                steps=(0, 0),
                layers=[f["layer"] for f in flagged],
                evidence=evidence,
                charts=[Chart("profile:std", "Activation std per layer at step 0", columns=tuple(order), log_y=True)],
                fixes=ranked,
            )
        ]
