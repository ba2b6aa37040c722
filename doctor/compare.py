"""``doctor compare a.log b.log``: two (or more) runs overlaid, and what differs in their configuration.

The first use is document 000's pair: the same LSTM with and without L2 on its recurrent weights. The report puts
the runs' loss, learning rate, gradient norm and recurrent singular values on shared axes, lists every setting
that differs (optimizer hyper-parameters per group, per-parameter weight decay, model, recorder, environment), and
shows each run's verdict so the difference in settings can be read against the difference in outcome.
"""

from __future__ import annotations

from typing import Any

from doctor import __version__
from doctor.engine import Analysis
from doctor.loader import RunView
from doctor.report import (
    SEVERITY_COLORS,
    _atomic_write,
    _environment,
    _layout,
    _line,
    _plotly_js,
    _script_json,
    steps_series,
)
from doctor.rulekit import smooth, unclipped_grad_norm

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
_IGNORED = {"env.started", "env.host", "env.argv", "name"}  # differ between any two runs; not a cause


def flatten_config(view: RunView) -> dict[str, Any]:
    """The settings of a run as ``dotted.key -> value`` (parameters and groups keyed by name and index)."""
    header = view.header
    flat: dict[str, Any] = {"steps": view.num_steps}
    optimizer = header.get("optimizer") if isinstance(header.get("optimizer"), dict) else {}
    flat["optimizer.class"] = optimizer.get("class")
    for group in optimizer.get("groups") or []:
        if not isinstance(group, dict):
            continue
        prefix = f"optimizer.group{group.get('index')}"
        for key, value in (group.get("hyper") or {}).items():
            flat[f"{prefix}.{key}"] = value
        flat[f"{prefix}.parameters"] = len(group.get("params") or [])
    model = header.get("model") if isinstance(header.get("model"), dict) else {}
    flat["model.class"] = model.get("class")
    flat["model.parameters"] = model.get("parameters")
    for param in model.get("params") or []:
        if isinstance(param, dict):
            for key in ("shape", "dtype", "requires_grad", "group", "weight_decay"):
                flat[f"param {param.get('name')}.{key}"] = param.get(key)
    for section in ("env", "config"):
        for key, value in (header.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    if header.get("source"):
        flat["source"] = header["source"]
    return flat


def config_differences(views: list[RunView]) -> list[dict[str, Any]]:
    """Every setting whose value is not the same in all runs (absent counts as a value), in a stable order."""
    flats = [flatten_config(v) for v in views]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    rows = []
    partial_groups = {  # a param group that only some runs have: one row, not one per hyper-parameter
        k.rsplit(".", 1)[0] for k in keys if k.endswith(".parameters") and k.startswith("optimizer.group")
    }
    partial_groups = {g for g in partial_groups if any(f"{g}.parameters" not in f for f in flats)}
    for group in sorted(partial_groups):
        values = [_group_summary(f, group) for f in flats]
        rows.append({"key": group, "values": values})
    for key in keys:
        if key in _IGNORED or key.rsplit(".", 1)[0] in partial_groups:
            continue
        values = [f.get(key) for f in flats]  # absent and None read the same
        if any(v != values[0] for v in values[1:]):
            rows.append({"key": key, "values": [_show(v) for v in values]})
    # the usual suspects first: regularization and learning rates, then everything else in header order
    return sorted(rows, key=lambda r: 0 if r["key"].endswith((".weight_decay", ".lr")) or r["key"] in partial_groups else 1)


def _group_summary(flat: dict[str, Any], group: str) -> str:
    if f"{group}.parameters" not in flat:
        return "—"
    parts = [f"{flat[f'{group}.parameters']} parameters"]
    parts += [f"{k} {_show(flat[f'{group}.{k}'])}" for k in ("lr", "weight_decay") if f"{group}.{k}" in flat]
    return ", ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def _overlay(views: list[RunView], title: str, column: str, *, log_y: bool = False, smoothed: bool = False):
    layout = _layout(title, log_y)
    data = []
    for i, view in enumerate(views):
        series = steps_series(view, column) if column != "grad_norm" else unclipped_grad_norm(view)
        if series is None or series.empty:
            continue
        if smoothed and len(series) > 50:
            series = smooth(series, max(len(series) // 50, 2))
        data.append(_line(series.index, series.to_numpy(), view.name, line={"color": COLORS[i % len(COLORS)]}))
    return {"data": data, "layout": layout} if data else None


def _spectra(views: list[RunView]):
    layout = _layout("Largest singular value of recurrent weights (1 = memory neither grows nor fades)")
    data = []
    for i, view in enumerate(views):
        whole = [c for c in view.spectra.columns if "[" not in str(c)]  # whole matrices, not gate blocks
        for j, column in enumerate(whole[:6]):
            s = view.spectra[column].dropna()
            dash = ["solid", "dot", "dash", "dashdot"][j % 4]
            data.append(_line(s.index, s.to_numpy(), f"{view.name}: {column}", line={"color": COLORS[i % 6], "dash": dash}))
    if not data:
        return None
    layout["shapes"].append(
        {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 1, "y1": 1, "line": {"dash": "dash", "color": "#888"}}
    )
    return {"data": data, "layout": layout}


def figures(views: list[RunView]) -> list[dict[str, Any]]:
    candidates = [
        ("Training loss", _overlay(views, "Training loss (smoothed)", "loss", log_y=True, smoothed=True)),
        ("Validation loss", _overlay(views, "Validation loss", "val_loss", log_y=True)),
        ("Learning rate", _overlay(views, "Learning rate (group 0)", "lr", log_y=True)),
        (
            "Gradient norm",
            _overlay(views, "Global gradient norm, before clipping (smoothed)", "grad_norm", log_y=True, smoothed=True),
        ),
        ("Recurrent spectra", _spectra(views)),
    ]
    return [{"id": f"cmp-{i}", "name": name, "figure": fig} for i, (name, fig) in enumerate(candidates) if fig]


def render_compare(analyses: list[Analysis]) -> str:
    views = [a.run for a in analyses]
    charts = figures(views)
    runs = [
        {
            "identity": a.run.identity(),
            "verdict": a.verdict(),
            "counts": a.counts(),
            "findings": [f.to_json() for f in a.findings],
            "color": COLORS[i % len(COLORS)],
        }
        for i, a in enumerate(analyses)
    ]
    return (
        _environment()
        .get_template("compare.html.j2")
        .render(
            runs=runs,
            differences=config_differences(views),
            charts=charts,
            figures_json=_script_json({c["id"]: c["figure"] for c in charts}),
            plotly_js=_plotly_js(),
            severity_colors=SEVERITY_COLORS,
            version=__version__,
        )
    )


def write_compare(analyses: list[Analysis], path) -> Any:  # noqa: ANN001 - a Path
    return _atomic_write(path, render_compare(analyses))
