"""Sigmoid activations stacked in a deep network.

What it detects:
    Four or more sigmoid hidden activations in the forward path (recurrent gates
    inside LSTM/GRU cells and a final output sigmoid do not count).

Why it matters:
    The sigmoid's derivative is at most 0.25, so every sigmoid layer shrinks the
    gradient by 4x or more on its way down: a deep stack starves its early layers
    of gradient. Its outputs are also all positive, which slows learning in the
    next layer. ReLU does not shrink gradients this way.

Evidence shown:
    The sigmoid layers in forward order and, when recorded, the ratio of the
    first to the last weight layer's gradient size.

How to fix (cited):
    ReLU-family hidden activations; variance-scaling init; normalization layers.

Thresholds:
    min_layers: 4 sigmoid hidden layers.

Known false positives:
    Networks whose sigmoids act as gates (attention, highway or gating units)
    rather than as hidden activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import activation_kind, module_order, rms, weight_params


@dataclass(frozen=True)
class Thresholds:
    min_layers: int = 4  # sigmoid hidden layers in the forward path


class DeepSigmoid(Rule):
    id = "deep_sigmoid"
    title = "Deep stack of sigmoid activations"
    severity = "warning"
    requires = ("model",)
    Thresholds = Thresholds
    fixes = (fixes.USE_RELU, fixes.VARIANCE_INIT, fixes.NORM_LAYERS)

    def check(self, run, t):
        order = module_order(run)
        sigmoids = [m for m in order[:-1] if activation_kind(run, m) == "sigmoid"]
        if len(sigmoids) < t.min_layers:
            return []
        evidence = {"sigmoid_layers": sigmoids}
        summary = f"{len(sigmoids)} sigmoid activations are stacked in the forward path (first `{sigmoids[0]}`)"
        weights = [p for p in weight_params(run) if p in run.grad_norms]
        charts = []
        if len(weights) >= 2:
            grads = rms(run.grad_norms[weights], run).median()
            if grads.iloc[-1] > 0:
                ratio = float(grads.iloc[0] / grads.iloc[-1])
                evidence["first_over_last_rms_grad"] = ratio
                summary += f"; the first weight layer gets {ratio:.1e} times the gradient of the last"
                charts.append(Chart("grad_norms", "Gradient norm per parameter", columns=(weights[0], weights[-1]), log_y=True))
        return [self.finding(summary + ".", layers=sigmoids, evidence=evidence, charts=charts)]
