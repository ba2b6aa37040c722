"""DDP under torchrun: two processes on CPU (gloo), rank 0 by default, one log per rank with all_ranks=True."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.engine import analyze
from doctor.loader import load_run, merge_ranks

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[1]


def _torchrun(log: Path, mode: str, script: str = "ddp_train.py") -> str:
    if not __import__("torch").distributed.is_available():
        pytest.skip("torch.distributed is not available")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPTS / script)]
    done = subprocess.run([*command, str(log), mode], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_by_default_only_rank_0_records(tmp_path):
    out = _torchrun(tmp_path / "ddp.log", "default")
    assert "rank 0: Run" in out and "rank 1: InactiveRun" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.log"]
    view = load_run(tmp_path / "ddp.log")
    assert view.num_steps == 150 and view.header["env"]["world_size"] == 2 and view.header["env"]["rank"] == 0


@pytest.fixture(scope="module")
def ddp_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    for mode in ("healthy", "faulty"):
        _torchrun(folder / f"{mode}.log", mode)
    return folder


def test_all_ranks_write_one_log_each_and_analyze_merges_them(ddp_logs, rules):
    views = [load_run(ddp_logs / f"healthy.rank{r}.log") for r in (0, 1)]
    merged = merge_ranks(views)
    assert len(merged) == 1 and sorted(merged[0].ranks) == [0, 1] and merged[0].name == "healthy"
    # all-reduced gradients and identical replicas: the same global gradient norm and weights on both ranks
    g0, g1 = (v.steps["grad_norm"].to_numpy() for v in views)
    assert abs(g0 - g1).max() <= 1e-5 * abs(g0).max()
    assert ((views[0].weight_norms - views[1].weight_norms).abs().to_numpy().max()) < 1e-5
    analysis = analyze(merged[0], rules)
    assert not [f for f in analysis.findings if f.severity in ("error", "warning")]
    assert "rank_drift" in analysis.rules_run


def test_a_rank_fed_other_data_and_a_slow_loader_are_found(ddp_logs, rules, cli, tmp_path):
    logs = [ddp_logs / f"faulty.rank{r}.log" for r in (0, 1)]
    analysis = analyze(merge_ranks([load_run(p) for p in logs])[0], rules)
    drift = [f for f in analysis.findings if f.rule == "rank_drift"]
    assert len(drift) == 1, [f.summary for f in analysis.findings]
    evidence = drift[0].evidence
    assert evidence["median_loss_drift"]["1"] > 0.25 > evidence["median_loss_drift"]["0"]
    assert evidence["median_data_wait_s"]["1"] > 0.025 > 5 * evidence["median_data_wait_s"]["0"]
    assert "rank 1 waits" in drift[0].summary and "rank 1's loss runs" in drift[0].summary
    result = cli("analyze", *logs, "-o", tmp_path / "out")
    assert result.exit_code == 0 and (tmp_path / "out" / "faulty.html").exists()
    assert "rank 1" in (tmp_path / "out" / "faulty.html").read_text()


def test_fsdp_shard_norms_are_combined_into_whole_parameter_norms(tmp_path, rules):
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP is not available")
    if not hasattr(__import__("torch.distributed.fsdp", fromlist=["x"]), "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard")
    out = _torchrun(tmp_path / "fsdp.log", "", script="fsdp_train.py")
    truth = json.loads(out.strip().splitlines()[-1])
    shards = [load_run(tmp_path / f"fsdp.rank{r}.log") for r in (0, 1)]
    assert all(v.header["sharded"] and not v.events_of("recorder_error") for v in shards)
    assert shards[0].steps["grad_norm"][0] < truth["total"] * 0.99  # one shard alone is not the whole
    merged = merge_ranks(shards)[0]
    assert merged.steps["grad_norm"][0] == pytest.approx(truth["total"], rel=1e-5)
    for name, norm in truth["params"].items():
        assert merged.grad_norms[name][0] == pytest.approx(norm, rel=1e-5), name
    assert not [f for f in analyze(merged, rules).findings if f.severity in ("error", "warning")]
