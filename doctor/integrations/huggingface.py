"""Hugging Face Transformers: ``Trainer(..., callbacks=[DoctorCallback(log="runs/exp.log")])``.

The callback starts ``doctor.watch`` on the model and the torch optimizer inside the Trainer's (Accelerate wraps
it) when training begins. The training loss is taken every step from the model's own output (``output.loss``,
which Transformers models compute when given labels) through a forward hook, as a tensor, so nothing syncs the
GPU; a Trainer whose loss is computed elsewhere falls back to the averaged loss the Trainer logs. Evaluation
losses (``eval_loss``) are recorded as ``val_loss``. Needs ``pip install 'training-doctor[hf]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("doctor.integrations.huggingface needs transformers: pip install 'training-doctor[hf]'") from None

import doctor
from doctor.recorder.hooks import Hook


class DoctorCallback(TrainerCallback):
    """Record a ``transformers.Trainer`` run into a doctor run log; options are those of :func:`doctor.watch`."""

    def __init__(self, log: str | Path | None = None, **options: Any) -> None:
        self.log_path = log
        self.options = options
        self.run: Any = None
        self._loss_hook: Any = None
        self._losses_seen = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any):
        if model is None or optimizer is None:
            return
        self.run = doctor.watch(model, _torch_optimizer(optimizer), log=self.log_path, **self.options)
        self._loss_hook = model.register_forward_hook(Hook(self._on_model_output))

    def _on_model_output(self, module: Any, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or self.run is None:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            self._losses_seen = True
            self.run.log(loss=loss)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any):
        if self.run is None or not logs:
            return
        step = max(state.global_step - 1, 0)
        values = {}
        if "loss" in logs and not self._losses_seen:
            values["loss"] = logs["loss"]
        if "eval_loss" in logs:
            values["val_loss"] = logs["eval_loss"]
        values.update({k: v for k, v in logs.items() if k.startswith("eval_") and k != "eval_loss" and not _timing(k)})
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.run.log(step=step, **numbers)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        if self.run is not None:
            self.run.close()


def _timing(key: str) -> bool:
    """Trainer's throughput figures (eval_runtime, eval_samples_per_second) say nothing about learning."""
    return "runtime" in key or "per_second" in key


def _torch_optimizer(optimizer: Any) -> Any:
    """Accelerate's AcceleratedOptimizer wraps the real one (and never fires its own step hooks): use the inner one."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer
