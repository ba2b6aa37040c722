"""The command line through typer's CliRunner: output, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_analyze_json_has_identity_findings_and_citations(cli, zoo_log, tmp_path):
    result = cli("analyze", zoo_log("rnn_l2"), "--json", "-o", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["run"]["model"] == "SequenceClassifier" and payload["run"]["steps"] == 400
    finding = payload["findings"][0]
    assert finding["rule"] == "over_regularized_rnn" and finding["severity"] == "error"
    assert finding["steps"][0] == 0 and finding["layers"] == ["rnn.weight_hh_l0"]
    assert finding["fixes"][0]["source"].startswith("000_430f9255a679334f.txt § Ответы")
    assert (tmp_path / "r.html").stat().st_size > 1_000_000


def test_terminal_summary_is_one_line_per_finding_then_details(cli, zoo_log, tmp_path):
    result = cli("analyze", zoo_log("nan_in_data"), "--no-report")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[1].startswith("1 error: Non-finite loss or gradients from step 150")
    assert any(line.strip().startswith("ERROR   nonfinite steps 150-") for line in lines)


def test_fail_on_sets_the_exit_code(cli, zoo_log):
    assert cli("analyze", zoo_log("rnn_l2"), "--no-report", "--fail-on", "error").exit_code == 1
    assert cli("analyze", zoo_log("healthy_mlp"), "--no-report", "--fail-on", "warning").exit_code == 0


def test_threshold_override_changes_the_verdict(cli, zoo_log, tmp_path):
    base = json.loads(cli("analyze", zoo_log("fast_exponential_decay"), "--json", "--no-report").stdout)
    assert [f["rule"] for f in base["findings"]] == ["lr_decay_too_fast"]
    relaxed = cli(
        "analyze",
        zoo_log("fast_exponential_decay"),
        "--json",
        "--no-report",
        "--set",
        "lr_decay_too_fast.min_fraction=0.0001",
    )
    assert json.loads(relaxed.stdout)["findings"] == []
    config = tmp_path / "doctor.toml"
    config.write_text("[lr_decay_too_fast]\nmin_fraction = 0.0001\n")
    assert (
        json.loads(cli("analyze", zoo_log("fast_exponential_decay"), "--json", "--no-report", "--config", config).stdout)[
            "findings"
        ]
        == []
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("nope.x=1", "unknown rule 'nope'"),
        ("bad_init.nope=1", "rule 'bad_init' has no threshold 'nope'"),
        ("bad_init.weight_high=abc", "threshold bad_init.weight_high expects float, got 'abc'"),
        ("bad_init", "--set expects rule.field=value"),
    ],
)
def test_bad_threshold_overrides_are_one_line_errors(cli, zoo_log, setting, message):
    result = cli("analyze", zoo_log("healthy_mlp"), "--no-report", "--set", setting)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    json_other = tmp_path / "other.jsonl"
    json_other.write_text('{"a": 1}\n')
    json_other_log = tmp_path / "other.log"
    json_other_log.write_text('{"a": 1}\n')
    newer = tmp_path / "newer.log"
    newer.write_text(json.dumps({"kind": "header", "format": "training-doctor-run-log", "schema": 99}) + "\n")
    binary = tmp_path / "bin.log"
    binary.write_bytes(bytes(range(256)) * 4)
    return {
        "empty": (empty, "is empty"),
        "text": (text, "is not a doctor run log"),
        "other json": (json_other, "no step column"),
        "other json log": (json_other_log, "no doctor header"),
        "newer": (newer, "newer than this doctor reads"),
        "binary": (binary, "is not a doctor run log"),
        "missing": (tmp_path / "missing.log", "no such file"),
        "directory": (tmp_path, "without TensorBoard event files"),
    }


@pytest.mark.parametrize("case", ["empty", "text", "other json", "other json log", "newer", "binary", "missing", "directory"])
def test_bad_input_is_a_one_line_error_with_exit_code_2(cli, tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    result = cli("analyze", path, "--no-report")
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_truncated_log_is_analyzed_with_a_note(cli, zoo_log, tmp_path):
    raw = zoo_log("nan_in_data").read_bytes()
    cut = tmp_path / "cut.log"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    result = cli("analyze", cut, "--json", "--no-report")
    assert result.exit_code == 0
    run = json.loads(result.stdout)["run"]
    assert run["truncated"] and any("incomplete" in n or "no close event" in n for n in run["notes"])


def test_several_logs_give_reports_and_an_index(cli, zoo_log, tmp_path):
    result = cli("analyze", zoo_log("healthy_mlp"), zoo_log("rnn_l2"), "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    index = (tmp_path / "out" / "index.html").read_text()
    assert 'href="healthy_mlp.html"' in index and 'href="rnn_l2.html"' in index
    assert (tmp_path / "out" / "rnn_l2.html").exists()


def test_rules_and_explain_document_every_rule(cli, rules):
    listing = cli("rules").stdout
    for rule in rules:
        assert rule.id in listing
        text = cli("explain", rule.id).stdout
        assert "What it detects:" in text and "How to fix (cited):" in text and "Source:" in text
    unknown = cli("explain", "nope")
    assert unknown.exit_code == 2 and "unknown rule 'nope'" in unknown.stderr


def test_user_rules_directory_adds_a_rule(cli, zoo_log, tmp_path):
    rules_dir = tmp_path / "my_rules"
    rules_dir.mkdir()
    (rules_dir / "long_run.py").write_text(
        '"""A run longer than a budget."""\n'
        "from dataclasses import dataclass\n"
        "from doctor.rule import Rule\n\n"
        "@dataclass(frozen=True)\nclass T:\n    max_steps: int = 100\n\n"
        "class LongRun(Rule):\n    id = 'long_run'\n    title = 'Long run'\n    severity = 'info'\n    Thresholds = T\n"
        "    def check(self, run, t):\n"
        "        return [self.finding(f'{run.num_steps} steps')] if run.num_steps > t.max_steps else []\n"
    )
    result = cli("analyze", zoo_log("healthy_mlp"), "--json", "--no-report", "--rules", rules_dir)
    assert [f["summary"] for f in json.loads(result.stdout)["findings"] if f["rule"] == "long_run"] == ["400 steps"]
    (rules_dir / "broken.py").write_text("raise ImportError('oops')\n")
    broken = cli("analyze", zoo_log("healthy_mlp"), "--no-report", "--rules", rules_dir)
    assert broken.exit_code == 2 and "failed to import" in broken.stderr


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "doctor", "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("doctor 0.")
    help_text = subprocess.run([sys.executable, "-m", "doctor", "--help"], capture_output=True, text=True, cwd=REPO)
    assert "analyze" in help_text.stdout and "explain" in help_text.stdout


def test_compare_writes_an_overlay_and_lists_the_differences(cli, zoo_log, tmp_path):
    result = cli("compare", zoo_log("rnn_l2"), zoo_log("healthy_lstm"), "-o", tmp_path / "cmp.html")
    assert result.exit_code == 0, result.output
    assert "rnn_l2: 1 error" in result.stdout and "healthy_lstm: Healthy" in result.stdout
    assert "optimizer.group0.weight_decay: 0.001 | 0" in result.stdout
    assert (tmp_path / "cmp.html").stat().st_size > 100_000  # plotly inlined


def test_compare_needs_two_logs(cli, zoo_log):
    result = cli("compare", zoo_log("rnn_l2"))
    assert result.exit_code == 2 and "two or more logs" in result.stderr


def test_compare_collapses_a_param_group_only_one_run_has(tmp_path):
    """Document 000's fix puts weight_hh in its own group without decay: one row for that group, not ten."""
    import torch

    import doctor
    from doctor.compare import config_differences
    from doctor.loader import load_run
    from tests.zoo import SequenceClassifier, memory_data

    def record(name, exempt):
        torch.manual_seed(0)
        model = SequenceClassifier("lstm", hidden=8)
        hh = [p for n, p in model.named_parameters() if "weight_hh" in n]
        rest = [p for n, p in model.named_parameters() if "weight_hh" not in n]
        groups = [{"params": rest}, {"params": hh, "weight_decay": 0.0}] if exempt else [{"params": rest + hh}]
        optimizer = torch.optim.Adam(groups, 1e-2, weight_decay=1e-3)
        x, y = memory_data(16, 0, length=5)
        with doctor.watch(model, optimizer, log=tmp_path / f"{name}.log") as run:
            for _ in range(3):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.log(loss=loss)
        return load_run(tmp_path / f"{name}.log")

    rows = {d["key"]: d["values"] for d in config_differences([record("l2", False), record("exempt", True)])}
    assert rows["optimizer.group1"] == ["—", "1 parameters, lr 0.01, weight_decay 0"]
    assert rows["param rnn.weight_hh_l0.weight_decay"] == ["0.001", "0"]
    assert not [k for k in rows if k.startswith("optimizer.group1.")]
