"""Fault injection: whatever goes wrong in the recorder, or however odd the model, training runs as if unwatched.

Every case trains the same seeded model twice, watched and unwatched, and compares the loss sequences bit for bit;
then it checks that the log is readable, analyzable, and says what was not recorded.
"""

from __future__ import annotations

import copy
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import doctor
from doctor.engine import analyze
from doctor.loader import load_run
from doctor.recorder import run as run_module
from doctor.recorder import statistics
from tests.zoo import SequenceClassifier, memory_data

REPO = Path(__file__).resolve().parents[1]
STEPS = 24


def _losses(make: Callable[[], tuple[nn.Module, torch.optim.Optimizer, Callable]], log: Path | None, **options):
    """Train ``STEPS`` steps; return the exact losses, the run (or None) and the warnings raised."""
    torch.manual_seed(0)
    model, optimizer, compute_loss = make()
    run = doctor.watch(model, optimizer, log=log, **options) if log else None
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(STEPS):
            loss = compute_loss(model, optimizer, step)
            optimizer.zero_grad()
            loss.backward()
            if not any(p.grad is not None and p.grad.is_sparse for p in model.parameters()):  # torch cannot clip those
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # doctor observes the call (pre-clip norm)
            optimizer.step()
            losses.append(loss.item())
            if run:
                run.log(loss=loss)
        if run:
            run.close()
    return losses, run, [str(w.message) for w in caught if "doctor" in str(w.message)]


def _lstm():
    model = SequenceClassifier("lstm", hidden=8)
    x, y = memory_data(32, 0, length=6)
    return model, torch.optim.Adam(model.parameters(), 1e-2), lambda m, o, s: nn.functional.cross_entropy(m(x), y)


def _raise(*args, **kwargs):
    raise RuntimeError("injected fault")


def test_a_watched_run_is_bitwise_identical_to_an_unwatched_one(tmp_path):
    expected, _, _ = _losses(_lstm, None)
    got, run, messages = _losses(_lstm, tmp_path / "w.log", activation_every=1, weight_every=1, spectral_every=1)
    assert got == expected and messages == []  # every statistic on every step, and not one bit of difference
    assert load_run(tmp_path / "w.log").loss.tolist() == pytest.approx(expected, rel=1e-6)


# Where a fault is injected -> the statistic that must switch itself off. Gradients are read in the optimizer's
# pre-step hook (doctor installs no backward hooks), so "gradients" is the fault in the backward pass's product.
FAULTS = {
    "forward hook (activation statistics)": (statistics, "activation_stats", "activations"),
    "model pre-hook (input statistics)": (statistics, "input_stats", "inputs"),
    "optimizer pre-step hook (gradient norms)": (run_module.Run, "_record_grads", "gradients"),
    "optimizer pre-step hook (learning rate)": (run_module.Run, "_record_lr", "learning_rate"),
    "optimizer pre-step hook (singular values)": (statistics.SpectralNorms, "__call__", "spectra"),
    "optimizer post-step hook (update ratios)": (run_module.Run, "_record_weights", "weights"),
    "clip_grad_norm_ (pre-clip norm)": (run_module.Run, "_keep_clip", "clipping"),
    "flush (copy to host)": (run_module, "HostCopy", "log"),
}


@pytest.mark.parametrize("where", list(FAULTS))
def test_a_fault_in_any_hook_leaves_training_bitwise_identical(tmp_path, monkeypatch, where):
    target, attribute, stat = FAULTS[where]
    expected, _, _ = _losses(_lstm, None)
    monkeypatch.setattr(target, attribute, _raise)
    got, run, messages = _losses(_lstm, tmp_path / "f.log", flush_every=5)
    assert got == expected
    assert len(messages) == 1 and (stat in messages[0] or "run log" in messages[0])  # one warning, not one per step
    assert run.hook_count == 0
    view = load_run(tmp_path / "f.log")
    if stat == "log":  # nothing after the header could be written; the log says so by having no close event
        assert view.truncated and view.num_steps == 0
    else:
        assert [e["stat"] for e in view.events_of("recorder_error")] == [stat]
        assert view.loss.size == STEPS and not view.truncated
        assert any(stat in note for note in view.notes)


# ------------------------------------------------------------------ unusual modules


class ComplexSpectrum(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x, dim=-1)  # complex output


class Magnitude(nn.Module):
    def forward(self, z):
        return z.abs()


