"""Mixed precision: GradScaler keeps skipping optimizer steps because the scaled gradients overflow.

What it detects:
    Iterations that torch.amp.GradScaler skipped (inf/nan in the scaled gradients), recorded when the scaler is
    passed to doctor.watch(..., scaler=scaler): a long run of consecutive skips, or a share of skipped
    iterations far above the few a healthy run loses while the scale calibrates.

Why it matters:
    A skipped iteration computes a full forward and backward pass and throws it away. A few skips at the start
    are how GradScaler finds its scale; a streak means every gradient overflows float16 whatever the scale, so the
    model stops learning while the loss curve only looks flat, and the loss scale collapses toward zero.

Evidence shown:
    Skipped iterations in all and their share, the longest streak and the step it preceded, the loss scale.

How to fix (cited):
    Clip gradients (unscale first), lower the learning rate; keep the loss and the softmax in float32 or train in
    bfloat16, which has float32's range (general knowledge: the source documents do not cover mixed precision).

Thresholds:
    max_streak: 8 consecutive skipped iterations (the scale falls by 2^8; the zoo's healthy float16 run skips
    1 while calibrating from the default 65536, the overflowing one 23). max_share: 5% of iterations skipped
    after the first `warmup` steps (a healthy run skips about one per growth_interval=2000 steps, 0.05%).

Known false positives:
    A scaler started at an absurdly large init_scale skips many iterations at the start; they fall inside
    `warmup` unless there are more than `max_streak` in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor import fixes
from doctor.findings import Chart, Fix
from doctor.rule import Rule
from doctor.rulekit import fmt
from doctor.sources import GENERAL

BF16_OR_FP32_LOSS = Fix(
    "Compute the loss (and softmax/log-softmax) in float32 outside autocast, or switch autocast to bfloat16, "
    "whose exponent range equals float32's, so gradients stop overflowing.",
    GENERAL,
    "with torch.autocast('cuda', dtype=torch.bfloat16):\n    logits = model(x)\nloss = loss_fn(logits.float(), y)",
)


@dataclass(frozen=True)
class Thresholds:
    max_streak: int = 8  # consecutive skipped iterations
    max_share: float = 0.05  # share of iterations skipped after warmup
    warmup: int = 20  # steps during which the scale is still calibrating


class AmpSkippedSteps(Rule):
    id = "amp_skipped_steps"
    title = "Mixed precision skips optimizer steps"
    severity = "warning"
    requires = ("amp_skipped",)
    Thresholds = Thresholds
    fixes = (fixes.CLIP_GRAD_NORM, fixes.UNSCALE_THEN_CLIP, fixes.LOWER_LR, BF16_OR_FP32_LOSS)

    def check(self, run, t):
        skipped = run.steps["amp_skipped"].fillna(0.0)
        total = float(skipped.sum())
        if not total:
            return []
        streak_step = int(skipped.idxmax())
        streak = int(skipped.max())
        late = skipped[skipped.index >= t.warmup]
        late_iterations = len(late) + float(late.sum())
        share = float(late.sum()) / late_iterations if late_iterations else 0.0
        if streak < t.max_streak and share <= t.max_share:
            return []
        evidence = {"skipped_iterations": int(total), "share_after_warmup": share, "longest_streak": streak}
        if "amp_scale" in run.steps:
            scale = run.steps["amp_scale"].dropna()
            if len(scale):
                evidence["loss_scale_end"] = float(scale.iloc[-1])
        summary = (
            f"GradScaler skipped {int(total):,} iterations (inf/nan gradients), {fmt(100 * share)}% after step {t.warmup}; "
            f"the longest streak was {streak} in a row before step {streak_step:,}"
        )
        if "loss_scale_end" in evidence:
            summary += f", and the loss scale ended at {fmt(evidence['loss_scale_end'])}"
        first = int(skipped[skipped > 0].index[0])
        last = int(skipped[skipped > 0].index[-1])
        charts = [Chart("steps:amp_skipped", "Skipped iterations before each step"), Chart("steps:loss", "Training loss")]
        if "amp_scale" in run.steps:
            charts.insert(1, Chart("steps:amp_scale", "Loss scale", log_y=True))
        severity = "error" if share > 0.5 else self.severity
        return [self.finding(summary + ".", steps=(first, last), evidence=evidence, charts=charts, severity=severity)]
