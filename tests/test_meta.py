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


def test_every_rule_has_a_positive_scenario(rules):
    covered = set().union(*(s.expected for s in SCENARIOS.values()))
    assert {r.id for r in rules} <= covered
    assert sum(s.healthy for s in SCENARIOS.values()) >= 5


def test_rules_doc_is_generated_and_current(rules):
    committed = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == rules_markdown(rules), "docs/rules.md is stale: run make docs"
