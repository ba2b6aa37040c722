"""Logs recorded without doctor: real zoo runs exported to TensorBoard, CSV (Lightning style) and JSON Lines.

Each export holds only what such tools log (loss, validation loss, learning rate); the loss-curve and LR rules must
find in it what they find in the doctor log of the same run, and every other rule must be skipped with a reason
that names doctor.watch.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from doctor.engine import analyze
from doctor.importers import canonical_name
from doctor.loader import load_run

CURVE_RULES = {"lr_decay_too_fast", "lr_too_high", "loss_plateau", "overfitting", "nonfinite"}
CASES = {  # zoo scenario -> the loss-curve findings its export must show
    "fast_exponential_decay": {"lr_decay_too_fast"},
    "memorizes_small_set": {"overfitting"},
    "sgd_lr_too_high": {"lr_too_high"},
    "lr_far_too_low": {"loss_plateau"},
    "nan_in_data": {"nonfinite"},
    "healthy_mlp": set(),
}


def _series(view):
    """(step, {name: value}) rows of what an external logger would have: loss, val_loss, lr."""
    columns = [c for c in ("loss", "val_loss", "lr") if c in view.steps]
    for step, row in view.steps[columns].iterrows():
        values = {c: float(row[c]) for c in columns if not (math.isnan(row[c]) and step not in view.nonfinite.get(c, []))}
        yield int(step), values


def export_tensorboard(view, folder: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    names = {"loss": "train/loss", "val_loss": "eval/loss", "lr": "train/learning_rate"}  # Hugging Face's tags
    with SummaryWriter(str(folder)) as writer:
        for step, values in _series(view):
            for name, value in values.items():
                writer.add_scalar(names[name], value, step)
    return folder


def export_lightning_csv(view, folder: Path) -> Path:
    """Lightning's CSVLogger: one row per log call, train and validation metrics on separate rows."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "lr-Adam", "step", "train_loss_step", "val_loss"])
        for step, values in _series(view):
            writer.writerow([step // 100, values.get("lr", ""), step, values.get("loss", ""), ""])
            if "val_loss" in values:
                writer.writerow([step // 100, "", step, "", values["val_loss"]])
    return path


def export_jsonl(view, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scalars.jsonl"
    with path.open("w") as f:
        for step, values in _series(view):
            f.write(json.dumps({"step": step, **values}) + "\n")
    return path


EXPORTERS = {"tensorboard": export_tensorboard, "lightning_csv": export_lightning_csv, "jsonl": export_jsonl}


@pytest.mark.parametrize("fmt", list(EXPORTERS))
@pytest.mark.parametrize("scenario", list(CASES))
def test_exported_runs_get_the_same_loss_curve_findings(tmp_path, zoo_log, zoo_analysis, rules, scenario, fmt):
    original = load_run(zoo_log(scenario))
    expected = CASES[scenario]
    assert {f.rule for f in zoo_analysis(scenario).findings} & CURVE_RULES >= expected  # the doctor log shows them
    path = EXPORTERS[fmt](original, tmp_path / fmt)
    view = load_run(path)
    assert view.header["format"] == "external"
    assert set(view.steps.columns) >= {"loss", "lr"}
    assert len(view.loss) == len(original.loss)
    analysis = analyze(view, rules)
    found = {f.rule for f in analysis.findings if f.severity in ("error", "warning")}
    assert found == expected
    assert set(analysis.rules_run) >= CURVE_RULES - {"overfitting"}
    skipped = {s["rule"]: s["reason"] for s in analysis.skipped}
    assert "vanishing_gradients" in skipped and "doctor.watch(model, optimizer)" in skipped["vanishing_gradients"]
    assert not analysis.rule_errors


def test_an_external_log_gets_a_report_and_a_json_answer(tmp_path, zoo_log, cli):
    path = export_tensorboard(load_run(zoo_log("fast_exponential_decay")), tmp_path / "tb")
    result = cli("analyze", str(path), "--json", "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [f["rule"] for f in payload["findings"]] == ["lr_decay_too_fast"]
    assert "TensorBoard" in payload["run"]["notes"][0]
    html = (tmp_path / "r.html").read_text()
    assert "lr_decay_too_fast" in html and "doctor.watch" in html


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("train/loss", "loss"),
        ("train_loss_step", "loss"),
        ("loss", "loss"),
        ("eval/loss", "val_loss"),
        ("val_loss", "val_loss"),
        ("validation/loss", "val_loss"),
        ("lr-Adam", "lr"),
        ("lr-SGD/pg1", "lr"),
        ("train/learning_rate", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("accuracy", "accuracy"),
    ],
)
def test_common_metric_names_map_to_what_the_rules_read(raw, name):
    assert canonical_name(raw) == name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("metrics.csv", "epoch,loss\n0,1.0\n", "no step column"),
        ("metrics.csv", "step,note\n0,hello\n", "no numeric columns"),
        ("s.jsonl", "[1, 2]\n", "holds no JSON objects"),
        ("s.jsonl", '{"step": 0, "note": "x"}\n', "no numeric columns"),
        ("trainer_state.json", "{}", "has no log_history"),
        ("trainer_state.json", "{not json", "is not valid JSON"),
        ("trainer_state.json", '{"log_history": [1, 2]}', "no JSON objects"),
    ],
)
def test_bad_external_logs_are_one_line_errors(cli, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    result = cli("analyze", str(path))
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_a_directory_without_event_files_is_a_one_line_error(cli, tmp_path):
    result = cli("analyze", str(tmp_path))
    assert result.exit_code == 2 and "without TensorBoard event files" in result.stderr
