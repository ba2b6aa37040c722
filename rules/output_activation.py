"""An activation function applied to the network's output.

What it detects:
    The last module the forward pass calls is an activation: ReLU, tanh and
    their relatives are flagged as a warning; sigmoid and softmax as info (they
    are right only with a loss that expects probabilities, and even then the
    logits version of the loss is the stable choice).

Why it matters:
    Losses such as CrossEntropyLoss and BCEWithLogitsLoss apply their own
    squashing to raw scores. A ReLU on the output cuts every negative logit to
    zero (those classes can never be pushed down, and their gradient dies); a
    tanh caps the logits at +-1 so the loss can never get small; a softmax before
    CrossEntropyLoss applies softmax twice and flattens the gradients.

Evidence shown:
    The output module, its type, and the fraction of output values that are
    exactly zero or saturated.

How to fix (cited):
    Make the output layer linear and let the loss apply its own function.

Thresholds:
    None: the model structure is the criterion.

Known false positives:
    Regression targets that are genuinely bounded ([0, inf) or [-1, 1]) can use
    such an output on purpose.
"""

from __future__ import annotations

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import activation_kind, module_order, module_type


class OutputActivation(Rule):
    id = "output_activation"
    title = "Activation on the output layer"
    severity = "warning"
    requires = ("model",)
    fixes = (fixes.NO_OUTPUT_ACTIVATION,)

    def check(self, run, t):
        order = module_order(run)
        if not order:
            return []
        last = order[-1]
        kind = activation_kind(run, last)
        if kind not in ("relu", "relu_like", "tanh", "sigmoid", "softmax"):
            return []
        kind_name = module_type(run, last)
        evidence = {"output_module": last, "type": kind_name}
        zero = run.activations.get("zero_frac")
        if zero is not None and last in zero:
            evidence["output_zero_fraction"] = float(zero[last].median())
        info = kind in ("sigmoid", "softmax")
        summary = f"The model's output goes through `{last}` ({kind_name}) before the loss"
        if "output_zero_fraction" in evidence and kind in ("relu", "relu_like"):
            summary += f"; {evidence['output_zero_fraction']:.0%} of the outputs are exactly zero"
        summary += (
            "; correct only with a loss that expects probabilities, and the logits version of that loss is more stable."
            if info
            else "; the loss cannot use negative or large logits."
        )
        charts = (
            [Chart("activations:zero_frac", "Fraction of zero outputs", columns=(last,))]
            if "output_zero_fraction" in evidence
            else []
        )
        return [
            self.finding(
                summary,
                layers=[last],
                evidence=evidence,
                charts=charts,
                severity="info" if info else None,
            )
        ]
