"""Lightning and Hugging Face callbacks on real small training runs, diagnosed by doctor analyze."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from doctor.engine import analyze
from doctor.loader import load_run


def _teacher(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return x, (x @ torch.randn(16, 4, generator=g)).argmax(1)


def test_lightning_callback_records_a_run_that_doctor_diagnoses(tmp_path, rules):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from doctor.integrations.lightning import DoctorCallback

    class Classifier(pl.LightningModule):
        """Document 002's too-fast decay: the LR is multiplied by 0.98 every step."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

        def training_step(self, batch, _):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), 1e-3)
            decay = torch.optim.lr_scheduler.ExponentialLR(opt, 0.98)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    torch.manual_seed(0)
    train, val = _teacher(4096, 1), _teacher(512, 2)
    trainer = pl.Trainer(
        max_steps=400,
        val_check_interval=50,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path / "csv"),
        gradient_clip_val=5.0,  # Lightning clips through torch.nn.utils.clip_grad_norm_: doctor sees the call
        callbacks=[DoctorCallback(tmp_path / "run.log"), LearningRateMonitor("step")],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(), DataLoader(TensorDataset(*train), 64, shuffle=True), DataLoader(TensorDataset(*val), 256))

    view = load_run(tmp_path / "run.log")
    assert view.num_steps == 400 and view.loss.size == 400 and not view.truncated
    assert view.steps["val_loss"].notna().sum() >= 6
    assert not view.grad_norms.empty and not view.activations["std"].empty
    assert view.steps["lr"].iloc[-1] == pytest.approx(1e-3 * 0.98**399, rel=1e-3)
    assert view.steps["grad_norm_preclip"].notna().sum() == 400 and (view.steps["clip_max_norm"] == 5.0).all()
    assert [f.rule for f in analyze(view, rules).findings] == ["lr_decay_too_fast"]

    metrics = next((tmp_path / "csv").rglob("metrics.csv"))  # the same run, as Lightning's own CSV logger saw it
    external = analyze(load_run(metrics), rules)
    assert [f.rule for f in external.findings] == ["lr_decay_too_fast"]


class _Tokens(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 64, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 32).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def test_hugging_face_callback_records_a_run_that_doctor_diagnoses(tmp_path, rules, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from doctor.integrations.huggingface import DoctorCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(  # a tiny randomly initialized model: no download
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        initializer_range=0.18,  # variance scaling for width 32 (the default 0.02 suits width 768)
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=300,
        per_device_train_batch_size=16,
        learning_rate=1e-7,  # far too low: the loss cannot move
        lr_scheduler_type="constant",
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=100,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=transformers.BertForSequenceClassification(config),
        args=args,
        train_dataset=_Tokens(1024, 0),
        eval_dataset=_Tokens(256, 1),
        callbacks=[DoctorCallback(tmp_path / "run.log")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()

    view = load_run(tmp_path / "run.log")
    assert view.num_steps == 300 and view.loss.size == 300 and not view.truncated  # the model's own loss, every step
    assert view.steps["val_loss"].notna().sum() == 3
    assert "eval_runtime" not in view.steps
    assert "bert.encoder.layer.1.attention.self.query.weight" in view.grad_norms
    # The Trainer clips at max_grad_norm=1.0 (through Accelerate); the norm before that clip is recorded, so a
    # pre-clip norm of 1-2.5 is not mistaken for the norm pinned at the ceiling.
    assert view.steps["grad_norm_preclip"].notna().sum() == 300 and (view.steps["clip_max_norm"] == 1.0).all()
    assert view.steps["grad_norm_preclip"].median() > 1.0
    findings = analyze(view, rules).findings
    assert [f.rule for f in findings] == ["loss_plateau"]
    assert "learning rate is far too low" in findings[0].summary

    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))  # what a Trainer checkpoint keeps
    external = load_run(tmp_path / "trainer_state.json")
    assert external.steps["loss"].notna().sum() == 60 and external.steps["val_loss"].notna().sum() == 3
    assert [f.rule for f in analyze(external, rules).findings] == ["loss_plateau"]
    # The Trainer clips at max_grad_norm=1.0 through Accelerate and logs the norm it got back: the same pre-clip
    # norm doctor recorded for that step (the Trainer counts steps from 1, doctor from 0).
    preclip = view.steps["grad_norm_preclip"]
    assert preclip.notna().sum() == 300 and (view.steps["clip_max_norm"] == 1.0).all()
    logged = external.steps["grad_norm"].dropna()
    assert len(logged) == 60
    np.testing.assert_allclose(preclip.loc[logged.index - 1].to_numpy(), logged.to_numpy(), rtol=1e-4)


def test_the_core_imports_no_framework():
    code = (
        "import sys, doctor, doctor.recorder.run, doctor.cli, doctor.engine, doctor.report, doctor.importers; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate', 'tensorboard') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
