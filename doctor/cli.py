"""The ``doctor`` command line: analyze run logs, list and explain rules.

Errors the user can act on are one line on stderr and exit status 2; nothing
here ever shows a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from doctor import __version__
from doctor.errors import DoctorError

app = typer.Typer(
    name="doctor",
    help="Training Doctor: diagnose why a PyTorch training run fails to learn.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_USAGE = 2
EXIT_FAIL_ON = 1
_SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}


class FailOn(StrEnum):
    error = "error"
    warning = "warning"
    info = "info"


def _fail(message: str) -> typer.Exit:
    sys.stderr.write(f"doctor: error: {message}\n")
    return typer.Exit(EXIT_USAGE)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"doctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Training Doctor: diagnose why a PyTorch training run fails to learn."""


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _default_report_path(name: str, taken: set[Path]) -> Path:
    safe = _safe_stem(name)
    path = Path("reports") / f"{safe[:100]}.html"
    n = 2
    while path in taken:
        path = Path("reports") / f"{safe[:100]}-{n}.html"
        n += 1
    return path


@app.command()
def analyze(
    logs: Annotated[list[Path], typer.Argument(help="Run log(s) written by doctor.watch(...).", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print findings as JSON on stdout.")] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML report path (one log) or folder (several logs).")
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write the HTML report.")] = False,
    fail_on: Annotated[
        FailOn | None, typer.Option("--fail-on", help="Exit with status 1 if a finding this severe exists.")
    ] = None,
    rules_dirs: Annotated[list[Path], typer.Option("--rules", help="A folder of extra rule files.")] = [],  # noqa: B006
    settings: Annotated[list[str], typer.Option("--set", help="Override a threshold: rule.field=value (repeatable).")] = [],  # noqa: B006
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of [rule] threshold = value.")] = None,
) -> None:
    """Diagnose run logs: print findings, write an HTML report per run."""
    from doctor.engine import analyze as run_rules
    from doctor.engine import load_rules, resolve_thresholds
    from doctor.loader import load_run, merge_ranks

    try:
        rules = load_rules(rules_dirs)
        thresholds = resolve_thresholds(rules, settings, config)
        analyses = [run_rules(view, rules, thresholds) for view in merge_ranks([load_run(path) for path in logs])]
        reports: list[Path] = []
        if not no_report:
            from doctor.report import write_index, write_report

            taken: set[Path] = set()
            for analysis in analyses:
                if output is not None and len(logs) == 1:
                    target = output
                elif output is not None:
                    target = output / _default_report_path(analysis.run.name, taken).name
                else:
                    target = _default_report_path(analysis.run.name, taken)
                taken.add(target)
                reports.append(write_report(analysis, target))
            if len(analyses) > 1:
                index_dir = output if output is not None else Path("reports")
                reports.append(write_index(analyses, reports, index_dir / "index.html"))
    except DoctorError as exc:
        raise _fail(str(exc)) from None

    if json_out:
        payload = [a.to_json() for a in analyses]
        for item, report in zip(payload, reports):
            item["report"] = str(report)
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else {"analyses": payload}, indent=2, allow_nan=False))
    else:
        console = Console(highlight=False, soft_wrap=False)
        for analysis in analyses:
            _print_analysis(console, analysis)
    if reports:
        sys.stderr.write("".join(f"doctor: report written to {r}\n" for r in reports))
    if fail_on is not None:
        limit = ["error", "warning", "info"].index(fail_on.value)
        if any(["error", "warning", "info"].index(f.severity) <= limit for a in analyses for f in a.findings):
            raise typer.Exit(EXIT_FAIL_ON)


