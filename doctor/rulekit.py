"""Small vectorized helpers shared by rules: smoothing, run segments, layer lookups, number formatting.

Rules stay short and read alike by leaning on these; every helper is a pure
function of the run view.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from doctor.loader import RunView

WEIGHT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear", "LazyLinear")


def first_nonfinite_step(run: RunView) -> int | None:
    """The first step whose loss or global gradient norm was logged as NaN/Inf, if any."""
    candidates = [steps[0] for column, steps in run.nonfinite.items() if column in ("loss", "grad_norm") and steps]
    for event in run.events_of("nonfinite"):
        if isinstance(event.get("step"), int) and event.get("what") in ("loss", "gradient", "parameter_gradient"):
            candidates.append(event["step"])
    return min(candidates) if candidates else None


def finite_part(frame: pd.DataFrame | pd.Series, run: RunView) -> pd.DataFrame | pd.Series:
    """Rows before the run first went non-finite: rules judge the run while it was still numbers."""
    stop = first_nonfinite_step(run)
    return frame if stop is None else frame.loc[frame.index < stop]


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Rolling median (robust to single noisy batches), centred, over ``window`` logged points."""
    window = max(1, min(window, len(series)))
    return series.rolling(window, center=True, min_periods=1).median()


def ends(series: pd.Series, minimum: int = 1) -> tuple[float, float]:
    """Median of the first and of the last tenth of a series (at least ``minimum`` points each): robust start and end levels."""
    tenth = max(len(series) // 10, minimum)
    return float(series.iloc[:tenth].median()), float(series.iloc[-tenth:].median())


def loss_curve(run: RunView) -> pd.Series:
    """The finite part of the training loss."""
    loss = finite_part(run.loss, run)
    return loss[np.isfinite(loss.to_numpy())]


def unclipped_grad_norm(run: RunView) -> pd.Series:
    """The global gradient norm before any clipping: the pre-clip norm where clip_grad_norm_ ran, else the recorded one.

    The recorded ``grad_norm`` is read as the optimizer consumes the gradients, so it is capped where the run clips.
    Empty when the run logged neither.
    """
    steps = run.steps
    recorded = steps["grad_norm"].dropna() if "grad_norm" in steps else pd.Series(dtype=float)
    if not run.has("grad_norm_preclip"):
        return recorded
    return steps["grad_norm_preclip"].dropna().combine_first(recorded)


def weight_params(run: RunView) -> list[str]:
    """Matrix/kernel parameters (dim >= 2), in model order: the ones whose scale and gradients compare."""
    return [name for name, shape in run.params["shape"].items() if isinstance(shape, list) and len(shape) >= 2]


def rms(norms: pd.DataFrame | pd.Series, run: RunView) -> pd.DataFrame | pd.Series:
    """Turn norms into per-element root-mean-square values, comparable across layers of any size."""
    numel = run.params["numel"].reindex(norms.columns if isinstance(norms, pd.DataFrame) else [norms.name])
    root = np.sqrt(numel.astype(float).clip(lower=1))
    if isinstance(norms, pd.DataFrame):
        return norms.divide(root.to_numpy(), axis=1)
    return norms / float(root.iloc[0])


def module_of(run: RunView, param: str) -> str:
    return str(run.params["module"].get(param, param.rsplit(".", 1)[0]))


def module_order(run: RunView) -> list[str]:
    """Recorded modules in forward order (call order when traced, else definition order)."""
    if run.call_order:
        return list(run.call_order)
    recorded = run.header.get("recorded_modules")
    return [str(m) for m in recorded] if isinstance(recorded, list) else list(run.modules.index)


def activation_kind(run: RunView, module: str) -> str:
    return str(run.modules["activation"].get(module, "other"))


def module_type(run: RunView, module: str) -> str:
    return str(run.modules["type"].get(module, ""))


def output_classes(run: RunView) -> int | None:
    """Number of outputs of the last weight layer called: the class count for classifiers."""
    order = module_order(run)
    for module in reversed(order):
        for name in run.params.index[run.params["module"] == module]:
            shape = run.params["shape"][name]
            if isinstance(shape, list) and len(shape) == 2 and name.endswith("weight"):
                return int(shape[0])
    return None


def chance_loss(run: RunView) -> float | None:
    """ln C: the cross-entropy of a uniform guess over C classes."""
    classes = output_classes(run)
    return math.log(classes) if classes and classes > 1 else None


def span(index: pd.Index) -> tuple[int, int] | None:
    return (int(index.min()), int(index.max())) if len(index) else None


def fmt(x: float) -> str:
    """A number for a sentence: 3 significant digits, thousands separators, no float noise."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 1e5 or ax < 1e-3:
        return f"{x:.2e}"
    if ax >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def ratio_text(x: float) -> str:
    """A multiplicative factor in words: 3,400x, or 1/250."""
    if not math.isfinite(x) or x <= 0:
        return str(x)
    return f"{fmt(x)}x" if x >= 1 else f"1/{fmt(1 / x)}"


def persistent_layers(frame: pd.DataFrame, run: RunView, threshold: float, persistence: float) -> list[str]:
    """Layers (in forward order) at or above ``threshold`` in most sampled steps, including the last."""
    over = frame >= threshold
    share = over.mean()
    last = over.iloc[-1]
    return [m for m in module_order(run) if m in frame and share.get(m, 0) >= persistence and bool(last.get(m))]


def trained_weights(run: RunView) -> list[str]:
    """Weight matrices the optimizer actually trains (in an optimizer group, requiring grad)."""
    params = run.params
    return [
        p
        for p in weight_params(run)
        if bool(params["requires_grad"].get(p, True))
        and params["group"].get(p) is not None
        and params["group"].get(p) == params["group"].get(p)  # NaN-safe "not missing"
    ]


def median_update_ratio(run: RunView) -> float | None:
    """Median ||dw|| / ||w|| over the trained weight matrices and sampled steps (None if not recorded)."""
    if not run.has("update_ratios"):
        return None
    columns = [p for p in trained_weights(run) if p in run.update_ratios]
    values = finite_part(run.update_ratios[columns], run).to_numpy()
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None
