"""The HTML report: one self-contained file per run (plotly.js inlined once, no network).

Figures are built here as plain plotly JSON from the run view, downsampled so
long runs stay small and fast (min and max of each bucket, so spikes survive);
the template only loops and formats. Everything user-controlled reaches the page
through Jinja autoescaping or as JSON inside a script tag with ``<``, ``>``
and ``&`` escaped; labels handed to plotly are entity-escaped too, since
plotly interprets a few HTML tags in text.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from doctor import __version__
from doctor.engine import Analysis
from doctor.errors import UsageError
from doctor.findings import Chart
from doctor.loader import RunView

MAX_POINTS = 2000  # per line trace: buckets keep their min and max, so ~1000 buckets
MAX_HEATMAP_COLUMNS = 600
# Columns of `steps` the recorder writes itself: they have charts of their own and stay off the loss chart's axis.
RECORDER_COLUMNS = (
    "lr", "grad_norm", "grad_norm_preclip", "clip_max_norm", "seconds", "data_seconds", "amp_skipped", "amp_scale",
)
MAX_LINES = 24  # per chart; the heatmap shows every layer
SEVERITY_COLORS = {"error": "#d62728", "warning": "#e8a317", "info": "#1f77b4"}

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """``doctor/reports/templates`` when installed, ``<repo>/reports/templates`` in a checkout."""
    installed = _PACKAGE_DIR / "reports" / "templates"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "reports" / "templates"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["ticks"] = _ticks
    return env


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# --------------------------------------------------------------------------- data shaping
def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        return f"{v:.3e}" if abs(v) >= 1e5 or abs(v) < 1e-3 else f"{v:.4g}"
    return str(value)


def _ticks(text: Any) -> Markup:
    """Escape a sentence, then show its `backticked` names as code."""
    escaped = str(escape(str(text)))
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def _label(text: Any) -> str:
    """Text for plotly, which renders a few HTML tags: entity-escape it."""
    return html.escape(str(text), quote=True)


def _clean(values: np.ndarray) -> list[float | None]:
    """Plain JSON numbers; NaN and Inf become gaps (null)."""
    values = np.asarray(values, dtype=float)
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and the max of each bucket (in step order) so spikes and dips survive."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    keep = []
    filled = np.where(np.isfinite(y), y, np.nan)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        chunk = filled[lo:hi]
        if np.all(np.isnan(chunk)):
            keep.append(lo)
            continue
        a, b = lo + int(np.nanargmin(chunk)), lo + int(np.nanargmax(chunk))
        keep += [min(a, b), max(a, b)] if a != b else [a]
    idx = np.array(sorted(set(keep)))
    return x[idx], y[idx]


def _line(x: Any, y: Any, name: str, **extra: Any) -> dict[str, Any]:
    xs, ys = downsample(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return {
        "type": "scattergl" if len(xs) > 5000 else "scatter",
        "mode": "lines",
        "x": _clean(xs),
        "y": _clean(ys),
        "name": _label(name),
        "hovertemplate": "step %{x}<br>%{y:.4g}<extra>" + _label(name) + "</extra>",
        **extra,
    }


def _pick_columns(frame: pd.DataFrame, wanted: tuple[str, ...] | list[str]) -> list[str]:
    if wanted:
        return [c for c in wanted if c in frame.columns]
    columns = list(frame.columns)
    if len(columns) <= MAX_LINES:
        return columns
    picks = np.linspace(0, len(columns) - 1, MAX_LINES).round().astype(int)
    return [columns[i] for i in sorted(set(picks))]


def _layout(title: str, log_y: bool = False, y_title: str = "") -> dict[str, Any]:
    return {
        "title": {"text": _label(title), "font": {"size": 14}},
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"type": "log" if log_y else "linear", "title": {"text": _label(y_title)}},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
        "height": 320,
        "legend": {"orientation": "h", "y": -0.25},
        "hovermode": "closest",
        "shapes": [],
    }


def _frame_for(run: RunView, series: str) -> pd.DataFrame | None:
    if series in ("grad_norms", "weight_norms", "update_ratios", "spectra"):
        return getattr(run, series)
    kind, _, stat = series.partition(":")
    if kind == "activations":
        return run.activations.get(stat)
    if kind == "inputs":
        return run.inputs.get(stat)
    return None


def steps_series(view: RunView, column: str) -> pd.Series | None:
    """The logged values of one ``steps`` column (NaN gaps dropped), or None when the run never logged it."""
    if column not in view.steps or not view.steps[column].notna().any():
        return None
    return view.steps[column].dropna()


def chart_figure(run: RunView, chart: Chart) -> dict[str, Any] | None:
    """A finding's chart as plotly JSON: the series, the offending range shaded, the threshold drawn."""
    layout = _layout(chart.title, chart.log_y)
    data: list[dict[str, Any]] = []
    if chart.series.startswith("steps:"):
        columns = [chart.series.split(":", 1)[1], *chart.columns]
        for column in dict.fromkeys(columns):
            s = steps_series(run, column)
            if s is not None:
                data.append(_line(s.index, s.to_numpy(), column, mode="lines+markers" if len(s) < 60 else "lines"))
    elif chart.series.startswith("ranks:"):
        column = chart.series.split(":", 1)[1]
        for rank, view in sorted(run.ranks.items()):
            s = steps_series(view, column)
            if s is not None:
                data.append(_line(s.index, s.to_numpy(), f"rank {rank}"))
    elif chart.series.startswith("profile:"):
        frame = run.activations.get(chart.series.split(":", 1)[1])
        if frame is None or frame.empty:
            return None
        row = frame.iloc[0]
        columns = [c for c in (chart.columns or tuple(frame.columns)) if c in row.index]
        data.append(
            {
                "type": "bar",
                "x": [_label(c) for c in columns],
                "y": _clean(row[columns].to_numpy()),
                "marker": {"color": "#1f77b4"},
                "hovertemplate": "%{x}<br>%{y:.4g}<extra></extra>",
            }
        )
        layout["xaxis"] = {"title": {"text": "layer (forward order)"}, "type": "category"}
    else:
        frame = _frame_for(run, chart.series)
        if frame is None or frame.empty:
            return None
        for column in _pick_columns(frame, chart.columns):
            s = frame[column].dropna()
            data.append(_line(s.index, s.to_numpy(), column))
    if not data:
        return None
    if chart.series.endswith("_frac"):
        layout["yaxis"]["range"] = [-0.02, 1.02]
    if chart.highlight:
        a, b = chart.highlight
        layout["shapes"].append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": a - 0.5,
                "x1": b + 0.5,
                "y0": 0,
                "y1": 1,
                "fillcolor": "rgba(214,39,40,0.15)",
                "line": {"width": 0},
                "layer": "below",
            }
        )
    if chart.threshold is not None:
        layout["shapes"].append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "yref": "y",
                "y0": chart.threshold,
                "y1": chart.threshold,
                "line": {"color": "#d62728", "dash": "dash", "width": 1.5},
            }
        )
    return {"data": data, "layout": layout}