def _print_analysis(console: Console, analysis) -> None:  # noqa: ANN001 - Analysis, imported lazily
    ident = analysis.run.identity()
    source = analysis.run.header.get("source")
    parts = [ident["model"], ident["optimizer"], f"{ident['steps']:,} steps", ident["device"], source]
    console.print(
        f"[bold]{escape(ident['name'])}[/]  " + " · ".join(escape(str(p)) for p in parts if p)
        + (" · [yellow]log truncated[/]" if ident["truncated"] else "")
    )
    console.print(escape(analysis.verdict()))
    for f in analysis.findings:
        style = _SEVERITY_STYLE.get(f.severity, "")
        where = f" steps {f.steps[0]:,}-{f.steps[1]:,}" if f.steps else ""
        console.print(f"  [{style}]{f.severity.upper():7}[/] [bold]{escape(f.rule)}[/]{where}: {escape(f.summary)}")
        for c in f.consequences:
            console.print(f"           [dim]consequence: {escape(c.rule)}: {escape(c.summary)}[/]")
        for i, fix in enumerate(f.fixes[:3], 1):
            console.print(f"           {i}. {escape(fix.text)} [dim]({escape(fix.source.cite())})[/]")
    if source and analysis.skipped:  # a log recorded without doctor: one line, the report has each reason
        ids = ", ".join(s["rule"] for s in analysis.skipped)
        console.print(
            f"  [dim]skipped {len(analysis.skipped)} rules for lack of data ({escape(ids)}); the report says what each needs[/]"
        )
    else:
        for s in analysis.skipped:
            console.print(f"  [dim]skipped {escape(s['rule'])}: {escape(s['reason'])}[/]")
    for e in analysis.rule_errors:
        console.print(f"  [red]rule {escape(e['rule'])} failed: {escape(e['error'])}[/]")
    for note in analysis.run.notes:
        console.print(f"  [dim]note: {escape(note)}[/]")


@app.command("compare")
def compare(
    logs: Annotated[list[Path], typer.Argument(help="Two or more run logs (or TensorBoard/CSV/JSON Lines logs).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report file (default reports/A-vs-B.html).")] = None,
) -> None:
    """Overlay runs in one report (loss, LR, gradient norm, recurrent spectra) and list what differs in their settings."""
    from doctor.compare import config_differences, write_compare
    from doctor.engine import analyze as run_rules
    from doctor.engine import load_rules
    from doctor.loader import load_run

    if len(logs) < 2:
        raise _fail("doctor compare needs two or more logs, e.g. doctor compare a.log b.log")
    try:
        rules = load_rules()
        analyses = [run_rules(load_run(path), rules) for path in logs]
        target = output or Path("reports") / f"{'-vs-'.join(_safe_stem(a.run.name) for a in analyses)[:150]}.html"
        report = write_compare(analyses, target)
    except DoctorError as exc:
        raise _fail(str(exc)) from None
    console = Console(highlight=False, soft_wrap=False)
    for analysis in analyses:
        console.print(f"[bold]{escape(analysis.run.name)}[/]: {escape(analysis.verdict())}")
    differences = config_differences([a.run for a in analyses])
    console.print(f"{len(differences)} setting(s) differ" + (":" if differences else "."))
    for d in differences[:20]:
        console.print(f"  {escape(d['key'])}: " + " | ".join(escape(v) for v in d["values"]))
    sys.stderr.write(f"doctor: comparison written to {report}\n")


@app.command("rules")
def list_rules(
    rules_dirs: Annotated[list[Path], typer.Option("--rules", help="A folder of extra rule files.")] = [],  # noqa: B006
) -> None:
    """List every rule: id, severity, title."""
    from doctor.engine import load_rules

    try:
        rules = load_rules(rules_dirs)
    except DoctorError as exc:
        raise _fail(str(exc)) from None
    width = max(len(r.id) for r in rules)
    for rule in rules:
        typer.echo(f"{rule.id:<{width}}  {rule.severity:<7}  {rule.title}")


@app.command()
def explain(
    rule_id: Annotated[str, typer.Argument(help="A rule id, as listed by 'doctor rules'.", show_default=False)],
    rules_dirs: Annotated[list[Path], typer.Option("--rules", help="A folder of extra rule files.")] = [],  # noqa: B006
) -> None:
    """Explain one rule: what it detects, why it matters, its thresholds and cited fixes."""
    from doctor.engine import load_rules
    from doctor.explain import explain_rule

    try:
        rules = {r.id: r for r in load_rules(rules_dirs)}
    except DoctorError as exc:
        raise _fail(str(exc)) from None
    if rule_id not in rules:
        raise _fail(f"unknown rule {rule_id!r}; 'doctor rules' lists them")
    typer.echo(explain_rule(rules[rule_id]))


def main() -> None:
    """Console entry point: never a traceback, whatever happens."""
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("doctor: interrupted\n")
        sys.exit(130)
    except DoctorError as exc:
        sys.stderr.write(f"doctor: error: {exc}\n")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        sys.stderr.write(f"doctor: internal error: {type(exc).__name__}: {exc} (please report this)\n")
        sys.exit(3)
