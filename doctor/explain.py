"""Rule documentation generated from each rule's own docstring, thresholds and fixes.

Used by ``doctor explain RULE`` and to write docs/rules.md, so nothing is written twice.
"""

from __future__ import annotations

import textwrap

from doctor.rule import DOC_HEADINGS, Rule


def explain_rule(rule: type[Rule], markdown: bool = False) -> str:
    sections = rule.doc_sections()
    head = f"## `{rule.id}`: {rule.title}" if markdown else f"{rule.id}: {rule.title}"
    out = [
        head,
        "",
        f"Severity: {rule.severity}. Needs: {', '.join(rule.requires) or 'nothing beyond the log header'}.",
    ]
    if sections.get("summary"):
        out += ["", sections["summary"]]
    for heading in DOC_HEADINGS:
        body = sections.get(heading, "")
        if heading == "How to fix (cited)":
            body = "\n".join(
                f"{i}. {fix.text}\n   Source: {fix.source.cite()}"
                + ("\n   Example:\n" + textwrap.indent(fix.code, "       ") if fix.code else "")
                for i, fix in enumerate(rule.fixes, 1)
            ) + (f"\n{body}" if body else "")
        elif heading == "Thresholds":
            fields = rule.threshold_fields()
            listed = "\n".join(f"- {rule.id}.{name} = {value!r} ({kind})" for name, value, kind in fields)
            body = (listed or "none") + (f"\n{body}" if body else "")
        out += ["", f"### {heading}" if markdown else f"{heading}:", body if markdown else textwrap.indent(body, "  ")]
    return "\n".join(out).rstrip() + "\n"


def rules_markdown(rules: list[type[Rule]]) -> str:
    header = (
        "# Rules\n\nGenerated from the rule files in `rules/` by `python -m doctor.explain`; "
        "do not edit by hand. `doctor explain ID` prints the same text.\n"
    )
    return header + "\n".join("\n" + explain_rule(r, markdown=True) for r in rules)


if __name__ == "__main__":
    from doctor.engine import load_rules

    print(rules_markdown(load_rules()), end="")
