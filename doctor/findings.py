"""What rules return: findings with evidence, charts to draw and ranked, cited fixes.

The same dataclasses feed the terminal view, ``--json`` and the HTML report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from doctor.sources import Source

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Fix:
    """One concrete action, in our words, with the document section it comes from."""

    text: str
    source: Source
    code: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "source": self.source.cite(), "citation": self.source.to_json(), "code": self.code}


@dataclass(frozen=True)
class Chart:
    """A series of the run to plot for a finding, with the offending region and threshold.

    ``series`` names a frame of the run view: ``steps:<column>`` (e.g. ``steps:loss``),
    ``grad_norms``, ``weight_norms``, ``update_ratios``, ``spectra``,
    ``activations:<stat>`` or ``inputs:<stat>``; ``columns`` picks layers.
    ``profile:<stat>`` plots one activation statistic across layers (in forward
    order) at the first sampled step: the shape of the network at initialization.
    """

    series: str
    title: str
    columns: tuple[str, ...] = ()
    highlight: tuple[int, int] | None = None
    threshold: float | None = None
    log_y: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "title": self.title,
            "columns": list(self.columns),
            "highlight": list(self.highlight) if self.highlight else None,
            "threshold": self.threshold,
            "log_y": self.log_y,
        }


@dataclass
class Finding:
    rule: str
    severity: str
    title: str
    summary: str
    steps: tuple[int, int] | None = None
    layers: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    why: str = ""
    consequences: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "title": self.title,
            "summary": self.summary,
            "steps": list(self.steps) if self.steps else None,
            "layers": list(self.layers),
            "evidence": {k: _plain(v) for k, v in self.evidence.items()},
            "charts": [c.to_json() for c in self.charts],
            "fixes": [f.to_json() for f in self.fixes],
            "why": self.why,
            "consequences": [
                {"rule": c.rule, "severity": c.severity, "title": c.title, "summary": c.summary} for c in self.consequences
            ],
        }


def _plain(value: Any) -> Any:
    """Evidence values as JSON-safe plain numbers (numpy scalars, non-finite floats as strings)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then earliest."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.steps[0] if f.steps else 0, f.rule))