class ArgMax(nn.Module):
    def forward(self, x):
        return x.argmax(dim=-1)  # integer output


class Probe(nn.Module):
    def forward(self, x):
        return None  # a logging module: returns nothing


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.a = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return {"logits": self.a(h), "hidden": h}


class Unusual(nn.Module):
    """Complex, integer and None outputs, a dict-returning child, a layer called twice, tied weights."""

    def __init__(self):
        super().__init__()
        self.spectrum, self.magnitude, self.argmax, self.probe = ComplexSpectrum(), Magnitude(), ArgMax(), Probe()
        self.heads = TwoHeads()
        self.square = nn.Linear(3, 3)
        self.embed = nn.Embedding(10, 6)
        self.unembed = nn.Linear(6, 10, bias=False)
        self.unembed.weight = self.embed.weight  # shared parameter

    def forward(self, tokens):
        x = self.embed(tokens).mean(dim=1)
        x = x + self.magnitude(self.spectrum(x))[..., :1]
        self.probe(x)
        out = self.heads(x)
        logits = self.square(self.square(out["logits"]))  # called twice per step
        picked = self.argmax(logits)
        return logits + 0.0 * picked.unsqueeze(-1), self.unembed(x)


def _unusual():
    model = Unusual()
    tokens, y = torch.randint(0, 10, (16, 5)), torch.randint(0, 3, (16,))

    def compute(m, o, s):
        logits, recon = m(tokens)
        return nn.functional.cross_entropy(logits, y) + 0.1 * nn.functional.cross_entropy(recon, tokens[:, 0])

    return model, torch.optim.SGD(model.parameters(), 0.1), compute


def _sparse_embedding():
    model = nn.Sequential(nn.EmbeddingBag(50, 8, mode="mean", sparse=True), nn.Linear(8, 2))
    tokens, y = torch.randint(0, 50, (32, 7)), torch.randint(0, 2, (32,))
    return model, torch.optim.SGD(model.parameters(), 0.1), lambda m, o, s: nn.functional.cross_entropy(m(tokens), y)


class PackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.head(h[-1])


def _packed_sequence():
    model = PackedLSTM()
    x, y = memory_data(16, 0, length=6)
    lengths = torch.randint(2, 7, (16,))
    return model, torch.optim.Adam(model.parameters(), 1e-2), lambda m, o, s: nn.functional.cross_entropy(m(x, lengths), y)


