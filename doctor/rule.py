"""The base class every rule file in ``rules/`` subclasses.

A rule is one file: its ``id`` (equal to the file stem, never changed), title,
severity, the data it ``requires``, a frozen ``Thresholds`` dataclass of named,
typed defaults, its ranked ``fixes`` and a pure ``check(run, thresholds)``.
Its docstring has fixed headings (see ``DOC_HEADINGS``); ``doctor explain`` and
docs/rules.md are generated from it, so nothing is written twice.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from typing import TYPE_CHECKING, Any, ClassVar

from doctor.findings import Chart, Finding, Fix

if TYPE_CHECKING:
    from doctor.loader import RunView

DOC_HEADINGS = (
    "What it detects",
    "Why it matters",
    "Evidence shown",
    "How to fix (cited)",
    "Thresholds",
    "Known false positives",
)

# What each name in `requires` means, and how to get it, for "skipped" messages.
REQUIREMENTS = {
    "loss": "the training loss (call run.log(loss=loss) every step)",
    "val_loss": "a validation loss (call run.log(val_loss=...) after each evaluation)",
    "lr": "learning rates (recorded by doctor.watch from the optimizer)",
    "grad_norm": "the global gradient norm (recorded by doctor.watch)",
    "grad_norms": "per-parameter gradient norms (recorded by doctor.watch)",
    "weight_norms": "weight norms (doctor.watch with weight_every > 0)",
    "update_ratios": "update/weight ratios (doctor.watch with weight_every > 0)",
    "activations": "activation statistics (doctor.watch with activation_every > 0)",
    "inputs": "model input statistics (doctor.watch with input_every > 0)",
    "spectra": "singular values of recurrent weights (an RNN/LSTM/GRU and spectral_every > 0)",
    "amp_skipped": "GradScaler's skipped iterations (pass the scaler: doctor.watch(..., scaler=scaler))",
    "ranks": "the logs of several ranks of one data-parallel run (doctor.watch(..., all_ranks=True), then "
    "doctor analyze exp.rank*.log)",
    "model": "the model summary in the log header (recorded by doctor.watch)",
    "optimizer": "the optimizer summary in the log header (recorded by doctor.watch)",
}


@dataclasses.dataclass(frozen=True)
class NoThresholds:
    """A rule without tunable thresholds."""


class Rule:
    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    severity: ClassVar[str] = "warning"
    requires: ClassVar[tuple[str, ...]] = ()
    Thresholds: ClassVar[type] = NoThresholds
    fixes: ClassVar[tuple[Fix, ...]] = ()
    # Rule ids whose findings are consequences of this rule's finding: when this rule fires
    # (warning or error) their findings are folded into it instead of standing alone.
    explains: ClassVar[tuple[str, ...]] = ()

    def check(self, run: RunView, t: Any) -> list[Finding]:
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------
    def finding(
        self,
        summary: str,
        *,
        steps: tuple[int, int] | None = None,
        layers: list[str] | None = None,
        evidence: dict[str, Any] | None = None,
        charts: list[Chart] | None = None,
        fixes: list[Fix] | tuple[Fix, ...] | None = None,
        severity: str | None = None,
        title: str | None = None,
    ) -> Finding:
        """A finding of this rule; fixes default to the rule's ranked list."""
        return Finding(
            rule=self.id,
            severity=severity or self.severity,
            title=title or self.title,
            summary=summary,
            steps=(int(steps[0]), int(steps[1])) if steps else None,
            layers=list(layers or []),
            evidence=dict(evidence or {}),
            charts=list(charts or []),
            fixes=list(fixes if fixes is not None else self.fixes),
            why=self.section("Why it matters"),
        )

    @classmethod
    def doc_sections(cls) -> dict[str, str]:
        """The rule's docstring (the class's, else its file's) split by its fixed headings."""
        module = inspect.getmodule(cls)
        doc = inspect.cleandoc(cls.__doc__ or (module.__doc__ if module else "") or "")
        sections: dict[str, str] = {}
        current = "summary"
        lines: list[str] = []
        for line in doc.splitlines():
            stripped = line.strip().rstrip(":")
            if stripped in DOC_HEADINGS:
                sections[current] = textwrap.dedent("\n".join(lines)).strip()
                current, lines = stripped, []
            else:
                lines.append(line)
        sections[current] = textwrap.dedent("\n".join(lines)).strip()
        return sections

    @classmethod
    def section(cls, heading: str) -> str:
        return " ".join(cls.doc_sections().get(heading, "").split())

    @classmethod
    def default_thresholds(cls) -> Any:
        return cls.Thresholds()

    @classmethod
    def threshold_fields(cls) -> list[tuple[str, Any, str]]:
        """(name, default, type name) of each threshold."""
        t = cls.Thresholds()
        return [(f.name, getattr(t, f.name), _type_name(f.type)) for f in dataclasses.fields(t)]


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
