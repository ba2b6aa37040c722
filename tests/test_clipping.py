"""Gradient norms before clipping: recorded from clip_grad_norm_ itself, and what the rules make of them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import doctor
from doctor import fixes
from doctor.engine import analyze
from doctor.loader import load_run

ORIGINAL_CLIP = torch.nn.utils.clip_grad_norm_
ORIGINAL_VALUE_CLIP = torch.nn.utils.clip_grad_value_


def _clipped_training(model, log, steps=20, clip=None, max_norm=0.5, **options):
    """SGD on random data, clipped every step by ``clip(parameters, max_norm)``; returns what clip returned."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 6) * 5, torch.randint(0, 3, (32,))
    returned = []
    with doctor.watch(model, optimizer, log=log, **options) as run:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            clip_fn = clip or torch.nn.utils.clip_grad_norm_  # looked up now, as Lightning and Accelerate do
            result = clip_fn((p for p in model.parameters()), max_norm)
            returned.append(float(result) if result is not None else None)
            optimizer.step()
            run.log(loss=loss)
    return returned, run


def test_the_pre_clip_norm_is_what_clip_grad_norm_returned_and_the_recorded_norm_is_after_clipping(tmp_path, tiny_mlp):
    returned, _ = _clipped_training(tiny_mlp, tmp_path / "c.log")
    steps = load_run(tmp_path / "c.log").steps
    np.testing.assert_allclose(steps["grad_norm_preclip"].to_numpy(), returned, rtol=1e-5)
    assert (steps["clip_max_norm"] == 0.5).all()
    clipped = steps["grad_norm_preclip"] > 0.5
    assert clipped.sum() >= 10  # the data are scaled so that clipping bites
    np.testing.assert_allclose(steps.loc[clipped, "grad_norm"].to_numpy(), 0.5, rtol=1e-4)


def test_the_wrapper_is_on_only_while_a_run_is_open_and_changes_nothing(tmp_path, tiny_mlp):
    assert torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
    returned_watched, run = _clipped_training(tiny_mlp, tmp_path / "w.log")
    assert torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP and torch.nn.utils.clip_grad.clip_grad_norm_ is ORIGINAL_CLIP
    assert run.hook_count == 0
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05)
    x, y = torch.randn(32, 6) * 5, torch.randint(0, 3, (32,))
    returned_plain = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(twin(x), y)
        optimizer.zero_grad()
        loss.backward()
        returned_plain.append(float(ORIGINAL_CLIP((p for p in twin.parameters()), 0.5)))
        optimizer.step()
    assert returned_watched == returned_plain  # bit for bit: the wrapper hands the call on unchanged


def test_an_empty_generator_still_gets_torchs_own_warning(tmp_path, tiny_mlp):
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.05)
    with doctor.watch(tiny_mlp, optimizer, log=tmp_path / "e.log"):
        with pytest.warns(UserWarning, match="empty generator"):
            torch.nn.utils.clip_grad_norm_((p for p in []), 1.0)


def test_a_clip_bound_before_watch_is_not_seen_and_nothing_breaks(tmp_path, tiny_mlp):
    returned, _ = _clipped_training(tiny_mlp, tmp_path / "b.log", clip=ORIGINAL_CLIP)
    steps = load_run(tmp_path / "b.log").steps
    assert "grad_norm_preclip" not in steps and len(steps) == 20


def test_two_runs_each_get_the_clips_of_their_own_parameters(tmp_path):
    torch.manual_seed(0)
    models = [nn.Linear(6, 3), nn.Linear(6, 3)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    runs = [doctor.watch(m, o, log=tmp_path / f"r{i}.log") for i, (m, o) in enumerate(zip(models, optimizers))]
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, optimizer, run, max_norm in zip(models, optimizers, runs, (0.01, 100.0)):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            run.log(loss=loss)
    runs[0].close()
    assert torch.nn.utils.clip_grad_norm_ is not ORIGINAL_CLIP  # the second run still needs it
    runs[1].close()
    assert torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
    limits = [set(load_run(tmp_path / f"r{i}.log").steps["clip_max_norm"]) for i in range(2)]
    assert limits == [{0.01}, {100.0}]


def test_disjoint_clips_in_one_step_add_up_to_the_global_norm(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6) * 5, torch.randint(0, 3, (32,))
    totals = []
    with doctor.watch(model, optimizer, log=tmp_path / "d.log") as run:
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            first = torch.nn.utils.clip_grad_norm_(model[0].parameters(), 0.2)
            second = torch.nn.utils.clip_grad_norm_(model[2].parameters(), 0.3)
            totals.append(float(torch.sqrt(first**2 + second**2)))
            optimizer.step()
            run.log(loss=loss)
    steps = load_run(tmp_path / "d.log").steps
    np.testing.assert_allclose(steps["grad_norm_preclip"].to_numpy(), totals, rtol=1e-5)
    assert (steps["clip_max_norm"] == 0.2).all()  # the tighter of the two limits


def _accelerate_style_clip(parameters, max_norm, norm_type=2.0):
    """What Accelerate 1.x (so the Hugging Face Trainer) does: the total first, then the clip with it."""
    params = list(parameters)
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)  # looked up at call time, as it does
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


