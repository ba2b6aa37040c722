"""PyTorch Lightning: ``Trainer(callbacks=[DoctorCallback(log="runs/exp.log")])`` records what ``doctor.watch`` does.

The callback starts ``doctor.watch`` on the LightningModule and its first optimizer when training starts (after
``configure_optimizers``), logs the training loss returned by ``training_step`` every batch and, after each
validation run, every validation metric Lightning collected (``val_loss`` under the name the rules read). Tensors
are handed over as they are, so nothing syncs the GPU. Needs ``pip install 'training-doctor[lightning]'``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError(
            "doctor.integrations.lightning needs PyTorch Lightning: pip install 'training-doctor[lightning]'"
        ) from None

import doctor
from doctor.importers import canonical_name


class DoctorCallback(Callback):
    """Record a Lightning run into a doctor run log; options are those of :func:`doctor.watch`."""

    def __init__(self, log: str | Path | None = None, **options: Any) -> None:
        super().__init__()
        self.log_path = log
        self.options = options
        self.run: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(trainer.optimizers)
        if not optimizers:
            return
        if len(optimizers) > 1:
            warnings.warn("doctor: several optimizers; recording the first", RuntimeWarning, stacklevel=2)
        self.run = doctor.watch(pl_module, _unwrap(optimizers[0]), log=self.log_path, **self.options)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.run is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.run.log(loss=loss)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None or trainer.sanity_checking:
            return
        values = {}
        for key, value in trainer.callback_metrics.items():
            name = canonical_name(str(key))
            if name == "val_loss" or str(key).lower().startswith(("val", "valid", "eval")):
                values[name if name == "val_loss" else str(key)] = value
        if values:
            self.run.log(**values)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.run is not None:
            self.run.record_crash(exception)
            self.run.close(reason="exception")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.close()


def _unwrap(optimizer: Any) -> Any:
    """Lightning may hand out a LightningOptimizer wrapper; the hooks belong on the torch optimizer inside."""
    return getattr(optimizer, "optimizer", optimizer) if type(optimizer).__name__ == "LightningOptimizer" else optimizer
