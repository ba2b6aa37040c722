"""The rule engine: find rule files, apply threshold overrides, run every rule on a run view.

Built-in rules live in ``rules/`` (installed as ``doctor/rules``); users add
directories with ``--rules``. Both are loaded the same way: every ``*.py`` file
not starting with ``_`` holds one :class:`Rule` subclass whose ``id`` equals
the file stem.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctor.errors import ThresholdError, UsageError
from doctor.findings import SEVERITIES, Finding, sort_findings
from doctor.loader import RunView
from doctor.rule import REQUIREMENTS, Rule

_PACKAGE_DIR = Path(__file__).resolve().parent


def builtin_rules_dir() -> Path:
    """``doctor/rules`` when installed, ``<repo>/rules`` in a source checkout."""
    installed = _PACKAGE_DIR / "rules"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "rules"


def load_rules(extra_dirs: list[Path] | tuple[Path, ...] = ()) -> list[type[Rule]]:
    """Every rule class, built-in first; a user rule with a built-in's id replaces it."""
    found: dict[str, type[Rule]] = {}
    for directory, namespace in [
        (builtin_rules_dir(), "doctor_builtin_rules"),
        *((Path(d), "doctor_user_rules") for d in extra_dirs),
    ]:
        if not directory.is_dir():
            raise UsageError(f"rules directory '{directory}' does not exist; pass a folder of rule files to --rules")
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            rule = _load_rule_file(path, namespace)
            found[rule.id] = rule
    return list(found.values())


def _load_rule_file(path: Path, namespace: str) -> type[Rule]:
    module_name = f"{namespace}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load rule file '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken user rule file is a usage error, not a traceback
        raise UsageError(f"rule file '{path}' failed to import: {type(exc).__name__}: {exc}") from None
    rules = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module_name
    ]
    if len(rules) != 1:
        raise UsageError(f"rule file '{path}' must define exactly one Rule subclass, found {len(rules)}")
    rule = rules[0]
    if rule.id != path.stem:
        raise UsageError(f"rule file '{path}' defines id {rule.id!r}; a rule's id must equal its file name")
    if rule.severity not in SEVERITIES:
        raise UsageError(f"rule {rule.id!r} has severity {rule.severity!r}; expected one of {', '.join(SEVERITIES)}")
    return rule


# ---------------------------------------------------------------------- thresholds
def _coerce(rule_id: str, name: str, kind: Any, value: Any) -> Any:
    type_name = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
    target = {"int": int, "float": float, "bool": bool, "str": str}.get(type_name)
    where = f"{rule_id}.{name}"
    if target is None:
        raise ThresholdError(f"threshold {where} has an unsupported type {type_name!r}")
    if isinstance(value, str):
        text = value.strip()
        if target is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ThresholdError(f"threshold {where} expects true or false, got {value!r}")
        try:
            return target(float(text)) if target is int and text.replace(".", "", 1).isdigit() else target(text)
        except ValueError:
            raise ThresholdError(f"threshold {where} expects {type_name}, got {value!r}") from None
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    raise ThresholdError(f"threshold {where} expects {type_name}, got {value!r}")