@pytest.mark.skipif(not hasattr(torch.nn.utils, "clip_grads_with_norm_"), reason="torch < 2.6 has no clip_grads_with_norm_")
def test_a_clip_made_of_get_total_norm_and_clip_grads_with_norm_is_seen(tmp_path, tiny_mlp):
    originals = torch.nn.utils.get_total_norm, torch.nn.utils.clip_grads_with_norm_
    returned, _ = _clipped_training(tiny_mlp, tmp_path / "a.log", clip=_accelerate_style_clip)
    assert (torch.nn.utils.get_total_norm, torch.nn.utils.clip_grads_with_norm_) == originals  # off again after close
    steps = load_run(tmp_path / "a.log").steps
    np.testing.assert_allclose(steps["grad_norm_preclip"].to_numpy(), returned, rtol=1e-5)
    assert (steps["clip_max_norm"] == 0.5).all()
    clipped = steps["grad_norm_preclip"] > 0.5
    assert clipped.sum() >= 10
    np.testing.assert_allclose(steps.loc[clipped, "grad_norm"].to_numpy(), 0.5, rtol=1e-4)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    _clipped_training(model, tmp_path / "inf.log", clip=lambda ps, m: _accelerate_style_clip(ps, m, float("inf")))
    view = load_run(tmp_path / "inf.log")
    assert "grad_norm_preclip" not in view.steps  # an inf-norm total does not compare with the L2 norm recorded
    assert any("norm_type=inf" in e["what"] for e in view.events_of("skipped"))


def _train_fp16(log, unscale_first):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), 1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    with doctor.watch(model, optimizer, log=log, scaler=scaler) as run:
        for _ in range(60):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if unscale_first:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # the true norm is about 3.4: a clip for spikes
            scaler.step(optimizer)
            scaler.update()
            run.log(loss=loss)


def test_clipping_before_unscale_is_caught_and_its_fix_comes_first(tmp_path, rules):
    _train_fp16(tmp_path / "wrong.log", unscale_first=False)
    _train_fp16(tmp_path / "right.log", unscale_first=True)
    wrong, right = load_run(tmp_path / "wrong.log"), load_run(tmp_path / "right.log")
    assert [e["step"] for e in wrong.events_of("clip_before_unscale")] == [0]
    assert not right.events_of("clip_before_unscale")
    # the pre-clip norm of the wrong run carries the loss scale (1,024x); the right one is the true norm
    ratio = (wrong.steps["grad_norm_preclip"] / right.steps["grad_norm_preclip"]).iloc[:3]
    assert ratio.between(200, 5000).all()
    finding = next(f for f in analyze(wrong, rules).findings if f.rule == "persistent_clipping")
    assert finding.summary.startswith("clip_grad_norm_ ran before scaler.unscale_(optimizer)")
    assert finding.fixes[0] == fixes.UNSCALE_THEN_CLIP
    assert "persistent_clipping" not in {f.rule for f in analyze(right, rules).findings}


def test_without_pre_clip_norms_the_rule_sees_the_norm_pinned_at_the_ceiling(tmp_path, zoo_log, rules):
    """The zoo's clipped regression with the pre-clip fields stripped, as if clip had been bound before watch()."""
    stripped = tmp_path / "stripped.log"
    with open(zoo_log("clipped_unscaled_targets"), encoding="utf-8") as source, open(stripped, "w", encoding="utf-8") as out:
        for line in source:
            record = json.loads(line)
            record.pop("grad_norm_preclip", None)
            record.pop("clip_max_norm", None)
            out.write(json.dumps(record) + "\n")
    view = load_run(stripped)
    assert not view.has("grad_norm_preclip")
    finding = next(f for f in analyze(view, rules).findings if f.rule == "persistent_clipping")
    assert finding.evidence["ceiling"] == pytest.approx(1.0, rel=1e-4)
    assert finding.evidence["pinned_share_second_half"] > 0.95
    assert "How far above it the gradients were is not in the log" in finding.summary


def test_persistent_clipping_reports_the_share_and_size_of_the_clipping(zoo_analysis):
    f = next(f for f in zoo_analysis("clipped_unscaled_targets").findings if f.rule == "persistent_clipping")
    assert f.evidence["clipped_share_second_half"] == 1.0
    assert 100 < f.evidence["median_preclip_over_max_norm"] < 2000  # targets x100: the gradient is ~400x the clip
    assert f.evidence["max_norm"] == 1.0
    assert f.fixes[0].source.doc.startswith("002_")  # clipping hides the real problem (case analysis)
    chart = f.charts[0]
    assert chart.series == "steps:grad_norm_preclip" and chart.threshold == 1.0


