"""Weight decay on recurrent weights shrinks their spectrum below 1 and the RNN stops learning.

What it detects:
    Recurrent matrices (weight_hh_* of RNN/LSTM/GRU) in a parameter group with
    weight decay / L2, whose largest singular value ends well below 1 after
    shrinking, while the training loss stalls. With weight decay on recurrent
    weights but no damage visible, it leaves an info note.

Why it matters:
    This is the case of document 000: a bidirectional RNN that fits its data
    without L2 stops learning with it. Pascanu, Mikolov and Bengio ("On the
    difficulty of training recurrent neural networks") show that an L1/L2 term
    on the recurrent weights keeps their largest singular value below 1: that
    rules out exploding gradients, but confines the model to a single point
    attractor at the origin, where whatever enters the state fades
    geometrically (by sigma_max per step). The network cannot keep long-term
    memory traces, so sequence tasks that need memory stall.

Evidence shown:
    sigma_max of each recurrent matrix at the start and end, the weight decay
    applied to it, the memory horizon (steps until a signal fades 100x, about
    ln(0.01)/ln(sigma_max)), and the loss at start and end.

How to fix (cited):
    Exempt recurrent weights from decay; clip instead of L2 if explosion was the
    worry; dropout only on non-recurrent connections; layer norm in the cell.

Thresholds:
    sigma_ceiling: sigma_max at the end below 0.9 (healthy zoo RNNs sit at 1.5-8).
    shrink_ratio: end over start below 0.7. stall: the loss improved by less than
    10% of its start.

Known false positives:
    An RNN whose task needs only a few steps of memory can work with sigma_max < 1;
    then the loss does not stall and only the info note is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import ends, fmt, loss_curve


@dataclass(frozen=True)
class Thresholds:
    sigma_ceiling: float = 0.9  # sigma_max at the end of the run below this is a fading memory
    shrink_ratio: float = 0.7  # sigma_max end / start below this means decay pulled it down
    stall: float = 0.1  # the loss improved by less than this fraction of its start


class OverRegularizedRnn(Rule):
    id = "over_regularized_rnn"
    title = "Over-regularized RNN: L2 fades its memory"
    severity = "error"
    requires = ("model", "optimizer")
    Thresholds = Thresholds
    explains = ("loss_plateau", "vanishing_gradients", "over_regularized")
    fixes = (fixes.EXEMPT_RECURRENT, fixes.CLIP_INSTEAD_OF_L2, fixes.RNN_DROPOUT, fixes.LAYER_NORM_RNN)

    def check(self, run, t):
        params = run.params
        decayed = params[(params["recurrent"]) & (params["weight_decay"].fillna(0) > 0)]
        if decayed.empty:
            return []
        names = [str(n) for n in decayed.index]
        decay = {n: float(decayed.loc[n, "weight_decay"]) for n in names}
        shrunk = {}
        for name in names:
            if name not in run.spectra:
                continue
            sigma = run.spectra[name].dropna()
            if len(sigma) >= 2:
                start, end = float(sigma.iloc[0]), float(sigma.iloc[-1])
                if end < t.sigma_ceiling and end < t.shrink_ratio * start:
                    shrunk[name] = (start, end)
        loss = loss_curve(run)
        stalled = False
        if len(loss) >= 20:
            l_start, l_end = ends(loss)
            stalled = l_end > (1 - t.stall) * l_start
        charts = [Chart("spectra", "Largest singular value of recurrent weights", columns=tuple(names[:4]), threshold=1.0)]
        if shrunk and stalled:
            name, (start, end) = next(iter(shrunk.items()))
            horizon = max(math.log(0.01) / math.log(end), 1.0) if 0 < end < 1 else 1.0
            return [
                self.finding(
                    f"Weight decay {fmt(decay[name])} on `{name}` shrank its largest singular value from {fmt(start)} "
                    f"to {fmt(end)}: the state forgets 99% of a signal within {fmt(horizon)} time step(s), and the loss "
                    f"stalled at {fmt(l_end)} (start {fmt(l_start)}).",
                    steps=(int(run.spectra.index.min()), int(run.spectra.index.max())),
                    layers=list(shrunk),
                    evidence={
                        "weight_decay": decay,
                        "sigma_max_start_end": {k: list(v) for k, v in shrunk.items()},
                        "memory_horizon_steps": horizon,
                        "loss_start": l_start,
                        "loss_end": l_end,
                    },
                    charts=[*charts, Chart("steps:loss", "Training loss")],
                )
            ]
        return [
            self.finding(
                f"{len(names)} recurrent weight matrix(es) are under weight decay ({', '.join(f'`{n}`' for n in names[:3])}); "
                "no memory loss is visible yet, but L2 on recurrent weights pulls their spectrum below 1.",
                layers=names,
                evidence={"weight_decay": decay},
                charts=charts if run.has("spectra") else [],
                severity="info",
                title="Recurrent weights under weight decay",
            )
        ]