def resolve_thresholds(rules: list[type[Rule]], settings: list[str] = (), config: Path | None = None) -> dict[str, Any]:
    """Thresholds per rule id: defaults, then the TOML config file, then ``--set rule.field=value``."""
    overrides: dict[str, dict[str, Any]] = {}
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read config '{config}': {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config '{config}' is not valid TOML: {exc}") from None
        section = data.get("thresholds", data)
        for rule_id, values in section.items():
            if not isinstance(values, dict):
                raise ThresholdError(f"config '{config}': [{rule_id}] must be a table of threshold = value")
            overrides.setdefault(rule_id, {}).update(values)
    for item in settings:
        key, sep, value = item.partition("=")
        rule_id, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ThresholdError(f"--set expects rule.field=value, got {item!r}")
        overrides.setdefault(rule_id, {})[name] = value
    by_id = {r.id: r for r in rules}
    resolved = {r.id: r.default_thresholds() for r in rules}
    for rule_id, values in overrides.items():
        if rule_id not in by_id:
            raise ThresholdError(f"unknown rule {rule_id!r} in threshold override; see 'doctor rules'")
        kinds = {f.name: f.type for f in dataclasses.fields(resolved[rule_id])}
        for name, value in values.items():
            if name not in kinds:
                known = ", ".join(kinds) or "none"
                raise ThresholdError(f"rule {rule_id!r} has no threshold {name!r}; known: {known}")
            values[name] = _coerce(rule_id, name, kinds[name], value)
        resolved[rule_id] = dataclasses.replace(resolved[rule_id], **values)
    return resolved


# ---------------------------------------------------------------------- analysis
@dataclass
class Analysis:
    run: RunView
    findings: list[Finding] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rule_errors: list[dict[str, str]] = field(default_factory=list)
    rules_run: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def verdict(self) -> str:
        """One line: how many problems, and the most severe ones with where they start."""
        counts = self.counts()
        if not any(counts[s] for s in ("error", "warning")):
            extra = f" ({counts['info']} note{'s' if counts['info'] != 1 else ''})" if counts["info"] else ""
            if len(self.skipped) > len(self.rules_run):  # most rules had no data: do not claim health
                return f"No problems found by the {len(self.rules_run)} rules this log has data for{extra}."
            return f"Healthy: no problems found{extra}."
        parts = [f"{counts[s]} {s}{'s' if counts[s] != 1 else ''}" for s in SEVERITIES if counts[s]]
        top = [f for f in self.findings if f.severity in ("error", "warning")][:3]
        details = "; ".join(
            f.title + (f" from step {f.steps[0]:,}" if f.steps else "") + (f" in {f.layers[0]}" if f.layers else "") for f in top
        )
        return f"{', '.join(parts)}: {details}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.identity(),
            "verdict": self.verdict(),
            "counts": self.counts(),
            "findings": [f.to_json() for f in self.findings],
            "skipped": self.skipped,
            "rule_errors": self.rule_errors,
        }


def analyze(run: RunView, rules: list[type[Rule]], thresholds: dict[str, Any] | None = None) -> Analysis:
    """Run every rule; a rule lacking data is skipped with a reason, a failing rule is reported, not raised."""
    thresholds = thresholds or {}
    analysis = Analysis(run=run)
    for rule_cls in rules:
        missing = [r for r in rule_cls.requires if not run.has(r)]
        if missing:
            needs = "; ".join(REQUIREMENTS.get(m, m) for m in missing)
            source = run.header.get("source")
            if source:  # a log recorded without doctor: say how to get the data
                needs += f"; this log was read from {source}: record the run with doctor.watch(model, optimizer) to get it"
            analysis.skipped.append({"rule": rule_cls.id, "reason": f"needs {needs}"})
            continue
        try:
            found = rule_cls().check(run, thresholds.get(rule_cls.id, rule_cls.default_thresholds()))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            analysis.rule_errors.append(
                {"rule": rule_cls.id, "error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc(limit=-2)}
            )
            continue
        analysis.rules_run.append(rule_cls.id)
        analysis.findings.extend(found)
    analysis.findings = sort_findings(_fold_consequences(analysis.findings, {r.id: r for r in rules}))
    return analysis


def _fold_consequences(findings: list[Finding], rules: dict[str, type[Rule]]) -> list[Finding]:
    """Attach findings that another finding explains (a root cause) to it instead of listing them twice."""
    causes = [f for f in findings if f.severity in ("error", "warning") and rules.get(f.rule) and rules[f.rule].explains]
    kept = []
    for finding in findings:
        cause = next((c for c in causes if finding.rule in rules[c.rule].explains and c is not finding), None)
        if cause is not None and finding.severity != "info":
            cause.consequences.append(finding)
        else:
            kept.append(finding)
    return kept