def test_exploding_gradients_judges_the_norm_before_clipping(tmp_path, rules):
    """A loose clip (max_norm 5) caps a blow-up: the finding reports the spike's height before the clip."""
    from tests.zoo import SequenceClassifier, memory_data, train_classifier

    torch.manual_seed(0)
    model = SequenceClassifier("rnn", hidden=32)
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0)
        model.rnn.weight_hh_l0.mul_(1.2)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_classifier(tmp_path / "x.log", model, optimizer, memory_data(2048, 1, length=50), 120, clip=5.0)
    live = [str(w.message) for w in caught if "spiked" in str(w.message)]
    assert len(live) == 1 and live[0].startswith("doctor: the gradient norm before clipping spiked to")
    view = load_run(tmp_path / "x.log")
    f = next(f for f in analyze(view, rules).findings if f.rule == "exploding_gradients")
    assert f.evidence["before_clipping"] is True
    assert f.evidence["peak_grad_norm"] > 5.0  # above the clip: the recorded (post-clip) norm never exceeds 5
    assert view.steps["grad_norm"].max() <= 5.0 * (1 + 1e-4)
    assert view.steps["grad_norm_preclip"].max() > 100  # the blow-up the clip hid
    assert "(before clipping)" in f.summary and "that was not enough" in f.summary
    assert f.severity == "error" and f.fixes[0] == fixes.LOWER_LR  # it already clips: lower the rate instead
    assert f.charts[0].series == "steps:grad_norm_preclip"


def test_a_spike_the_clip_cut_and_the_run_recovered_from_is_only_an_info_note(tmp_path, rules, monkeypatch):
    """The zoo's clipped tanh RNN at seed offset 1000: a 30x gradient spike at step ~12, clipped to 1.0, then it learns."""
    import tests.zoo as zoo

    monkeypatch.setattr(zoo, "SEED_OFFSET", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log = zoo.record("healthy_rnn_clipped", tmp_path)
    f = next(f for f in analyze(load_run(log), rules).findings if f.rule == "exploding_gradients")
    assert f.severity == "info" and f.evidence["clipped_to"] == 1.0
    assert f.evidence["peak_ratio"] > 10 and f.evidence["peak_grad_norm"] > 10  # the spike was real...
    assert "the clip did the job" in f.summary  # ...and contained
    assert fixes.CLIP_GRAD_NORM not in f.fixes  # it already clips: the advice is not "clip"


def test_another_wrapper_on_top_of_doctors_keeps_working_across_runs(tmp_path, tiny_mlp, monkeypatch):
    """A library that wraps clip_grad_norm_ while a run is open: doctor leaves its chain in place, never loops."""
    first, _ = _clipped_training(tiny_mlp, tmp_path / "a.log", steps=2)  # doctor on and off once: the plain state
    calls = []
    opened = doctor.watch(tiny_mlp, torch.optim.SGD(tiny_mlp.parameters(), 0.1), log=tmp_path / "b.log")
    inner = torch.nn.utils.clip_grad_norm_

    def theirs(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", theirs)
    opened.close()
    assert torch.nn.utils.clip_grad_norm_ is theirs  # not torn out from under them
    returned, _ = _clipped_training(tiny_mlp, tmp_path / "c.log", steps=5)  # a new run wraps their wrapper
    assert len(calls) == 5 and len(returned) == 5
    steps = load_run(tmp_path / "c.log").steps
    np.testing.assert_allclose(steps["grad_norm_preclip"].to_numpy(), returned, rtol=1e-5)
    assert torch.nn.utils.clip_grad_norm_ is theirs


def test_a_clip_that_hides_a_bad_init_is_shown_as_the_inits_consequence(zoo_analysis):
    """Document 002's case: clipping keeps an N(0, 1) init's gradients in range, and hides it."""
    analysis = zoo_analysis("clip_hides_big_init")
    cause = next(f for f in analysis.findings if f.rule == "bad_init")
    clipping = next(c for c in cause.consequences if c.rule == "persistent_clipping")
    assert clipping.evidence["clipped_share_second_half"] == 1.0
    assert clipping.evidence["median_preclip_over_max_norm"] > 1000
    assert "persistent_clipping" not in {f.rule for f in analysis.findings}


def test_a_value_clip_is_noted_once_and_changes_nothing(tmp_path, tiny_mlp):
    def clip_by_value(parameters, _):
        return torch.nn.utils.clip_grad_value_(parameters, 0.01)  # looked up at call time, as Lightning does

    returned, _ = _clipped_training(tiny_mlp, tmp_path / "v.log", clip=clip_by_value)
    assert torch.nn.utils.clip_grad_value_ is ORIGINAL_VALUE_CLIP is torch.nn.utils.clip_grad.clip_grad_value_
    view = load_run(tmp_path / "v.log")
    skipped = view.events_of("skipped")
    assert len(skipped) == 1 and "clip_value=0.01" in skipped[0]["reason"] and skipped[0]["step"] == 0
    assert any("clipped by value" in note for note in view.notes)  # the report lists it
    assert view.steps["grad_norm"].max() <= 0.01 * np.sqrt(sum(p.numel() for p in tiny_mlp.parameters()))
