"""Every rule against the scenario zoo: the right problems found, with the right numbers; healthy runs clean."""

from __future__ import annotations

import math

import pytest

from tests.zoo import SCENARIOS, flagged


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_flags_exactly_its_expected_rules(name, zoo_analysis):
    analysis = zoo_analysis(name)
    assert flagged(analysis) == set(SCENARIOS[name].expected), analysis.verdict()
    assert not analysis.rule_errors


@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s.healthy])
def test_healthy_twin_verdict_says_healthy(name, zoo_analysis):
    assert zoo_analysis(name).verdict().startswith("Healthy")


def _finding(analysis, rule):
    return next(f for f in analysis.findings if f.rule == rule)


def test_nonfinite_names_the_poisoned_step_and_its_input(zoo_analysis):
    f = _finding(zoo_analysis("nan_in_data"), "nonfinite")
    assert f.evidence["first_nonfinite_step"] == 150
    assert f.evidence["inputs_nonfinite_at"][0] == 150  # the corrupt batch was sampled
    assert f.fixes[0].text.startswith("Find the first non-finite value")
    assert "0.weight" in f.evidence["params"]


def test_over_regularized_rnn_reports_shrunk_spectrum_and_memory_horizon(zoo_analysis):
    f = _finding(zoo_analysis("rnn_l2"), "over_regularized_rnn")
    start, end = f.evidence["sigma_max_start_end"]["rnn.weight_hh_l0"]
    assert start > 1.5 and end < 0.3
    assert 1 <= f.evidence["memory_horizon_steps"] < 5
    assert f.evidence["weight_decay"]["rnn.weight_hh_l0"] == pytest.approx(1e-3)
    assert f.fixes[0].source.doc.startswith("000_")
    assert "loss_plateau" in {c.rule for c in f.consequences}


def test_recurrent_decay_without_damage_is_only_an_info_note(tmp_path, rules):
    import torch

    from doctor.engine import analyze
    from doctor.loader import load_run
    from tests.zoo import SequenceClassifier, memory_data, train_classifier

    torch.manual_seed(0)
    model = SequenceClassifier("gru")
    train_classifier(
        tmp_path / "gru.log",
        model,
        torch.optim.Adam(model.parameters(), 1e-2, weight_decay=1e-6),
        memory_data(1024, 1, length=10),
        60,
    )
    findings = analyze(load_run(tmp_path / "gru.log"), rules).findings
    notes = [f for f in findings if f.rule == "over_regularized_rnn"]
    assert [f.severity for f in notes] == ["info"]


def test_exploding_gradients_finds_the_early_spike_and_recurrent_jump(zoo_analysis):
    f = _finding(zoo_analysis("exploding_rnn"), "exploding_gradients")
    assert 5 <= f.evidence["peak_grad_step"] <= 15
    assert f.evidence["peak_grad_norm"] > 10 * f.evidence["grad_norm_at_start"]
    before, after, step = f.evidence["recurrent_sigma_max_jump"]["rnn.weight_hh_l0"]
    assert before == pytest.approx(1.2, rel=0.02) and after > 5 and step == 50  # the first spectral sample after the blow-up
    assert f.layers == ["rnn.weight_hh_l0"]


def test_vanishing_gradients_names_an_early_layer(zoo_analysis):
    f = _finding(zoo_analysis("vanishing_sigmoid"), "vanishing_gradients")
    assert f.evidence["weakest_early_layer"] in ("0.weight", "2.weight")
    assert f.evidence["ratio"] < 1e-3


def test_bad_init_flags_layers_with_weights_far_above_he_scale(zoo_analysis):
    f = _finding(zoo_analysis("relu_big_init"), "bad_init")
    layer = f.evidence["layers"][0]
    assert layer["weight_rms_over_he"] == pytest.approx(1 / math.sqrt(2 / 20), rel=0.1)  # N(0,1), fan_in 20
    assert layer["gain"] > 3
    assert f.evidence["initial_loss"] > 100 * f.evidence["chance_loss"]
    assert "batch norm" not in " ".join(fix.text for fix in f.fixes)  # no batch norm here: no batch-norm test run