def _parameters_added_later():
    """Progressive unfreezing: the head joins the optimizer at step 8; a stray parameter outside the model too."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    stray = nn.Parameter(torch.zeros(3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model[2].requires_grad_(False)

    def compute(m, o, s):
        if s == 8:
            m[2].requires_grad_(True)
            o.add_param_group({"params": list(m[2].parameters()), "lr": 0.05})
            o.add_param_group({"params": [stray], "lr": 0.05})
        return nn.functional.cross_entropy(m(x) + stray, y)

    return model, torch.optim.SGD(model[0].parameters(), 0.1), compute


MODELS = {
    "complex, integer, None, dict outputs, a layer called twice, tied weights": (
        _unusual,
        {
            ("activations", "spectrum"),
            ("activations", "argmax"),
            ("activations", "probe"),
            ("activations", "square"),
        },
    ),
    "sparse gradients (EmbeddingBag sparse=True)": (_sparse_embedding, set()),
    "PackedSequence through an LSTM": (_packed_sequence, set()),
    "parameters added to the optimizer later": (_parameters_added_later, {("gradients", "1 of 5 optimizer parameters")}),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_unusual_models_train_bitwise_identically_and_the_log_says_what_was_skipped(tmp_path, rules, case):
    make, expected_skips = MODELS[case]
    expected, _, _ = _losses(make, None)
    got, run, messages = _losses(make, tmp_path / "u.log", activation_every=4, weight_every=4)
    assert got == expected
    assert messages == []
    view = load_run(tmp_path / "u.log")
    assert view.loss.size == STEPS and not view.truncated and not view.events_of("recorder_error")
    skips = {(e["stat"], e["what"]) for e in view.events_of("skipped")}
    assert skips == expected_skips
    assert view.grad_norms.notna().to_numpy().any(axis=1).all()  # a gradient norm for every recorded step
    analysis = analyze(view, rules)
    assert not analysis.rule_errors


def test_unusual_model_statistics_are_read_from_the_right_tensors(tmp_path):
    _losses(_unusual, tmp_path / "u.log", activation_every=4)
    view = load_run(tmp_path / "u.log")
    modules = set(view.activations["std"].columns)
    assert {"heads.body", "heads.a", "magnitude", "embed"} <= modules  # dict-returning parent's leaves, real outputs
    assert not modules & {"spectrum", "argmax", "probe"}
    tied = [n for n in view.params.index if "embed" in n]
    assert tied == ["embed.weight"]  # one tied parameter, recorded once


def test_parameters_added_later_are_recorded_from_when_they_train(tmp_path):
    _losses(_parameters_added_later, tmp_path / "p.log")
    grads = load_run(tmp_path / "p.log").grad_norms
    assert grads["2.weight"].iloc[:8].isna().all() and grads["2.weight"].iloc[8:].notna().all()
    assert grads["0.weight"].notna().all()


# ------------------------------------------------------------------ copies, disks, processes, threads


def test_a_watched_model_can_be_deep_copied_and_pickled_and_the_copy_records_nothing(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with doctor.watch(model, optimizer, log=tmp_path / "c.log", activation_every=1) as run:
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
        ema = copy.deepcopy(model)  # EMA / best-model snapshots are taken mid-run
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        restored = torch.load(buffer, weights_only=False)
        for clone in (ema, restored):
            clone(x).sum().backward()  # a forward with gradients on the copies: their hooks must do nothing
            assert torch.equal(clone[0].weight, model[0].weight)
    view = load_run(tmp_path / "c.log")
    assert view.num_steps == 5 and not view.truncated
    assert view.activations["std"].shape == (5, 3)  # only the watched model's passes, one per step


def test_a_full_disk_stops_recording_with_one_warning_and_training_goes_on(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    expected, _, _ = _losses(_lstm, None)

    def fill_disk_at_step_10(model, optimizer, step):
        if step == 10:
            writer = run_holder["run"]._writer
            writer._file = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - every write now fails: ENOSPC
        return _lstm_loss(model)

    run_holder: dict = {}
    got, run, messages = _losses_with(fill_disk_at_step_10, tmp_path / "full.log", run_holder, flush_every=4)
    assert got == expected
    assert len(messages) == 1 and "No space left on device" in messages[0] and "training goes on" in messages[0]
    assert run.hook_count == 0
    view = load_run(tmp_path / "full.log")
    assert 4 <= view.num_steps <= 10 and view.truncated  # everything flushed before the disk filled


def test_a_log_deleted_mid_run_stops_recording_with_one_warning(tmp_path):
    expected, _, _ = _losses(_lstm, None)
    log = tmp_path / "gone.log"

    def delete_at_step_10(model, optimizer, step):
        if step == 10:
            log.unlink()
        return _lstm_loss(model)

    got, run, messages = _losses_with(delete_at_step_10, log, {}, flush_every=4)
    assert got == expected
    assert len(messages) == 1 and "deleted or replaced" in messages[0]
    assert run.hook_count == 0 and not log.exists()


_LSTM_DATA = memory_data(32, 0, length=6)


def _lstm_loss(model):
    x, y = _LSTM_DATA
    return nn.functional.cross_entropy(model(x), y)


def _losses_with(compute, log, holder, **options):
    """Like ``_losses`` on the LSTM, with a loss function that may break things at a chosen step."""

    def make():
        model, optimizer, _ = _lstm()
        return model, optimizer, compute

    real_watch = doctor.watch

    def watch(*args, **kwargs):
        holder["run"] = real_watch(*args, **kwargs)
        return holder["run"]

    doctor.watch = watch
    try:
        return _losses(make, log, **options)
    finally:
        doctor.watch = real_watch


def test_two_models_in_one_process_and_in_two_threads_write_two_correct_logs(tmp_path):
    def train(name: str, seed: int, out: dict) -> None:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), 0.1)
        x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
        losses = []
        with doctor.watch(model, optimizer, log=tmp_path / f"{name}.log", flush_every=3) as run:
            for _ in range(30):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.log(loss=loss)
                losses.append(loss.item())
        out[name] = losses

    results: dict = {}
    threads = [threading.Thread(target=train, args=(f"t{seed}", seed, results)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    train("same_thread", 3, results)
    for name, losses in results.items():
        view = load_run(tmp_path / f"{name}.log")
        assert not view.truncated and view.num_steps == 30
        assert view.loss.tolist() == pytest.approx(losses, rel=1e-6), name  # the log keeps 7 significant digits


def test_forked_children_and_dataloader_workers_never_write_to_the_log(tmp_path):
    """A forked child inherits the open run; its exit, its SIGTERM and its training must not touch the parent's log."""
    log = tmp_path / "fork.log"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import doctor
        from torch.utils.data import DataLoader, TensorDataset
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
        loader = DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork")
        run = doctor.watch(model, opt, log={str(log)!r}, flush_every=3)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); run.log(loss=loss)
        for how in ("exit", "sigterm", "train"):
            pid = os.fork()
            if pid == 0:
                if how == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                if how == "train":
                    for _ in range(5):
                        loss = model(torch.randn(8, 6)).pow(2).mean()
                        opt.zero_grad(); loss.backward(); opt.step(); run.log(loss=loss)
                    run.close()
                sys.exit(0)  # runs atexit handlers in the child
            os.waitpid(pid, 0)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); run.log(loss=loss)
        run.close()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    view = load_run(log)
    assert view.num_steps == 16 and list(view.steps.index) == list(range(16))
    assert len(view.events_of("close")) == 1 and view.events_of("close")[0]["reason"] == "clean"
    assert sum(1 for line in log.read_text().splitlines() if '"kind":"header"' in line) == 1


