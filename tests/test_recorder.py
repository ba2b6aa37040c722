"""The recorder on real small models: its numbers against independent computations, and its promises."""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import doctor
from doctor.errors import UsageError
from doctor.loader import load_run
from doctor.recorder.schedule import Schedule
from doctor.recorder.writer import rounded
from tests.zoo import SequenceClassifier, SmallCNN, TinyTransformer, image_data, memory_data

REPO = Path(__file__).resolve().parents[1]


def _train(model, log, steps=12, accumulate=1, x=None, y=None, **options):
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 6) if x is None else x
    y = torch.randint(0, 3, (32,)) if y is None else y
    losses = []
    with doctor.watch(model, optimizer, log=log, **options) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            for k in range(accumulate):
                loss = nn.functional.cross_entropy(model(x[k::accumulate]), y[k::accumulate]) / accumulate
                loss.backward()
                run.log(loss=loss * accumulate)
                losses.append(float(loss.detach()) * accumulate)
            optimizer.step()
    return run, losses


def test_gradient_norms_match_an_independent_computation(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    expected = []
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "g.log") as run:
        for _ in range(5):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(tiny_mlp(x), y)
            loss.backward()
            expected.append([torch.linalg.vector_norm(p.grad).item() for p in tiny_mlp.parameters()])
            optimizer.step()
            run.log(loss=loss)
    view = load_run(tmp_path / "g.log")
    np.testing.assert_allclose(view.grad_norms.to_numpy(), np.array(expected), rtol=1e-5)
    total = np.sqrt((np.array(expected) ** 2).sum(axis=1))
    np.testing.assert_allclose(view.steps["grad_norm"].to_numpy(), total, rtol=1e-5)
    assert list(view.steps.index) == [0, 1, 2, 3, 4]