def test_bad_init_under_batch_norm_says_it_is_masked(zoo_analysis):
    f = _finding(zoo_analysis("bn_hides_bad_init"), "bad_init")
    masked = {layer["layer"]: layer["masked_by_norm"] for layer in f.evidence["layers"]}
    assert masked == {"0": True, "3": True, "6": True, "9": True, "12": True, "15": False}  # the output layer has no BN
    assert "masks the bad init" in f.summary
    assert f.fixes[1].source.section == "ケース分析"


def test_lr_decay_too_fast_finds_the_collapse_step(zoo_analysis):
    f = _finding(zoo_analysis("fast_exponential_decay"), "lr_decay_too_fast")
    assert f.evidence["collapse_step"] == 149  # first t with 0.98**t < 0.05
    assert f.evidence["loss_improvement_per_step_after"] < 0.2 * f.evidence["loss_improvement_per_step_before"]


def test_weights_not_updating_names_the_layer_left_out(zoo_analysis):
    f = _finding(zoo_analysis("layer_missing_from_optimizer"), "weights_not_updating")
    assert f.evidence["params"] == ["2.weight", "2.bias"]
    assert f.evidence["not_in_optimizer"] == ["2.weight", "2.bias"]


def test_frozen_backbone_is_an_info_note(zoo_analysis):
    notes = [f for f in zoo_analysis("healthy_frozen_backbone").findings if f.rule == "weights_not_updating"]
    assert [f.severity for f in notes] == ["info"]
    assert notes[0].evidence["frozen_params"] == ["0.weight", "0.bias"]


def test_overfitting_names_the_early_stopping_step(zoo_analysis):
    f = _finding(zoo_analysis("memorizes_small_set"), "overfitting")
    assert 0 < f.evidence["best_step"] <= 60
    assert f.evidence["final_val_loss"] > 1.1 * f.evidence["best_val_loss"]


def test_unnormalized_inputs_reports_the_offset(zoo_analysis):
    f = _finding(zoo_analysis("relu_offset_inputs"), "unnormalized_inputs")
    assert f.evidence["inputs"]["input0"]["mean"] == pytest.approx(500, rel=0.02)


def test_output_activation_names_the_last_module(zoo_analysis):
    f = _finding(zoo_analysis("relu_on_logits"), "output_activation")
    assert f.evidence["output_module"] == "5" and f.evidence["type"] == "ReLU"


def test_loss_plateau_blames_a_tiny_learning_rate(zoo_analysis):
    f = _finding(zoo_analysis("lr_far_too_low"), "loss_plateau")
    assert f.evidence["median_update_ratio"] < 1e-5
    assert f.fixes[0].text.startswith("Raise the learning rate")


def test_lr_too_high_reports_large_updates(zoo_analysis):
    f = _finding(zoo_analysis("sgd_lr_too_high"), "lr_too_high")
    assert f.evidence["median_update_ratio"] > 0.03


def test_dead_relu_reports_fraction(zoo_analysis):
    f = _finding(zoo_analysis("dead_relu_bias"), "dead_relu")
    assert max(f.evidence["median_dead_frac"].values()) > 0.9


def test_over_regularized_blames_l2_through_adam(zoo_analysis):
    f = _finding(zoo_analysis("adam_l2_collapse"), "over_regularized")
    start, end = f.evidence["norm_start_end"]["0.weight"]
    assert end < 0.01 * start and f.evidence["weight_decay"]["0.weight"] == pytest.approx(0.3)
    assert f.evidence["optimizer"] == "Adam" and f.fixes[0].text.startswith("With Adam, use AdamW")
    assert f.evidence["loss_end"] > 0.9 * f.evidence["loss_start"]
