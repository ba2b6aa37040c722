"""Shared fixtures: the scenario zoo is recorded once per session and analyzed once."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from doctor.engine import analyze, load_rules
from doctor.loader import load_run
from tests.zoo import SCENARIOS, record

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def rules():
    return load_rules()


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_log(zoo_dir):
    """Record a scenario on first use; later uses share the log."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = record(name, zoo_dir)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def zoo_analysis(zoo_log, rules):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = analyze(load_run(zoo_log(name)), rules)
        return cache[name]

    return get


@pytest.fixture
def cli():
    """Invoke the command line in-process, as a user's terminal would (no colour, 120 columns)."""
    from typer.testing import CliRunner

    from doctor.cli import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, list(map(str, args)), env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})

    return invoke


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def all_scenarios() -> list[str]:
    return list(SCENARIOS)
