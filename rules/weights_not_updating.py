"""Parameters that receive gradients but never change, or are frozen.

What it detects:
    Parameters with non-zero gradients whose update/weight ratio is exactly zero
    on every sampled step because they are in no optimizer parameter group (a
    classic bug when building the optimizer from a subset of modules) or their
    group's learning rate is always zero. Parameters in a live group whose updates
    round to zero in float32 are vanishing gradients, not this. Parameters with requires_grad=False are
    reported as an info note: freezing is often intended.

Why it matters:
    A layer that is not trained stays at its random initialization; the rest of
    the network learns around a fixed random projection, and nothing in the loss
    curve says so.

Evidence shown:
    The parameters, their median gradient norm, whether they are in an optimizer
    group, and the group's learning rate.

How to fix (cited):
    Give the optimizer every trainable parameter.

Thresholds:
    None: an update ratio of exactly 0 on every sampled step is the criterion.

Known false positives:
    Parameters deliberately excluded from the optimizer but left with
    requires_grad=True (e.g. updated by hand): freeze them with
    requires_grad_(False) to make the intent explicit.
"""

from __future__ import annotations

import numpy as np

from doctor import fixes
from doctor.findings import Chart
from doctor.rule import Rule
from doctor.rulekit import finite_part, module_of


class WeightsNotUpdating(Rule):
    id = "weights_not_updating"
    title = "Weights not updating"
    severity = "error"
    requires = ("update_ratios", "grad_norms")
    explains = ("loss_plateau",)
    fixes = (fixes.ADD_TO_OPTIMIZER,)

    @staticmethod
    def _optimized(run, name):
        """In an optimizer group whose learning rate is not zero (tiny float32 updates can round to 0)."""
        group = run.params["group"].get(name)
        if group is None or group != group:
            return False
        lr = run.steps.get(f"lr_g{int(group)}")
        return lr is None or bool((lr.dropna() != 0).any())

    def check(self, run, t):
        findings = []
        params = run.params
        ratios = finite_part(run.update_ratios, run)
        grads = finite_part(run.grad_norms, run)
        stuck = []
        for name in params.index:
            if name not in ratios or name not in grads or not bool(params.loc[name, "requires_grad"]):
                continue
            r = ratios[name].dropna().to_numpy()
            g = grads[name].dropna().to_numpy()
            if len(r) >= 2 and np.all(r == 0) and np.nanmedian(g) > 0 and not self._optimized(run, name):
                stuck.append(name)
        if stuck:
            orphans = [p for p in stuck if params["group"].get(p) is None or params["group"].get(p) != params["group"].get(p)]
            modules = list(dict.fromkeys(module_of(run, p) for p in stuck))
            why = "are in no optimizer parameter group" if len(orphans) == len(stuck) else "have a zero learning rate"

            findings.append(
                self.finding(
                    f"{len(stuck)} parameter(s) get gradients but {why}: "
                    + ", ".join(f"`{p}`" for p in stuck[:5])
                    + (" ..." if len(stuck) > 5 else "")
                    + f" (module(s) {', '.join(f'`{m}`' for m in modules[:3])}).",
                    steps=(int(ratios.index.min()), int(ratios.index.max())),
                    layers=stuck,
                    evidence={
                        "params": stuck,
                        "not_in_optimizer": orphans,
                        "median_grad_norm": {p: float(np.nanmedian(grads[p].to_numpy())) for p in stuck[:10]},
                    },
                    charts=[Chart("update_ratios", "Update / weight ratio", columns=tuple(stuck[:4]))],
                )
            )
        frozen = [str(p) for p in params.index[~params["requires_grad"].fillna(True).astype(bool)]]
        if frozen:
            modules = list(dict.fromkeys(module_of(run, p) for p in frozen))
            findings.append(
                self.finding(
                    f"{len(frozen)} parameter(s) are frozen (requires_grad=False) in module(s) "
                    + ", ".join(f"`{m}`" for m in modules[:5])
                    + "; fine if intended (fine-tuning), a bug otherwise.",
                    layers=frozen,
                    evidence={"frozen_params": frozen[:50], "frozen_modules": modules},
                    severity="info",
                    title="Frozen parameters",
                )
            )
        return findings
