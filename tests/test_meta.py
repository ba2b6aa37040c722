"""Conventions every rule keeps: ids equal file stems, documented headings, cited fixes, a positive scenario."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from doctor import sources
from doctor.engine import builtin_rules_dir
from doctor.explain import rules_markdown
from doctor.rule import DOC_HEADINGS
from tests.zoo import SCENARIOS

DOCS = Path(__file__).resolve().parents[2] / "shared" / "docs"


def test_rule_ids_are_unique_and_equal_file_stems(rules):
    stems = sorted(p.stem for p in builtin_rules_dir().glob("*.py") if not p.name.startswith("_"))
    assert sorted(r.id for r in rules) == stems


@pytest.mark.parametrize("heading", DOC_HEADINGS)
def test_every_rule_documents_every_heading(rules, heading):
    for rule in rules:
        assert rule.doc_sections().get(heading), f"{rule.id} lacks '{heading}'"


def test_every_fix_is_cited_or_marked_general(rules):
    for rule in rules:
        assert rule.fixes, f"{rule.id} has no fixes"
        for fix in rule.fixes:
            assert fix.source.doc or fix.source is sources.GENERAL
            assert fix.text.endswith(".") and fix.text[0].isupper()


@pytest.mark.skipif(not DOCS.is_dir(), reason="shared/docs is not beside this checkout")
def test_every_cited_section_heading_occurs_in_its_document():
    for source in sources.ALL_SOURCES:
        text = (DOCS / source.doc).read_text(encoding="utf-8")
        assert source.section in text, f"{source.section!r} not found in {source.doc}"


def test_thresholds_are_frozen_typed_defaults(rules):
    for rule in rules:
        t = rule.Thresholds()
        assert dataclasses.is_dataclass(t) and rule.Thresholds.__dataclass_params__.frozen
        for name, _default, kind in rule.threshold_fields():
            assert kind in ("int", "float", "bool", "str"), (rule.id, name, kind)


# Rules whose positive case needs more than one process: their scenario lives in its own test file.
OUTSIDE_THE_ZOO = {"rank_drift": "test_distributed.py"}


def test_every_rule_has_a_positive_scenario(rules):
    covered = set().union(*(s.expected for s in SCENARIOS.values()))
    for rule, test_file in OUTSIDE_THE_ZOO.items():
        assert rule in (Path(__file__).parent / test_file).read_text(encoding="utf-8")
    assert {r.id for r in rules} <= covered | set(OUTSIDE_THE_ZOO)
    assert sum(s.healthy for s in SCENARIOS.values()) >= 5


def test_rules_doc_is_generated_and_current(rules):
    committed = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == rules_markdown(rules), "docs/rules.md is stale: run make docs"


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "load_pickle", "read_pickle"}


def test_nothing_a_log_contains_is_ever_executed_or_unpickled():
    """The analysis side reads logs as JSON only: no pickle, eval, exec or torch.load anywhere in the package."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offences = []
    for path in [*root.joinpath("doctor").rglob("*.py"), *root.joinpath("rules").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                offences += [f"{path.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                offences.append(f"{path.name}: from {node.module} import")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                loads = owner in ("torch", "np") and name == "load"
                if name in UNSAFE_CALLS or (not owner and name == "compile") or loads:
                    offences.append(f"{path.name}:{node.lineno}: {owner + '.' if owner else ''}{name}()")
    assert offences == []