def test_thinned_gradient_rows_are_the_max_over_each_window_and_keep_a_spike(tmp_path):
    """grad_rows=4 thins after step 4; rows are the max over the steps since the previous row, across flushes.

    One parameter is frozen for steps 10-19 (no gradient: its window max and the global norm skip it), and the
    batch at step 23 is scaled 40x, a spike on a step that gets no row of its own.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    per_step, totals = [], []
    with doctor.watch(model, optimizer, log=tmp_path / "t.log", grad_rows=4, flush_every=7) as run:
        for step in range(40):
            model[2].bias.requires_grad_(not 10 <= step < 20)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x * (40.0 if step == 23 else 1.0)), y)
            loss.backward()
            norms = [p.grad.norm().item() if p.grad is not None else math.nan for p in model.parameters()]
            per_step.append(norms)
            totals.append(math.sqrt(sum(n * n for n in norms if not math.isnan(n))))
            optimizer.step()
            run.log(loss=loss)
    view = load_run(tmp_path / "t.log")
    np.testing.assert_allclose(view.steps["grad_norm"].to_numpy(), totals, rtol=1e-5)
    schedule = Schedule(1, 4)
    rows = [s for s in range(40) if schedule.due(s)] + [39]  # the final flush closes the open window at step 39
    assert list(view.grad_norms.index) == rows
    expected, start = [], 0
    for row in rows:
        window = np.array(per_step[start : row + 1])
        expected.append([np.nan if np.isnan(c).all() else np.nanmax(c) for c in window.T])
        start = row + 1
    np.testing.assert_allclose(view.grad_norms.to_numpy(), np.array(expected), rtol=1e-5)
    spike_row = next(r for r in rows if r >= 23)  # step 23 has no row: the window that holds it keeps its norm
    assert spike_row != 23 and view.grad_norms.loc[spike_row, "0.weight"] == pytest.approx(per_step[23][0], rel=1e-5)
    assert per_step[23][0] > 5 * max(per_step[s][0] for s in range(20, 30) if s != 23)


def test_module_hooks_are_on_only_for_steps_that_sample_activations(tmp_path, tiny_mlp):
    """A forward hook on a module costs every call (PyTorch's slow call path): doctor keeps them off between samples."""
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.05)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    hooked = []
    with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "h.log", activation_every=5) as run:
        for _ in range(12):
            hooked.append(sum(len(m._forward_hooks) for m in tiny_mlp.modules()))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(tiny_mlp(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
    modules = len(load_run(tmp_path / "h.log").header["recorded_modules"])
    assert modules > 0 and hooked == [modules if s % 5 == 0 else 0 for s in range(12)]
    view = load_run(tmp_path / "h.log")
    assert list(view.activations["mean"].index) == [0, 5, 10]
    assert view.call_order and all(not m._forward_hooks for m in tiny_mlp.modules())


def test_gradient_norms_of_a_bfloat16_model_are_recorded_in_float32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 6, dtype=torch.bfloat16), torch.randint(0, 3, (16,))
    with doctor.watch(model, optimizer, log=tmp_path / "b.log") as run:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        expected = [p.grad.float().norm().item() for p in model.parameters()]
        optimizer.step()
        run.log(loss=loss)
    view = load_run(tmp_path / "b.log")
    np.testing.assert_allclose(view.grad_norms.to_numpy()[0], expected, rtol=1e-2)  # bf16 norms, 8 bits of mantissa
    assert not view.events_of("recorder_error")


def test_steps_are_counted_by_the_optimizer_under_gradient_accumulation(tmp_path, tiny_mlp):
    run, losses = _train(tiny_mlp, tmp_path / "acc.log", steps=10, accumulate=4)
    view = load_run(tmp_path / "acc.log")
    assert run.step == 10 and view.num_steps == 10
    per_step = np.array(losses).reshape(10, 4).mean(axis=1)  # logged micro-batch losses are averaged
    np.testing.assert_allclose(view.loss.to_numpy(), per_step, rtol=1e-5)


def test_update_ratio_and_weight_norm_match_the_weights(tmp_path, tiny_mlp):
    before = [p.detach().clone() for p in tiny_mlp.parameters()]
    _train(tiny_mlp, tmp_path / "w.log", steps=1, x=torch.randn(8, 6), y=torch.randint(0, 3, (8,)))
    view = load_run(tmp_path / "w.log")
    after = list(tiny_mlp.parameters())
    for name, b, a in zip(view.params.index, before, after):
        assert view.weight_norms.loc[0, name] == pytest.approx(torch.linalg.vector_norm(b).item(), rel=1e-5)
        ratio = (torch.linalg.vector_norm(a.detach() - b) / torch.linalg.vector_norm(b)).item()
        assert view.update_ratios.loc[0, name] == pytest.approx(ratio, rel=1e-4)


def test_update_ratio_copies_stay_within_the_memory_budget(tmp_path, tiny_mlp):
    # 16x6 and 3x16 weights are 384 and 192 bytes: a 400-byte budget copies one or two parameters per sample
    run, _ = _train(tiny_mlp, tmp_path / "budget.log", steps=8, weight_every=1, update_copy_mb=400 / 2**20)
    view = load_run(tmp_path / "budget.log")
    assert view.weight_norms.notna().all().all()  # norms of every parameter on every sample
    seen = view.update_ratios.notna()
    assert (seen.sum(axis=1) < 4).all() and seen.any().all()  # a slice per sample, every parameter in turn
    assert (view.update_ratios.to_numpy()[seen.to_numpy()] > 0).all()


@pytest.mark.parametrize(
    "make, data",
    [
        (
            lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)),
            lambda: (torch.randn(32, 6), torch.randint(0, 3, (32,))),
        ),
        (SmallCNN, lambda: image_data(32, 0)),
        (
            lambda: SequenceClassifier("lstm", hidden=8, layers=2, bidirectional=True),
            lambda: memory_data(32, 0, length=6),
        ),
        (lambda: SequenceClassifier("gru", hidden=8), lambda: memory_data(32, 0, length=6)),
        (lambda: TinyTransformer(16), lambda: memory_data(32, 0, length=6)),
    ],
    ids=["mlp", "cnn_bn", "bilstm2", "gru", "transformer"],
)
def test_step_zero_activation_statistics_exist_and_are_right(tmp_path, make, data):
    torch.manual_seed(0)
    model = make()
    x, y = data()
    first_module = next(m for m in model.modules() if not list(m.children()) or isinstance(m, nn.RNNBase))
    captured = {}

    def capture(module, args, out):
        captured.setdefault("y", (out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = first_module.register_forward_hook(capture)
    _train(model, tmp_path / "a.log", steps=3, x=x, y=y)
    handle.remove()
    view = load_run(tmp_path / "a.log")
    assert view.activations["std"].index[0] == 0
    assert len(view.activations["std"].columns) >= 2
    name = next(n for n, m in model.named_modules() if m is first_module)
    assert view.activations["mean"].loc[0, name] == pytest.approx(captured["y"].mean().item(), rel=1e-3, abs=1e-6)
    assert view.activations["std"].loc[0, name] == pytest.approx(captured["y"].std().item(), rel=1e-3)
    assert view.inputs["std"].loc[0, "input0"] == pytest.approx(x.std().item(), rel=1e-3)
    assert view.call_order[0] == name


def test_recurrent_singular_values_match_svdvals(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier("lstm", hidden=16, layers=2, bidirectional=True)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if "weight_hh" in n}
    x, y = memory_data(32, 0, length=5)
    _train(model, tmp_path / "s.log", steps=2, x=x, y=y)
    view = load_run(tmp_path / "s.log")
    assert len(initial) == 4  # 2 layers x 2 directions
    for name, w in initial.items():
        assert view.spectra.loc[0, name] == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-3)
        for k, gate in enumerate(("input", "forget", "cell", "output")):
            block = w[k * 16 : (k + 1) * 16]
            assert view.spectra.loc[0, f"{name}[{gate}]"] == pytest.approx(torch.linalg.svdvals(block)[0].item(), rel=1e-3)


def test_an_error_inside_a_statistic_never_reaches_the_loop(tmp_path, tiny_mlp, monkeypatch):
    from doctor.recorder import statistics

    def broken(*args, **kwargs):
        raise RuntimeError("boom in a stat")

    monkeypatch.setattr(statistics, "activation_stats", broken)
    monkeypatch.setattr(torch, "_foreach_norm", broken)
    with pytest.warns(RuntimeWarning, match="doctor: stopped recording") as caught:
        _train(tiny_mlp, tmp_path / "e.log", steps=30)
    messages = [str(w.message) for w in caught if "doctor" in str(w.message)]
    assert len(messages) == 3  # one warning per broken statistic (weights use _foreach_norm too), not per step
    view = load_run(tmp_path / "e.log")
    errors = {e["stat"] for e in view.events_of("recorder_error")}
    assert errors == {"activations", "gradients", "weights"}
    assert view.loss.size == 30 and not view.truncated  # the rest is still recorded


class _EveryRecordingPath(nn.Module):
    """LSTM (singular values), batch norm and ReLU (activation statistics, dead units), a head that can be frozen."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 16, batch_first=True)
        self.norm = nn.BatchNorm1d(16)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(self.act(self.norm(out[:, -1])))


# Every statistic sampled every 5 steps, gradient rows thinned after 4 steps, update ratios over a slice of the
# weights at a time, and no flush until close(): every recording path runs on non-flush steps.
_EVERY_PATH_OPTIONS = dict(
    activation_every=5, weight_every=5, input_every=5, spectral_every=5, grad_rows=4, update_copy_mb=4096 / 2**20,
    flush_every=10_000, flush_seconds=1e9,
)


def _train_every_path(model, run, x, y, steps=40, scaler=None, on_step=None):
    optimizer = run.optimizer
    for step in range(steps):
        if on_step:
            on_step(step)
        model.head.bias.requires_grad_(not 10 <= step < 20)  # parameters without a gradient for a while
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, enabled=scaler is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # observed by doctor: the pre-clip norm
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        run.log(loss=loss, accuracy=0.5)


def test_no_host_device_sync_on_non_flush_steps(tmp_path, monkeypatch):
    """Patch every host-reading Tensor method to raise: only the final flush may use them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in the hot path")

    torch.manual_seed(0)
    model = _EveryRecordingPath()
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)  # Adam reads its CPU step count with .item()
    x, y = torch.randn(32, 5, 6), torch.randint(0, 3, (32,))
    run = doctor.watch(model, optimizer, log=tmp_path / "n.log", **_EVERY_PATH_OPTIONS)
    with monkeypatch.context() as patch:
        for method in ("item", "cpu", "tolist", "__float__", "numpy", "__bool__"):
            patch.setattr(torch.Tensor, method, forbidden)
        _train_every_path(model, run, x, y)
    run.close()
    view = load_run(tmp_path / "n.log")
    assert not view.events_of("recorder_error") and not view.events_of("skipped")
    assert view.steps["grad_norm_preclip"].notna().sum() == 40 and view.loss.size == 40
    sampled = [0, 5, 10, 15, 20, 25, 30, 35]
    assert list(view.activations["std"].index) == sampled and list(view.spectra.index) == sampled
    assert list(view.update_ratios.index) == sampled and view.update_ratios.isna().any(axis=None)  # a slice at a time
    assert np.isnan(view.grad_norms.loc[16, "head.bias"])  # its window (steps 13-16) had no gradient


