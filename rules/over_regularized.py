"""Weight decay drags the weights to zero and the loss stalls.

What it detects:
    Weight matrices under weight decay / L2 whose norm ends below `collapse` of
    where it started, while the training loss improved by less than `stall`.
    Recurrent matrices are left to `over_regularized_rnn`, which explains this
    finding when both fire. Units that die because their weights vanished are
    folded in as a consequence.

Why it matters:
    Regularization is meant to trade a little training loss for generalization.
    When the penalty outweighs the data gradient, the weights shrink toward zero
    and the network computes (nearly) a constant: training and validation loss
    both sit at the chance level. With Adam the effect is much stronger than the
    number suggests, because the L2 gradient is normalized like any other: a
    weight with a small data gradient is pulled toward zero at the full rate.

Evidence shown:
    The weight decay, the weight norms at the start and the end, the optimizer,
    and the loss at start and end.

How to fix (cited):
    A smaller decay; AdamW instead of L2 through Adam; no decay on biases and
    normalization parameters.

Thresholds:
    collapse: the end norm below 10% of the start norm (healthy zoo runs under
    weight decay keep 80-300% of their initial norm). stall: the loss improved by
    less than 10% of its start.

Known false positives:
    Layers that are meant to be pruned away by a strong penalty (L1 sparsity) do
    shrink; the loss stall condition keeps a working run out.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import ends, finite_part, fmt, loss_curve, weight_params


@dataclass(frozen=True)
class Thresholds:
    collapse: float = 0.1  # end weight norm over start weight norm
    stall: float = 0.1  # the loss improved by less than this fraction of its start


class OverRegularized(Rule):
    id = "over_regularized"
    title = "Weight decay drives the weights to zero"
    severity = "error"
    requires = ("weight_norms", "loss")
    Thresholds = Thresholds
    explains = ("loss_plateau", "vanishing_gradients", "dead_relu")
    fixes = (fixes.LOWER_WEIGHT_DECAY, fixes.USE_ADAMW, fixes.EXEMPT_BIAS_AND_NORM)

    def check(self, run, t):
        params = run.params
        decayed = [
            p
            for p in weight_params(run)
            if p in run.weight_norms and not params.loc[p, "recurrent"] and (params.loc[p, "weight_decay"] or 0) > 0
        ]
        norms = finite_part(run.weight_norms[decayed], run).dropna(how="all") if decayed else None
        loss = loss_curve(run)
        if norms is None or len(norms) < 2 or len(loss) < 20:
            return []
        start, end = norms.iloc[0], norms.iloc[-1]
        collapsed = [p for p in decayed if start[p] > 0 and end[p] < t.collapse * start[p]]
        l_start, l_end = ends(loss)
        if not collapsed or l_end <= (1 - t.stall) * l_start:
            return []
        first = collapsed[0]
        optimizer = str((run.header.get("optimizer") or {}).get("class", ""))
        ranked = (
            [fixes.USE_ADAMW, fixes.LOWER_WEIGHT_DECAY, fixes.EXEMPT_BIAS_AND_NORM]
            if optimizer in ("Adam", "Adamax", "NAdam", "RAdam")
            else list(self.fixes)
        )
        summary = (
            f"Weight decay {fmt(float(params.loc[first, 'weight_decay']))} shrank `{first}` to "
            f"{fmt(100 * float(end[first] / start[first]))}% of its initial norm"
            + (f" ({len(collapsed)} weight matrices in all)" if len(collapsed) > 1 else "")
            + f", and the loss stalled at {fmt(l_end)} (start {fmt(l_start)})"
            + (
                f"; {optimizer} applies the L2 term through its adaptive scaling"
                if optimizer in ("Adam", "Adamax", "NAdam", "RAdam")
                else ""
            )
            + "."
        )
        return [
            self.finding(
                summary,
                steps=(int(norms.index[0]), int(norms.index[-1])),
                layers=collapsed,
                evidence={
                    "weight_decay": {p: float(params.loc[p, "weight_decay"]) for p in collapsed},
                    "norm_start_end": {p: [float(start[p]), float(end[p])] for p in collapsed},
                    "optimizer": optimizer,
                    "loss_start": l_start,
                    "loss_end": l_end,
                },
                charts=[
                    Chart("weight_norms", "Weight norm per parameter", columns=tuple(collapsed[:6]), log_y=True),
                    Chart("steps:loss", "Training loss"),
                ],
                fixes=ranked,
            )
        ]
