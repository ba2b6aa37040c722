"""The log reader never crashes: any bytes give a run view or a one-line LogFormatError."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doctor.engine import analyze
from doctor.errors import LogFormatError
from doctor.loader import load_run, parse_run

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _analyze_or_reject(raw: bytes | Path, rules) -> None:
    """Bytes of a run log, or the path of any log: a clean analysis or a one-line LogFormatError."""
    try:
        view = load_run(raw) if isinstance(raw, Path) else parse_run(raw)
    except LogFormatError as exc:
        assert "\n" not in str(exc)
        return
    result = analyze(view, rules)
    assert not result.rule_errors, result.rule_errors


@pytest.fixture(scope="module")
def real_log(zoo_log) -> bytes:
    return zoo_log("rnn_l2").read_bytes()


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(rules, raw):
    _analyze_or_reject(raw, rules)


@pytest.mark.parametrize("scenario", ["rnn_l2", "clipped_unscaled_targets"])
def test_every_truncation_offset_of_a_real_log(zoo_log, rules, scenario):
    raw = zoo_log(scenario).read_bytes()
    cuts = sorted(set(range(0, len(raw), max(1, len(raw) // 300))) | {1, 2, len(raw) - 1})
    for cut in cuts:
        _analyze_or_reject(raw[:cut], rules)


@SETTINGS
@given(st.randoms(use_true_random=False))
def test_shuffled_duplicated_and_dropped_lines(real_log, rules, rnd: random.Random):
    header, *lines = real_log.splitlines()
    lines = [line for line in lines if rnd.random() > 0.3]
    lines += [rnd.choice(lines) for _ in range(3)] if lines else []
    rnd.shuffle(lines)
    _analyze_or_reject(b"\n".join([header, *lines]) + b"\n", rules)


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30), st.none())
_values = st.recursive(
    st.one_of(_numbers, st.text(max_size=5), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


@SETTINGS
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "kind",
                    "step",
                    "scalars",
                    "norm",
                    "values",
                    "modules",
                    "names",
                    "matrices",
                    "sigma_max",
                    "lr",
                    "grad_norm",
                    "grad_norm_preclip",
                    "clip_max_norm",
                    "type",
                    "update_ratio",
                ]
            ),
            _values,
            max_size=6,
        ),
        max_size=6,
    ),
    st.sampled_from(["steps", "grads", "weights", "activations", "inputs", "spectra", "event", "trace", "x"]),
)
def test_malformed_records_after_a_valid_header(real_log, rules, records, kind):
    header = real_log.splitlines()[0]
    body = []
    for record in records:
        record.setdefault("kind", kind)
        body.append(json.dumps(record, allow_nan=True).encode())
    _analyze_or_reject(b"\n".join([header, *body]) + b"\n", rules)


def test_huge_and_non_finite_numbers_everywhere(real_log, rules):
    header = real_log.splitlines()[0]
    steps = {
        "kind": "steps",
        "step": [0, 1, 2],
        "grad_norm": [1e308, float("nan"), float("inf")],
        "grad_norm_preclip": [float("inf"), 1e308, float("nan")],
        "clip_max_norm": [0.0, -1.0, float("nan")],
        "scalars": {"loss": [float("-inf"), 1e308, float("nan")]},
        "lr": [[1e308], [None], [float("nan")]],
    }
    raw = b"\n".join([header, json.dumps(steps).encode()]) + b"\n"
    _analyze_or_reject(raw, rules)


def test_unknown_schema_versions(rules):
    for version in (0, -1, "1", None, 2**70):
        raw = json.dumps({"kind": "header", "format": "training-doctor-run-log", "schema": version}).encode() + b"\n"
        _analyze_or_reject(raw, rules)


_CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "NaN", "1e308", "-0", "x", "1,5", '"q"']),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=6),
)
_HEADERS = st.lists(st.sampled_from(["step", "epoch", "loss", "val_loss", "lr-Adam", "train/loss", "x", ""]), max_size=5)


@SETTINGS
@given(
    _HEADERS,
    st.lists(st.lists(_CELLS, max_size=6), max_size=30),
    st.sampled_from(["metrics.csv", "s.jsonl", "trainer_state.json"]),
)
def test_external_logs_give_a_view_or_a_one_line_error(tmp_path_factory, rules, header, rows, name):
    """CSV, JSON Lines and trainer_state.json from other tools: any header, any cells, ragged rows."""
    path = tmp_path_factory.mktemp("ext") / name
    if name.endswith(".csv"):
        path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(dict(zip(header, r))) for r in rows) + "\n")
    else:
        path.write_text(json.dumps({"log_history": [dict(zip(header, r)) for r in rows]}))
    _analyze_or_reject(path, rules)