def test_unwritable_log_path_is_a_clear_error_at_watch_time(tmp_path, tiny_mlp):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write the run log at"):
        doctor.watch(tiny_mlp, torch.optim.SGD(tiny_mlp.parameters(), 0.1), log=blocker / "run.log")


def test_close_removes_every_hook(tmp_path, tiny_mlp):
    run, _ = _train(tiny_mlp, tmp_path / "h.log", steps=2)
    assert run.hook_count == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_mlp.modules())


def test_a_crash_in_the_loop_is_recorded_and_re_raised(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="bad batch"):
        with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "c.log") as run:
            for step in range(5):
                loss = tiny_mlp(torch.randn(4, 6)).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.log(loss=loss)
                if step == 3:
                    raise ValueError("bad batch")
    view = load_run(tmp_path / "c.log")
    crash = view.events_of("crash")[0]
    assert crash["error"] == "ValueError" and crash["message"] == "bad batch" and crash["step"] == 4
    assert view.loss.size == 4


def test_non_finite_values_round_trip(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    with (
        pytest.warns(RuntimeWarning, match="non-finite loss"),
        doctor.watch(tiny_mlp, optimizer, log=tmp_path / "nan.log") as run,
    ):
        for value in (1.0, float("nan"), float("inf"), -1.0):
            loss = tiny_mlp(torch.randn(4, 6)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=torch.tensor(value), reward=value)
    view = load_run(tmp_path / "nan.log")
    loss = view.steps["loss"].to_numpy()
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf and loss[3] == -1.0
    assert view.nonfinite["loss"] == [1, 2] and view.nonfinite["reward"] == [1, 2]


def test_gradients_are_recorded_unscaled_under_grad_scaler(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    expected = []
    with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "amp.log") as run:
        for _ in range(4):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(tiny_mlp(x), y)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            expected.append(math.sqrt(sum(float((p.grad / scale).pow(2).sum()) for p in tiny_mlp.parameters())))
            scaler.step(optimizer)
            scaler.update()
            run.log(loss=loss)
    view = load_run(tmp_path / "amp.log")
    np.testing.assert_allclose(view.steps["grad_norm"].to_numpy(), expected, rtol=1e-4)


def _train_with_a_nan_loss_at_step_3(model, log, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with doctor.watch(model, optimizer, log=log, flush_every=5, **options) as run:
        for step in range(12):
            loss = model(torch.randn(4, 6)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=loss * float("nan") if step == 3 else loss)


def test_non_finite_loss_warns_once_while_training(tmp_path, tiny_mlp):
    with pytest.warns(RuntimeWarning, match=r"doctor: non-finite loss \(nan\) at step 3"):
        _train_with_a_nan_loss_at_step_3(tiny_mlp, tmp_path / "w.log")


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def test_memory_stays_flat_over_2000_steps_and_no_activation_is_kept(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))

    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on torch's deprecated module aliases warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    counts, rss = [], []
    with doctor.watch(model, optimizer, log=tmp_path / "m.log", flush_every=50, activation_every=1) as run:
        for step in range(2000):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
            if step in (499, 1999):
                counts.append(live_tensors())
                rss.append(_rss_mb())
    assert counts[1] - counts[0] < 50  # bounded buffers, not one tensor per step
    if rss[0] is not None:
        assert rss[1] - rss[0] < 8, f"RSS grew {rss[1] - rss[0]:.1f} MB over 1,500 recorded steps"
    assert run.hook_count == 0 and not optimizer._optimizer_step_pre_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_schedule_keeps_a_100k_step_log_bounded():
    grads = Schedule(1, 2048)
    due = sum(grads.due(s) for s in range(100_000))
    assert 2048 <= due <= 2048 + 7 * 1024  # dense start, then ~rows/2 per doubling
    assert Schedule(25, 256).due(0) and not Schedule(0).due(0)


def test_unknown_watch_option_is_a_clear_error(tmp_path, tiny_mlp):
    with pytest.raises(UsageError, match="unknown doctor.watch option"):
        doctor.watch(tiny_mlp, torch.optim.SGD(tiny_mlp.parameters(), 0.1), log=tmp_path / "x.log", flush_evry=3)


def test_header_describes_model_optimizer_and_weight_decay(tmp_path):
    model = SequenceClassifier("lstm", hidden=8)
    groups = [
        {"params": [p for n, p in model.named_parameters() if "weight_hh" not in n], "weight_decay": 1e-4},
        {"params": [p for n, p in model.named_parameters() if "weight_hh" in n], "weight_decay": 0.0},
    ]
    run = doctor.watch(model, torch.optim.AdamW(groups, lr=1e-3), log=tmp_path / "h.log")
    run.close()
    header = json.loads((tmp_path / "h.log").read_text().splitlines()[0])
    params = {p["name"]: p for p in header["model"]["params"]}
    assert params["rnn.weight_hh_l0"]["recurrent"] and params["rnn.weight_hh_l0"]["weight_decay"] == 0.0
    assert params["rnn.weight_ih_l0"]["weight_decay"] == 1e-4 and params["rnn.weight_ih_l0"]["group"] == 0
    assert header["optimizer"]["class"] == "AdamW" and header["schema"] == 1
    assert header["env"]["torch"] == torch.__version__


def test_importing_doctor_is_cheap():
    code = "import sys, doctor; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_sync_on_cuda(tmp_path):  # pragma: no cover - runs on the GPU machine
    """Every recording path under set_sync_debug_mode: "error" without a scaler (a sync anywhere raises; one inside
    doctor becomes a recorder_error), then "warn" under GradScaler, whose own step() reads found_inf on the host,
    where no warning may come from doctor's code."""
    x, y = torch.randn(32, 5, 6, device="cuda"), torch.randint(0, 3, (32,), device="cuda")
    for mode, scaler in (("error", None), ("warn", torch.amp.GradScaler("cuda"))):
        torch.manual_seed(0)
        model = _EveryRecordingPath().cuda()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        log = tmp_path / f"cuda-{mode}.log"
        run = doctor.watch(model, optimizer, log=log, scaler=scaler, **_EVERY_PATH_OPTIONS)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # from step 1: step 0 creates the optimizer's state, which is the user's and not doctor's
                _train_every_path(
                    model, run, x, y, scaler=scaler, on_step=lambda s, m=mode: s == 1 and torch.cuda.set_sync_debug_mode(m)
                )
            finally:
                torch.cuda.set_sync_debug_mode(0)
        run.close()
        from_doctor = [
            f"{w.filename}:{w.lineno}: {w.message}"
            for w in caught
            if "synchroniz" in str(w.message) and f"{os.sep}doctor{os.sep}" in w.filename
        ]
        assert from_doctor == [], mode
        view = load_run(log)
        assert not view.events_of("recorder_error"), mode
        assert view.num_steps == 40 and list(view.spectra.index)[:3] == [0, 5, 10] and len(view.activations["mean"]) == 8


def test_grad_scaler_skipped_iterations_are_counted_and_training_is_unchanged(tmp_path):
    def train(watched: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        run = doctor.watch(model, optimizer, log=tmp_path / "amp.log", scaler=scaler, flush_every=7) if watched else None
        losses = []
        for i in range(40):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            overflow = math.inf if 10 <= i < 22 else 1.0  # the scaled gradients overflow: GradScaler skips these 12
            scaler.scale(loss * overflow).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            if run:
                run.log(loss=loss)
        if run:
            run.close()
        return losses, scaler

    plain, _ = train(False)
    watched, scaler = train(True)
    assert watched == plain and "update" not in scaler.__dict__  # the wrapper is gone after close()
    view = load_run(tmp_path / "amp.log")
    skipped = view.steps["amp_skipped"]
    assert view.num_steps == 28 and skipped.sum() == 12 and skipped[10] == 12  # 12 skipped before step 10 ran
    assert view.steps["amp_scale"][9] == 1024 and view.steps["amp_scale"][10] == 2.0**10 / 2**12


def test_on_nonfinite_raise_stops_the_run_with_one_clear_exception_after_flushing(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    run = doctor.watch(tiny_mlp, optimizer, log=tmp_path / "r.log", flush_every=5, on_nonfinite="raise")
    with pytest.raises(doctor.NonFiniteError) as caught:
        for step in range(100):
            optimizer.zero_grad()
            scale = math.nan if step == 12 else 1.0  # a corrupt batch: NaN loss, NaN gradients
            loss = nn.functional.cross_entropy(tiny_mlp(x * scale), y)
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
    message = str(caught.value)
    assert message.startswith("doctor: non-finite loss (nan) at step 12; first bad gradient in 0.weight (and 3 more)")
    assert step < 12 + 2 * 5  # stopped within two flush intervals
    view = load_run(tmp_path / "r.log")
    assert run.closed and not view.truncated and view.events_of("close")[0]["reason"] == "nonfinite"
    assert view.nonfinite["loss"][0] == 12


def test_a_bad_on_nonfinite_value_is_a_clear_error(tmp_path, tiny_mlp):
    with pytest.raises(UsageError, match="on_nonfinite expects 'warn' or 'raise'"):
        doctor.watch(tiny_mlp, torch.optim.SGD(tiny_mlp.parameters(), 0.1), log=tmp_path / "x.log", on_nonfinite="stop")


def test_live_false_keeps_quiet_but_still_records_the_nonfinite_value(tmp_path, tiny_mlp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        _train_with_a_nan_loss_at_step_3(tiny_mlp, tmp_path / "q.log", live=False)
    assert load_run(tmp_path / "q.log").events_of("nonfinite")[0]["step"] == 3


def test_a_gradient_spike_is_reported_live_once(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=1e-4)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with pytest.warns(RuntimeWarning, match=r"gradient norm spiked to .* at step 30") as caught:
        with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "s.log", flush_every=10) as run:
            for step in range(60):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(tiny_mlp(x), y) * (1000.0 if step in (30, 45) else 1.0)
                loss.backward()
                optimizer.step()
                run.log(loss=loss)
    assert sum("spiked" in str(w.message) for w in caught) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.just(-1.0)), max_size=40),
    st.sampled_from([5, 6, 7]),
)
def test_vectorized_rounding_equals_formatting_each_value(values, digits):
    """The flush rounds whole tables with numpy; it must write exactly what formatting each value would."""

    def reference(v):
        if v is None or v == -1.0:
            return None
        return float(f"{v:.{digits}g}") if math.isfinite(v) else v

    got = rounded(values, digits, no_value=-1.0)
    want = [reference(v) for v in values]
    assert json.dumps(got) == json.dumps(want)  # same text in the log: NaN, infinities and nulls included
    if values and None not in values:  # a table (steps x parameters), as the grads and weights records are
        assert json.dumps(rounded([values, values[::-1]], digits, no_value=-1.0)) == json.dumps([want, want[::-1]])


def test_a_compiled_model_stays_compiled_and_is_recorded(tmp_path):
    """torch.compile traces hooks into its graph: a hook reading the run's step counter made Dynamo recompile
    every step until it gave up (8 graphs, then eager). doctor's hooks break the graph and run as Python."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    eager_twin = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    eager_twin.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend=counting_backend)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    losses = {}
    for name, net, params in (("compiled", compiled, model.parameters()), ("eager", eager_twin, eager_twin.parameters())):
        optimizer = torch.optim.SGD(params, 0.05)
        watched = net is compiled
        run = doctor.watch(model, optimizer, log=tmp_path / "c.log", activation_every=10) if watched else None
        losses[name] = []
        for _ in range(40):
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
            if run:
                run.log(loss=loss)
        if run:
            run.close()
    assert len(graphs) <= 4  # the graph pieces around the hooks, compiled once (was: a recompile every step)
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-5)
    view = load_run(tmp_path / "c.log")
    assert list(view.activations["mean"].index) == [0, 10, 20, 30] and view.num_steps == 40
    np.testing.assert_allclose(view.loss.to_numpy(), losses["compiled"], rtol=1e-5)
