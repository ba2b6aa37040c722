"""Data-parallel ranks that do not behave alike: a straggler, a rank fed other data, replicas that drifted apart.

What it detects:
    Across the logs of one DDP run (recorded with all_ranks=True and analyzed together), a rank that waits far
    longer for its data than the others, a rank whose training loss stays well above the others' at the same
    steps, and weights whose norms differ between ranks at the same step (DDP keeps replicas identical).

Why it matters:
    Every step waits for the slowest rank at the gradient all-reduce, so one slow data loader slows the whole
    job. A rank whose loss is consistently higher is seeing different data (a sampler without set_epoch, a
    corrupt shard, wrong labels on one node). Replicas whose weights differ are no longer training one model:
    something bypassed the all-reduce (parameters updated outside DDP, unused parameters, different seeds for
    a module created after wrapping).

Evidence shown:
    Per rank: median wait for data, median step time, median loss relative to the other ranks; the largest
    relative weight-norm difference between ranks.

How to fix (cited):
    General knowledge: the source documents do not cover distributed training.

Thresholds:
    straggler_ratio: a rank's median data wait above 2x the other ranks' median and above `straggler_share`
    (10%) of the median step time. loss_drift: a rank's median loss 25% above the other ranks' median at the same
    steps, over the second half of the run (ranks on shards of one dataset agree within a few percent).
    weight_mismatch: 1e-4 relative difference of a weight norm between ranks at one step (float32 replicas agree
    to about 1e-7).

Known false positives:
    Ranks deliberately given different data (curriculum per node) differ in loss by design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from doctor.findings import Chart, Fix
from doctor.rule import Rule
from doctor.rulekit import fmt
from doctor.sources import GENERAL

SHARD_WITH_SAMPLER = Fix(
    "Give every rank its own shard of the same shuffled data: DistributedSampler, with sampler.set_epoch(epoch) "
    "each epoch, and check that every rank reads the same files with the same preprocessing.",
    GENERAL,
    "sampler = DistributedSampler(dataset, shuffle=True)\nloader = DataLoader(dataset, sampler=sampler, ...)\n"
    "for epoch in range(epochs):\n    sampler.set_epoch(epoch)",
)
FASTER_LOADER = Fix(
    "Feed the slow rank faster: more DataLoader workers, pin_memory=True, persistent_workers=True, prefetching; "
    "check its disk or network and what else runs on its node.",
    GENERAL,
    "DataLoader(dataset, num_workers=8, pin_memory=True, persistent_workers=True, prefetch_factor=4)",
)
KEEP_REPLICAS_IN_SYNC = Fix(
    "Keep replicas identical: build the model the same way on every rank (same seed) before wrapping it in DDP, "
    "update parameters only through the DDP-wrapped optimizer step, and use SyncBatchNorm for batch statistics.",
    GENERAL,
    "model = nn.SyncBatchNorm.convert_sync_batchnorm(model)\nmodel = DDP(model.to(device), device_ids=[rank])",
)


@dataclass(frozen=True)
class Thresholds:
    straggler_ratio: float = 2.0  # a rank's median data wait over the other ranks' median
    straggler_share: float = 0.10  # ... and at least this share of the median step time
    loss_drift: float = 0.25  # a rank's median loss this much above the others' at the same steps
    weight_mismatch: float = 1e-4  # relative weight-norm difference between ranks at one step


class RankDrift(Rule):
    id = "rank_drift"
    title = "Data-parallel ranks disagree"
    severity = "warning"
    requires = ("ranks",)
    Thresholds = Thresholds
    fixes = (SHARD_WITH_SAMPLER, FASTER_LOADER, KEEP_REPLICAS_IN_SYNC)

    def check(self, run, t):
        ranks = run.ranks
        problems, evidence, fixes, charts = [], {}, [], []
        slow = self._stragglers(ranks, t, evidence)
        if slow:
            problems.append(
                "; ".join(f"rank {r} waits {fmt(1000 * w)} ms for data per step ({fmt(x)}x the others)" for r, w, x in slow)
            )
            fixes.append(FASTER_LOADER)
            charts.append(Chart("ranks:data_seconds", "Wait for data per step, by rank", log_y=True))
        drifting = self._loss_drift(ranks, t, evidence)
        if drifting:
            problems.append(
                "; ".join(f"rank {r}'s loss runs {fmt(100 * d)}% above the other ranks' at the same steps" for r, d in drifting)
            )
            fixes.append(SHARD_WITH_SAMPLER)
            charts.append(Chart("ranks:loss", "Training loss, by rank"))
        mismatch = None if run.header.get("sharded") else self._weight_mismatch(ranks)  # FSDP shards differ by design
        if mismatch is not None and mismatch[0] > t.weight_mismatch:
            evidence["weight_norm_mismatch"] = mismatch[0]
            problems.append(
                f"the replicas' weights differ: `{mismatch[1]}` has norms {fmt(100 * mismatch[0])}% apart at step {mismatch[2]:,}"
            )
            fixes.insert(0, KEEP_REPLICAS_IN_SYNC)
        if not problems:
            return []
        severity = "error" if mismatch is not None and mismatch[0] > t.weight_mismatch else self.severity
        summary = f"Across {len(ranks)} ranks: " + "; ".join(problems) + "."
        steps = (int(run.steps.index.min()), int(run.steps.index.max())) if len(run.steps) else None
        return [self.finding(summary, steps=steps, evidence=evidence, charts=charts, fixes=fixes, severity=severity)]

    @staticmethod
    def _stragglers(ranks, t, evidence):
        wait = {r: v.steps["data_seconds"].median() for r, v in ranks.items() if "data_seconds" in v.steps}
        step = {r: v.steps["seconds"].median() for r, v in ranks.items() if "seconds" in v.steps}
        if len(wait) < 2:
            return []
        evidence["median_data_wait_s"] = {str(r): float(w) for r, w in wait.items()}
        out = []
        for r, w in wait.items():
            others = float(np.median([x for q, x in wait.items() if q != r]))
            ratio = w / max(others, 1e-9)
            if ratio > t.straggler_ratio and w > t.straggler_share * step.get(r, np.inf):
                out.append((r, float(w), float(ratio)))
        return out

    @staticmethod
    def _loss_drift(ranks, t, evidence):
        losses = pd.DataFrame({r: v.steps["loss"] for r, v in ranks.items() if "loss" in v.steps}).dropna()
        if losses.shape[1] < 2 or len(losses) < 20:
            return []
        late = losses.iloc[len(losses) // 2 :]
        out, drift = [], {}
        for r in late.columns:
            others = late.drop(columns=[r]).median(axis=1)
            d = float(np.median(late[r] / others.where(others.abs() > 1e-12) - 1))
            drift[str(r)] = d
            if d > t.loss_drift:
                out.append((r, d))
        evidence["median_loss_drift"] = drift
        return out

    @staticmethod
    def _weight_mismatch(ranks):
        frames = [v.weight_norms for v in ranks.values() if not v.weight_norms.empty]
        if len(frames) < 2:
            return None
        stacked = np.stack([f.reindex(index=frames[0].index, columns=frames[0].columns).to_numpy() for f in frames])
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = (np.nanmax(stacked, 0) - np.nanmin(stacked, 0)) / np.abs(np.nanmean(stacked, 0))
        if not np.isfinite(spread).any():
            return None
        i, j = np.unravel_index(np.nanargmax(np.where(np.isfinite(spread), spread, -1)), spread.shape)
        return float(spread[i, j]), str(frames[0].columns[j]), int(frames[0].index[i])