# ------------------------------------------------------------------ process death


def _train_then_signal(log: Path, sig: signal.Signals, at_step: int, mid_flush: bool = False, **options) -> int:
    """Train in a child process that sends itself ``sig`` after step ``at_step`` (or in the middle of the first
    flush after it, between two records of one batch); return its exit status."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import doctor
        from doctor.recorder.writer import LogWriter
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        run = doctor.watch(model, opt, log={str(log)!r}, **{options!r})
        armed = False
        real_write = LogWriter.write
        def write(self, record):
            if armed and record.get("kind") == "grads":  # the second record of a batch: steps are already written
                if {int(sig)} == signal.SIGKILL:
                    line = '{{"kind":"grads","step":[1,2'  # half a line, as if killed inside write()
                    self._file.write(line); self._file.flush()
                os.kill(os.getpid(), {int(sig)})
            real_write(self, record)
        LogWriter.write = write
        for step in range(1000):
            loss = model(torch.randn(8, 6)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step(); run.log(loss=loss)
            if step == {at_step}:
                if {mid_flush}:
                    armed = True
                else:
                    os.kill(os.getpid(), {int(sig)})
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).returncode


@pytest.mark.parametrize(("at_step", "mid_flush"), [(0, False), (57, False), (99, False), (57, True)])
def test_a_run_killed_with_sigkill_leaves_a_readable_analyzable_log(tmp_path, rules, at_step, mid_flush):
    log = tmp_path / "killed.log"
    assert _train_then_signal(log, signal.SIGKILL, at_step, mid_flush, flush_every=10) == -signal.SIGKILL
    view = load_run(log)
    assert view.truncated
    flushed = (at_step + 1) // 10 * 10  # everything up to the last complete flush survives
    assert flushed - 10 <= view.num_steps <= at_step + 1 + (10 if mid_flush else 0)
    assert view.loss.notna().all() and len(view.grad_norms) <= view.num_steps + 1
    assert not analyze(view, rules).rule_errors


@pytest.mark.parametrize(("at_step", "mid_flush"), [(0, False), (57, False), (57, True)])
def test_sigterm_flushes_everything_then_stops_the_process(tmp_path, at_step, mid_flush):
    log = tmp_path / "term.log"
    options = {"flush_every": 10} if mid_flush else {"flush_every": 10_000, "flush_seconds": 1e9}
    status = _train_then_signal(log, signal.SIGTERM, at_step, mid_flush, **options)
    assert status == -signal.SIGTERM  # the process still stops the way it would have
    view = load_run(log)
    steps = list(view.steps.index)
    assert steps == list(range(len(steps)))
    if mid_flush:  # the signal came inside the write of the batch ending at step 58, held until it was complete
        assert len(steps) >= 59 and view.loss.size >= len(steps) - 1  # the very last step had not logged its loss yet
    else:
        assert len(steps) == at_step + 1 and view.loss.size == at_step + 1  # nothing buffered was lost
    assert len(view.grad_norms) == len(steps)  # no batch was left half-written
    assert view.events_of("close")[0]["reason"] == "SIGTERM" and not view.truncated