def _heatmap(run: RunView) -> dict[str, Any] | None:
    grads = run.grad_norms
    if grads.empty:
        return None
    values = grads.to_numpy(dtype=float)
    steps = grads.index.to_numpy()
    if len(steps) > MAX_HEATMAP_COLUMNS:  # bucket along steps, keeping each bucket's max
        edges = np.linspace(0, len(steps), MAX_HEATMAP_COLUMNS + 1).astype(int)
        with np.errstate(all="ignore"):
            values = np.stack(
                [
                    np.nanmax(np.where(np.isfinite(values[a:b]), values[a:b], np.nan), axis=0)
                    for a, b in zip(edges[:-1], edges[1:])
                ]
            )
        steps = steps[edges[1:] - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.log10(np.where(values > 0, values, np.nan))
    z = [_clean(column) for column in logged.T]
    return {
        "data": [
            {
                "type": "heatmap",
                "x": _clean(steps),
                "y": [_label(c) for c in grads.columns],
                "z": z,
                "colorscale": "Viridis",
                "colorbar": {"title": {"text": "log10 |g|"}},
                "hovertemplate": "step %{x}<br>%{y}<br>log10 norm %{z:.2f}<extra></extra>",
            }
        ],
        "layout": {
            **_layout("Gradient norm per parameter (log colour)"),
            "height": max(320, 18 * len(grads.columns) + 120),
            "yaxis": {"autorange": "reversed", "automargin": True, "type": "category"},
        },
    }


def _loss_figure(run: RunView) -> dict[str, Any] | None:
    steps = run.steps
    skip = set(RECORDER_COLUMNS) | {c for c in steps.columns if c.startswith(("lr_g", "wd_g"))}
    scalars = [c for c in steps.columns if c not in skip and steps[c].notna().any()]
    if not scalars and "lr" not in steps:
        return None
    data = []
    for column in sorted(scalars, key=lambda c: (c != "loss", c != "val_loss", c)):
        s = steps[column].dropna()
        data.append(_line(s.index, s.to_numpy(), column, mode="lines+markers" if len(s) < 60 else "lines"))
    layout = _layout("Loss and logged scalars, learning rate (right, log)")
    groups = [c for c in steps.columns if c.startswith("lr_g")]
    positive: list[float] = []
    for column in groups[:8]:
        s = steps[column].dropna()
        if len(s) and (s > 0).any():
            data.append(_line(s.index, s.to_numpy(), f"lr group {column[4:]}", yaxis="y2", line={"dash": "dot"}))
            positive += [float(s[s > 0].min()), float(s.max())]
    layout["yaxis2"] = {
        "type": "log",
        "overlaying": "y",
        "side": "right",
        "title": {"text": "learning rate"},
        "showgrid": False,
        "exponentformat": "e",
        "dtick": 1,  # one labelled tick per decade
    }
    if positive:  # pad the log range so a constant rate does not get a zoomed-in axis of odd minor ticks
        low, high = math.log10(min(positive)), math.log10(max(positive))
        layout["yaxis2"]["range"] = [low - 0.5, high + 0.5]
    layout["margin"]["r"] = 60
    return {"data": data, "layout": layout} if data else None


def _grad_norm_chart(run: RunView) -> Chart:
    """The global gradient norm; where the run clipped, the norm before clipping beside it and max_norm dashed."""
    if not run.has("grad_norm_preclip"):
        return Chart("steps:grad_norm", "Global gradient norm", log_y=True)
    max_norm = steps_series(run, "clip_max_norm")
    return Chart(
        "steps:grad_norm_preclip",
        "Gradient norm before and after clipping",
        columns=("grad_norm",),
        threshold=float(max_norm.median()) if max_norm is not None else None,
        log_y=True,
    )


def dashboards(run: RunView) -> list[dict[str, Any]]:
    """The whole-run charts, in a fixed order; absent data gives no chart."""
    figs: list[tuple[str, dict[str, Any] | None]] = [
        ("Loss and learning rate", _loss_figure(run)),
        ("Global gradient norm", chart_figure(run, _grad_norm_chart(run))),
        ("Gradient heatmap", _heatmap(run)),
        ("Activation std", chart_figure(run, Chart("activations:std", "Activation std per layer", log_y=True))),
        ("Activation mean", chart_figure(run, Chart("activations:mean", "Activation mean per layer"))),
        ("Dead units", chart_figure(run, Chart("activations:dead_frac", "Fraction of dead ReLU units per layer"))),
        (
            "Saturated units",
            chart_figure(run, Chart("activations:saturated_frac", "Fraction of saturated units per layer")),
        ),
        (
            "Recurrent spectra",
            chart_figure(run, Chart("spectra", "Largest singular value of recurrent weights", threshold=1.0)),
        ),
        (
            "Update ratio",
            chart_figure(run, Chart("update_ratios", "Update / weight ratio per parameter", threshold=1e-3, log_y=True)),
        ),
        ("Weight norms", chart_figure(run, Chart("weight_norms", "Weight norm per parameter", log_y=True))),
        ("Input mean", chart_figure(run, Chart("inputs:mean", "Input mean"))),
        ("Input std", chart_figure(run, Chart("inputs:std", "Input std", log_y=True))),
    ]
    out = []
    for name, fig in figs:
        if fig is not None and any(_has_values(trace) for trace in fig["data"]):
            out.append({"name": name, "figure": fig})
    return out


def _has_values(trace: dict[str, Any]) -> bool:
    values = trace.get("z") or trace.get("y") or []
    flat = [v for row in values for v in (row if isinstance(row, list) else [row])]
    return any(v is not None for v in flat)


# --------------------------------------------------------------------------- rendering
def _script_json(value: Any) -> str:
    """JSON safe to embed inside <script>: no way to close the tag or open a comment."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _context(analysis: Analysis) -> dict[str, Any]:
    run = analysis.run
    figures: dict[str, Any] = {}
    cards = []
    for i, finding in enumerate(analysis.findings):
        chart_ids = []
        for j, chart in enumerate(finding.charts):
            fig = chart_figure(run, chart)
            if fig is not None:
                key = f"finding-{i}-{j}"
                figures[key] = fig
                chart_ids.append(key)
        cards.append({"f": finding.to_json(), "charts": chart_ids, "color": SEVERITY_COLORS.get(finding.severity)})
    dash = []
    for k, item in enumerate(dashboards(run)):
        key = f"dash-{k}"
        figures[key] = item["figure"]
        dash.append({"id": key, "name": item["name"]})
    header = run.header
    return {
        "analysis": analysis,
        "identity": run.identity(),
        "verdict": analysis.verdict(),
        "counts": analysis.counts(),
        "cards": cards,
        "dashboards": dash,
        "figures_json": _script_json(figures),
        "plotly_js": _plotly_js(),
        "modules": header.get("model", {}).get("modules", []) if isinstance(header.get("model"), dict) else [],
        "params": run.params.reset_index().to_dict("records"),
        "groups": header.get("optimizer", {}).get("groups", []) if isinstance(header.get("optimizer"), dict) else [],
        "optimizer": header.get("optimizer", {}).get("class") if isinstance(header.get("optimizer"), dict) else None,
        "severity_colors": SEVERITY_COLORS,
        "version": __version__,
    }


def render_report(analysis: Analysis) -> str:
    return _environment().get_template("report.html.j2").render(**_context(analysis))


def _atomic_write(path: Path, text: str) -> Path:
    """Write to a temporary file beside the target, then rename: a reader never sees half a report."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is an ordinary file
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the report to '{path}': {exc.strerror or exc}") from None
    return path


def write_report(analysis: Analysis, path: Path) -> Path:
    return _atomic_write(Path(path), render_report(analysis))


def write_index(analyses: list[Analysis], reports: list[Path], path: Path) -> Path:
    """An index page linking every run's report with its verdict."""
    path = Path(path)
    rows = []
    for analysis, report in zip(analyses, reports):
        try:
            href = os.path.relpath(report, path.parent)
        except ValueError:
            href = str(report.resolve())
        rows.append(
            {
                "identity": analysis.run.identity(),
                "verdict": analysis.verdict(),
                "counts": analysis.counts(),
                "href": Path(href).as_posix(),
            }
        )
    text = _environment().get_template("index.html.j2").render(rows=rows, version=__version__, severity_colors=SEVERITY_COLORS)
    return _atomic_write(path, text)
