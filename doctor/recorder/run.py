"""`doctor.watch()`: hooks on a model and its optimizer that record a run log.

Why it is built this way:

* Steps are counted by the optimizer's own step hooks, so gradient accumulation
  and skipped AMP steps come out right, and gradients are read exactly when the
  optimizer consumes them.
* Every statistic is reduced on the device to a few scalars and kept there;
  the host copies a whole batch of steps at once (``flush``), asynchronously on
  CUDA, so a watched step never waits for the GPU.
* Every hook body runs under a guard: an error switches that statistic off,
  is reported once as a warning and as a ``recorder_error`` event, and never
  reaches the training loop.
"""

from __future__ import annotations

import atexit
import collections
import datetime as _dt
import functools
import math
import time
import traceback
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from torch import nn

from doctor import schema
from doctor.errors import NonFiniteError, UsageError
from doctor.recorder import clipping, shutdown, statistics
from doctor.recorder.config import RecorderConfig
from doctor.recorder.hooks import Hook
from doctor.recorder.summary import activation_kind, describe_model, environment, recorded_modules
from doctor.recorder.transfer import HostCopy
from doctor.recorder.writer import LogWriter, rounded

_NO_VALUE = -1.0  # sentinel on the device for "no data" (norms are never negative)


@dataclass
class _StepRow:
    """What one optimizer step contributes to the ``steps`` record (device tensors stay on device)."""

    lr: list[float] | None = None
    wd: list[float] | None = None
    seconds: float | None = None
    data_seconds: float | None = None
    # Norm of each watched parameter's gradient (_NO_VALUE where it had none), on the device. The global norm
    # and the thinned per-parameter rows are derived from these at the flush, not in the step.
    grad_norms: torch.Tensor | None = None
    amp_skipped: int | None = None  # iterations GradScaler skipped (inf/nan gradients) before this step ran
    # clip_grad_norm_ calls of this step: the clipped parameter set -> (pre-clip total norm on the device, max_norm).
    # A set clipped again in the same step (GradScaler skipped the step in between) keeps its last call.
    clips: dict[frozenset[int], tuple[torch.Tensor, float | None]] = field(default_factory=dict)
    scalars: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))


def _uninterrupted(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a writing method to its end before a SIGTERM handler may flush (see ``shutdown``)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with shutdown.writing:
            return method(*args, **kwargs)

    return wrapper


class Run:
    """A watched training run. Create it with :func:`doctor.watch`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        log: str | Path | None = None,
        *,
        name: str | None = None,
        scaler: Any = None,
        on_nonfinite: str = "warn",
        live: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"doctor.watch expects an nn.Module as model, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(f"doctor.watch expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if on_nonfinite not in ("warn", "raise"):
            raise UsageError(f"doctor.watch on_nonfinite expects 'warn' or 'raise', got {on_nonfinite!r}")
        if scaler is not None and not callable(getattr(scaler, "update", None)):
            raise UsageError(f"doctor.watch scaler expects a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.on_nonfinite = on_nonfinite
        self.live = bool(live)  # the one-line warning for the first non-finite value as it is copied back
        self.config = RecorderConfig.from_options(options)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = Path(log) if log is not None else Path("runs") / f"{name or 'run'}-{stamp}.log"
        self.name = name or self.path.stem
        self._writer = LogWriter(self.path)
        self.model = model
        self.optimizer = optimizer
        self._schedules = self.config.schedules()

        self._names = [n for n, _ in model.named_parameters()]
        self._params = [p for _, p in model.named_parameters()]
        # FSDP2 shards parameters as DTensors: each rank records the norms of its own shard (no collective in a
        # hook, which would deadlock a rank that does not record); analyze combines the ranks' shards.
        self._sharded = any(_is_dtensor(p) for p in self._params)
        self._param_ids = {id(p) for p in self._params}
        self._optimizer_param_count = -1
        self._skips_noted: set[tuple[str, str]] = set()
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._modules = recorded_modules(model)
        self._module_kinds = [activation_kind(m) for _, m in self._modules]
        model_summary, optimizer_summary = describe_model(model, optimizer)
        self._recurrent = [(i, info["gates"]) for i, info in enumerate(model_summary["params"]) if info["recurrent"]]
        sharded_recurrent = bool(self._sharded and self._recurrent)
        if sharded_recurrent:  # the largest singular value of a shard is not the matrix's: not recorded
            self._recurrent = []
        self._spectral = statistics.SpectralNorms()
        self._spectra_names: list[str] = []
        for i, gates in self._recurrent:
            self._spectra_names.append(self._names[i])
            if gates == 4:
                self._spectra_names += [f"{self._names[i]}[{g}]" for g in ("input", "forget", "cell", "output")]
            elif gates == 3:
                self._spectra_names += [f"{self._names[i]}[{g}]" for g in ("reset", "update", "new")]

        self.step = 0
        self.closed = False
        self._disabled: set[str] = set()
        self._rows: dict[int, _StepRow] = defaultdict(_StepRow)
        self._grad_window: tuple[int, torch.Tensor] | None = None  # an open window of grad maxima: (last step, maxima)
        self._grad_rows: list[tuple[int, torch.Tensor]] = []
        self._norms_on_one_device = True  # see _stack_norms
        # "No value" for one parameter in a vector of norms: made on the device once (a fill, not a host copy).
        self._no_value = torch.full((), _NO_VALUE, device=self._device)
        self._weights_before: list[torch.Tensor] | None = None
        self._weight_norms: list[torch.Tensor] = []  # of every parameter, taken before the step (0-d, on the device)
        self._copied: list[int] = []
        self._copy_cursor = 0
        self._weight_rows: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self._act_rows: list[tuple[int, dict[int, torch.Tensor]]] = []
        self._input_rows: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._spectra_rows: list[tuple[int, torch.Tensor]] = []
        self._pending: list[HostCopy] = []
        self._call_order: list[int] = []
        self._call_order_set: set[int] = set()
        self._nonfinite_seen: set[str] = set()
        self._alarm: tuple[int, str] | None = None  # the first non-finite value seen in a flushed batch
        self._alarm_sounded = False
        self._recent_grads: collections.deque[float] = collections.deque(maxlen=20)  # host copies, for the live check
        self._spike_warned = False
        self._last_step_time = time.perf_counter()
        self._last_flush_time = time.monotonic()
        self._last_flush_step = 0
        self._handles: list[Any] = []
        # Per-module output hooks exist only on steps that sample activations (and step 0, for the call order):
        # a module with any forward hook takes PyTorch's slow call path, about 1.3 us per module per step.
        self._module_handles: list[Any] = []
        self._scaler: Any = None  # the GradScaler whose update() this run wraps
        self._clip_order_checked = False  # the first clip under a scaler: was unscale_() called before it?

        self._writer.write(
            {
                "kind": schema.HEADER,
                "format": schema.FORMAT_NAME,
                "schema": schema.SCHEMA_VERSION,
                "name": self.name,
                "doctor": _doctor_version(),
                "env": environment(self._device),
                "model": model_summary,
                "optimizer": optimizer_summary,
                "recorded_modules": [n for n, _ in self._modules],
                "spectra": self._spectra_names,
                "config": self.config.to_json(),
                "sharded": self._sharded,
            }
        )
        if sharded_recurrent:
            self._note_skipped(
                "spectra", "recurrent weights", "they are sharded (FSDP); a shard's singular values are not the matrix's"
            )
        self._install_hooks()
        clipping.attach(self)
        if scaler is not None:
            self._watch_scaler(scaler)
        self._begin_step()
        ref = weakref.ref(self)
        self._atexit = lambda: (r := ref()) is not None and r.close(reason="interpreter exit")
        atexit.register(self._atexit)
        shutdown.register(self)

    # ------------------------------------------------------------------ public API
    def log(self, step: int | None = None, **scalars: Any) -> None:
        """Attach scalars (tensors or numbers) to a step without forcing a device sync.

        Without ``step``, values logged after ``optimizer.step()`` belong to the step
        just taken; values logged after a training forward pass but before the
        step belong to the step in progress. Several values for one key in one
        step (gradient accumulation) are averaged.
        """
        if self.closed or "scalars" in self._disabled:
            return
        try:
            if step is None:
                step = self.step if (self._forward_seen or self.step == 0) else self.step - 1
            row = self._rows[int(step)]
            for key, value in scalars.items():
                row.scalars[str(key)].append(self._scalar(value))
        except Exception as exc:  # noqa: BLE001 - never raise into the user's loop
            self._disable("scalars", exc)

    @_uninterrupted
    def close(self, reason: str = "clean") -> None:
        """Flush everything, write the ``close`` event, remove every hook. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self._handles_off()
        shutdown.unregister(self)
        try:
            atexit.unregister(self._atexit)
        except Exception:  # noqa: BLE001
            pass
        if "log" not in self._disabled:
            try:
                self._flush(final=True)
                self._drain(wait=True)
                self._event("close", reason=reason, steps=self.step)
            except Exception as exc:  # noqa: BLE001
                self._disable("log", exc)
        self._writer.close()
        if self._alarm is not None and not self._alarm_sounded and self.live:  # found in the last batch: warn only
            self._alarm_sounded = True
            warnings.warn(f"doctor: {self._alarm[1]}", RuntimeWarning, stacklevel=2)

    def _let_go_after_fork(self) -> None:
        """In a forked child: stop recording and drop what the parent will write itself."""
        self.closed = True
        self._handles_off()
        self._rows.clear()
        self._pending.clear()
        self._grad_rows.clear()
        self._weight_rows.clear()
        self._act_rows.clear()
        self._input_rows.clear()
        self._spectra_rows.clear()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self.record_crash(exc)
        self.close(reason="exception" if exc_type is not None else "clean")
        return False

    def record_crash(self, exc: BaseException) -> None:
        """Write a ``crash`` event (type, message, where, step); integrations call it from their exception hooks."""
        if self.closed or "log" in self._disabled:
            return
        tb = exc.__traceback__
        self._safe(
            "log",
            lambda: self._event(
                "crash",
                step=self.step,
                error=type(exc).__name__,
                message=str(exc)[:2000],
                where="".join(traceback.format_tb(tb, limit=-3))[-2000:] if tb else "",
            ),
        )

    def record_clip(self, ids: set[int], total: Any, max_norm: Any, norm_type: Any) -> None:
        """Keep the pre-clip norm of a ``clip_grad_norm_`` call on this run's parameters (see ``clipping``)."""
        if self.closed or "clipping" in self._disabled or ids.isdisjoint(self._param_ids):
            return
        self._safe("clipping", lambda: self._keep_clip(ids, total, max_norm, norm_type))

    def _keep_clip(self, ids: set[int], total: Any, max_norm: Any, norm_type: Any) -> None:
        if not isinstance(total, torch.Tensor):
            return
        if self._sharded or _is_dtensor(total):
            self._note_skipped("clipping", "pre-clip gradient norm", "the parameters are sharded (FSDP)")
            return
        if _host_number(norm_type) != 2.0:
            self._note_skipped(
                "clipping", f"clip_grad_norm_(norm_type={norm_type})", "only L2 norms compare with the recorded gradient norm"
            )
            return
        total = total.detach()
        self._rows[self.step].clips[frozenset(ids)] = (total.reshape(()) if total.dim() else total, _host_number(max_norm))
        if self._scaler is not None and not self._clip_order_checked:
            self._clip_order_checked = True
            if _still_scaled(self._scaler, self.optimizer):
                self._safe("log", lambda: self._event("clip_before_unscale", step=self.step))

    def record_value_clip(self, ids: set[int], clip_value: Any) -> None:
        """Say once that gradients were clipped by value: every norm recorded after it is of clipped gradients."""
        if self.closed or ids.isdisjoint(self._param_ids):
            return
        self._note_skipped(
            "clipping",
            "gradient norms before clip_grad_value_",
            f"the gradients were clipped by value (clip_value={clip_value}) from step {self.step}; the recorded norms "
            "are after that clip, and how much it cut is not measured",
        )

    @property
    def hook_count(self) -> int:
        """How many hooks this run holds now (zero after ``close()``)."""
        return len(self._handles) + len(self._module_handles)

    # ------------------------------------------------------------------ guard
    def _disable(self, stat: str, exc: BaseException) -> None:
        """Switch one statistic off after an error: warn once, record it, never raise."""
        if stat in self._disabled:
            return
        self._disabled.add(stat)
        message = f"{type(exc).__name__}: {exc}"[:500]
        if stat == "log":
            warnings.warn(
                f"doctor: stopped writing the run log {self.path} ({message}); training goes on, "
                "and the log keeps everything written before this",
                RuntimeWarning,
                stacklevel=3,
            )
            self._handles_off()
            return
        warnings.warn(f"doctor: stopped recording {stat} after an error ({message})", RuntimeWarning, stacklevel=3)
        try:
            self._event("recorder_error", stat=stat, step=self.step, error=message)
        except Exception as write_exc:  # noqa: BLE001
            self._disable("log", write_exc)

    def _handles_off(self) -> None:
        clipping.detach(self)
        self._module_hooks_off()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._scaler is not None:
            self._scaler.__dict__.pop("update", None)  # the class's own update() again
            self._scaler = None

    def _safe(self, stat: str, fn: Callable[[], Any]) -> Any:
        if stat in self._disabled:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the guard is the point
            self._disable(stat, exc)
            return None

    # ------------------------------------------------------------------ hooks
    def _install_hooks(self) -> None:
        self._handles.append(self.optimizer.register_step_pre_hook(Hook(self._before_optimizer_step)))
        self._handles.append(self.optimizer.register_step_post_hook(Hook(self._after_optimizer_step)))
        self._handles.append(self.model.register_forward_pre_hook(Hook(self._before_forward), with_kwargs=True))

    def _module_hooks_on(self) -> None:
        if not self._module_handles:
            self._module_handles = [
                module.register_forward_hook(Hook(self._module_hook(index))) for index, (_, module) in enumerate(self._modules)
            ]

    def _module_hooks_off(self) -> None:
        for handle in self._module_handles:
            handle.remove()
        self._module_handles = []

    def _watch_scaler(self, scaler: Any) -> None:
        """Wrap ``scaler.update`` (on this instance only) to count the iterations GradScaler skipped.

        GradScaler skips ``optimizer.step()`` when it finds inf/nan gradients, so the optimizer hooks never see
        those iterations. ``update()`` runs once per iteration either way: an update with no optimizer step since
        the previous one is a skipped iteration. Only host-side counters are compared; the scale itself is copied
        on the device and read at the next flush.
        """
        original = scaler.update
        self._steps_at_update = self.step

        def update(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not self.closed:
                self._safe("amp", lambda: self._after_scaler_update(scaler))
            return result

        scaler.update = update
        self._scaler = scaler

    def _after_scaler_update(self, scaler: Any) -> None:
        """Count a skipped iteration on the step still to come, or mark the step just taken as not skipped."""
        if self.step == self._steps_at_update:  # no optimizer step since the last update: this one was skipped
            row = self._rows[self.step]
            row.amp_skipped = (row.amp_skipped or 0) + 1
        else:
            row = self._rows[self.step - 1]
            row.amp_skipped = row.amp_skipped or 0
        self._steps_at_update = self.step
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):  # updated in place by the scaler: keep a copy, on the device
            row.scalars["amp_scale"] = [scale.detach().reshape(()).float().clone()]

    def _begin_step(self) -> None:
        self._forward_seen = False
        self._capture_acts = "activations" not in self._disabled and self._schedules["activations"].due(self.step)
        self._capture_inputs = "inputs" not in self._disabled and self._schedules["inputs"].due(self.step)
        self._acts: dict[int, torch.Tensor] = {}
        self._inputs: dict[str, torch.Tensor] | None = None
        if (self._capture_acts or self.step == 0) and not self.closed and "log" not in self._disabled:
            self._module_hooks_on()
        elif self._module_handles:
            self._module_hooks_off()

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation passes are not training steps
        if not self._forward_seen:  # time since the last step ended: waiting for data (and host-side work)
            self._rows[self.step].data_seconds = time.perf_counter() - self._last_step_time
        self._forward_seen = True
        if self._capture_inputs and self._inputs is None:
            self._safe("inputs", lambda: self._record_inputs(args, kwargs))

    def _record_inputs(self, args: tuple, kwargs: dict) -> None:
        found: dict[str, torch.Tensor] = {}
        for key, tensor in _floating_tensors(args, kwargs, self.config.max_inputs):
            found[key] = statistics.input_stats(tensor)
        self._inputs = found

    def _module_hook(self, index: int) -> Callable[..., None]:
        kind = self._module_kinds[index]
        name = self._modules[index][0]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.step == 0 and torch.is_grad_enabled() and index not in self._call_order_set:
                self._call_order_set.add(index)
                self._call_order.append(index)
            if not self._capture_acts or not torch.is_grad_enabled():
                return
            try:
                if index in self._acts:
                    self._note_skipped("activations", name, "called more than once per step; statistics describe the first call")
                    return
                tensor = _first_floating(output)
                if tensor is None:
                    self._note_skipped("activations", name, f"its output holds no floating-point tensor ({_describe(output)})")
                    return
                self._acts[index] = statistics.activation_stats(tensor, kind)
            except Exception as exc:  # noqa: BLE001
                self._capture_acts = False
                self._disable("activations", exc)

        return hook

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        row = self._rows[self.step]
        self._safe("learning_rate", lambda: self._record_lr(row))
        self._safe("gradients", lambda: self._record_grads(row))
        if self._schedules["weights"].due(self.step):
            self._safe("weights", self._copy_weights)
        if self._recurrent and self._schedules["spectra"].due(self.step):
            self._safe("spectra", self._record_spectra)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._weights_before is not None:
            self._safe("weights", self._record_weights)
            self._weights_before = None
        now = time.perf_counter()
        self._rows[self.step].seconds = now - self._last_step_time
        self._last_step_time = now
        if self._acts:
            self._act_rows.append((self.step, self._acts))
        if self._inputs:
            self._input_rows.append((self.step, self._inputs))
        if self.step == 0 and self._call_order:
            names = [self._modules[i][0] for i in self._call_order]
            self._safe("log", lambda: self._writer.write({"kind": schema.TRACE, "call_order": names}))
        self.step += 1
        self._begin_step()
        if "log" in self._disabled:
            return
        if self._pending:
            self._safe("log", self._drain)
        if (
            self.step - self._last_flush_step >= self.config.flush_every
            or time.monotonic() - self._last_flush_time >= self.config.flush_seconds
        ):
            self._safe("log", self._flush)
            self._safe("log", self._drain)  # on CPU the copy is ready at once; on CUDA it lands a few steps later
        if self._alarm is not None and not self._alarm_sounded:
            self._sound_alarm()  # the one place doctor may raise into the loop: on_nonfinite="raise" asked for it

    # ------------------------------------------------------------------ statistics
    def _record_lr(self, row: _StepRow) -> None:
        groups = self.optimizer.param_groups
        row.lr = [_host_number(g.get("lr")) for g in groups]
        row.wd = [_host_number(g.get("weight_decay", 0.0)) for g in groups]
        count = sum(len(g["params"]) for g in groups)
        if count != self._optimizer_param_count:  # param groups added (or replaced) since the last step
            self._optimizer_param_count = count
            foreign = sum(1 for g in groups for p in g["params"] if id(p) not in self._param_ids)
            if foreign:
                self._note_skipped(
                    "gradients",
                    f"{foreign} of {count} optimizer parameters",
                    "they are in the optimizer but not in the watched model; watch the model that owns them",
                )

    def _note_skipped(self, stat: str, what: str, reason: str) -> None:
        """Say once in the log what could not be recorded, so the report can tell which evidence is missing."""
        if (stat, what) in self._skips_noted:
            return
        self._skips_noted.add((stat, what))
        self._safe("log", lambda: self._event("skipped", stat=stat, what=what, reason=reason, step=self.step))

    def _record_grads(self, row: _StepRow) -> None:
        """Per-parameter gradient norms: two kernels (a norm per tensor, one stack) in the common case, no sync."""
        grads = [p.grad for p in self._params]
        if self._sharded or any(g is None or g.is_sparse for g in grads):
            self._record_some_grads(row, grads)
            return
        row.grad_norms = self._stack_norms(torch._foreach_norm(grads))

    def _record_some_grads(self, row: _StepRow, grads: list[torch.Tensor | None]) -> None:
        """The general case: sharded or sparse gradients, or parameters without a gradient this step."""
        present = []
        for g in grads:
            if g is not None:
                g = _local(g) if self._sharded else g
                present.append(g.coalesce()._values() if g.is_sparse else g)
        if not present:
            return
        norms = iter(torch._foreach_norm(present))
        row.grad_norms = self._stack_norms([self._no_value if g is None else next(norms) for g in grads])

    def _settle_grad_norms(self, steps: list[int], rows: list[_StepRow], final: bool) -> torch.Tensor | None:
        """The flushed steps' global gradient norms, and their per-parameter rows thinned by the schedule.

        A step on the schedule gets a row: the max of each parameter's norm over the steps since the last row
        (spikes survive thinning). A window still open at the end of the batch is carried to the next flush.
        Returns the global norm of each row that has gradients, in order (None when none has).
        """
        kept = [(step, row.grad_norms) for step, row in zip(steps, rows) if row.grad_norms is not None]
        norms = torch.stack([n for _, n in kept]) if kept else None
        schedule = self._schedules["grads"]
        start = 0
        for k, (step, _) in enumerate(kept):
            if schedule.due(step):
                window = norms[k] if k == start else norms[start : k + 1].amax(dim=0)
                self._grad_rows.append((step, self._with_open_window(window)))
                start = k + 1
        if start < len(kept):
            self._grad_window = (kept[-1][0], self._with_open_window(norms[start:].amax(dim=0)))
        if final and self._grad_window is not None:  # the run ends: the open window becomes the last row
            self._grad_rows.append(self._grad_window)
            self._grad_window = None
        if norms is None:
            return None
        return torch.linalg.vector_norm(norms.clamp_min(0.0), dim=1)  # the _NO_VALUE placeholders count as 0

    def _with_open_window(self, window: torch.Tensor) -> torch.Tensor:
        """``window`` merged with the window carried over from the previous flush (which is then closed)."""
        if self._grad_window is None:
            return window
        carried, self._grad_window = self._grad_window[1], None
        return torch.maximum(carried, window)

    def _stack_norms(self, norms: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One float32 vector on the recording device.

        The common case (every norm on the recording device) is a single stack; reading each norm's device
        and dtype in Python would cost more than the kernel. Norms spread over devices (a model split across
        GPUs) make the stack fail once; from then on each norm is moved first.
        """
        if self._norms_on_one_device:
            try:
                stacked = torch.stack(norms)
            except RuntimeError:
                self._norms_on_one_device = False
            else:
                if stacked.device == self._device:
                    return stacked if stacked.dtype == torch.float32 else stacked.float()
                self._norms_on_one_device = False
        return torch.stack([n.to(self._device, torch.float32, non_blocking=True) for n in norms])

    def _copy_weights(self) -> None:
        """Weight norms of every parameter; a copy of the next slice of parameters for their update ratio.

        The copy is what costs memory, so it is bounded: each sampled step copies parameters in turn until
        ``update_copy_mb`` is reached, and the next sample continues where this one stopped. A model under
        the budget gets every ratio on every sample; a 7B model gets each ratio every few samples instead
        of an out-of-memory error.
        """
        if not self._params:
            return
        self._weight_norms = torch._foreach_norm([self._data(p) for p in self._params])
        budget = self.config.update_copy_mb * 2**20
        chosen, used, n = [], 0, len(self._params)
        for k in range(n):
            i = (self._copy_cursor + k) % n
            size = self._data(self._params[i]).numel() * self._params[i].element_size()
            if chosen and used + size > budget:
                break
            chosen.append(i)
            used += size
        self._copy_cursor = (self._copy_cursor + len(chosen)) % n
        self._copied = chosen
        self._weights_before = torch._foreach_mul([self._data(self._params[i]) for i in chosen], 1.0)

    def _record_weights(self) -> None:
        """||w_after - w_before|| / ||w_before|| for the copied slice (null for the rest), on the device."""
        after = [self._data(self._params[i]) for i in self._copied]
        delta = torch._foreach_norm(torch._foreach_sub(after, self._weights_before))
        weight = self._stack_norms(self._weight_norms)
        if len(self._copied) == len(self._params):
            ratio = self._stack_norms(delta) / weight.clamp_min(1e-12)
        else:  # placeholders, not an index tensor: building one on the device would copy from the host (a sync)
            denominators = torch._foreach_clamp_min([self._weight_norms[i] for i in self._copied], 1e-12)
            ratios = dict(zip(self._copied, torch._foreach_div(delta, denominators)))
            ratio = self._stack_norms([ratios.get(i, self._no_value) for i in range(len(self._params))])
        self._weight_rows.append((self.step, weight, ratio))

    def _data(self, p: torch.Tensor) -> torch.Tensor:
        return _local(p.detach()) if self._sharded else p.detach()

    def _record_spectra(self) -> None:
        values = self._spectral([(self._params[i], gates) for i, gates in self._recurrent])
        self._spectra_rows.append((self.step, values.to(self._device)))

    def _scalar(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.dim() != 0:
                value = value.float().mean() if value.numel() != 1 else value.reshape(())
            value = value.float()
            return value.to(self._device, non_blocking=True) if value.device != self._device else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"logged values must be numbers or tensors, got {type(value).__name__}")
        return float(value)

    # ------------------------------------------------------------------ flushing
    @_uninterrupted
    def _flush(self, final: bool = False) -> None:
        """Hand a batch of settled steps to the host: one asynchronous copy, no per-step sync."""
        # The last step stays open: its loss is typically logged right after optimizer.step().
        settled_before = self.step + 1 if final else self.step - 1
        steps = sorted(s for s in self._rows if s < settled_before)
        rows = [self._rows.pop(s) for s in steps]
        tensors: dict[str, torch.Tensor] = {}
        host: dict[str, Any] = {"steps": steps, "rows": rows, "scalar_slots": {}}

        grad_total = self._settle_grad_norms(steps, rows, final)
        if grad_total is not None:
            tensors["grad_total"] = grad_total
            host["grad_total_rows"] = [i for i, r in enumerate(rows) if r.grad_norms is not None]
        clipped = [i for i, r in enumerate(rows) if r.clips]
        if clipped:
            tensors["grad_preclip"] = torch.stack([self._preclip_total(rows[i]) for i in clipped])
            host["preclip_rows"] = clipped
        flat: list[torch.Tensor] = []
        for i, row in enumerate(rows):
            for key, values in row.scalars.items():
                if any(isinstance(v, torch.Tensor) for v in values):
                    tvals = [v if isinstance(v, torch.Tensor) else torch.tensor(v, device=self._device) for v in values]
                    host["scalar_slots"][(i, key)] = len(flat)
                    flat.append(tvals[0] if len(tvals) == 1 else torch.stack(tvals).mean())
        if flat:
            tensors["scalars"] = torch.stack(flat)
        for name, source in (
            ("grads", self._grad_rows),
            ("spectra", self._spectra_rows),
        ):
            if source:
                host[f"{name}_steps"] = [s for s, _ in source]
                tensors[name] = torch.stack([t for _, t in source])
                source.clear()
        if self._weight_rows:
            host["weights_steps"] = [s for s, _, _ in self._weight_rows]
            tensors["weights"] = torch.stack([w for _, w, _ in self._weight_rows])
            tensors["update_ratio"] = torch.stack([r for _, _, r in self._weight_rows])
            self._weight_rows.clear()
        if self._act_rows:
            tensors["activations"], host["activation_steps"], host["activation_modules"], host["activation_present"] = (
                self._stack_table(self._act_rows, len(schema.ACTIVATION_STATS), key_name=lambda i: self._modules[i][0])
            )
            self._act_rows.clear()
        if self._input_rows:
            tensors["inputs"], host["input_steps"], host["input_names"], host["input_present"] = self._stack_table(
                self._input_rows, len(schema.INPUT_STATS), key_name=str
            )
            self._input_rows.clear()
        self._pending.append(HostCopy(tensors, host))
        self._last_flush_time = time.monotonic()
        self._last_flush_step = self.step

    def _preclip_total(self, row: _StepRow) -> torch.Tensor:
        """The step's pre-clip global norm: one call's total, or the root sum of squares of disjoint calls."""
        totals = [t.to(self._device, torch.float32, non_blocking=True) for t, _ in row.clips.values()]
        return totals[0] if len(totals) == 1 else torch.linalg.vector_norm(torch.stack(totals))

    def _stack_table(
        self, rows: list[tuple[int, dict[Any, torch.Tensor]]], width: int, key_name: Callable[[Any], str]
    ) -> tuple[torch.Tensor, list[int], list[str], list[list[bool]]]:
        keys: list[Any] = []
        for _, entries in rows:
            keys += [k for k in entries if k not in keys]
        missing = torch.full((width,), float("nan"), device=self._device)
        table = torch.stack([torch.stack([entries.get(k, missing).to(self._device) for k in keys]) for _, entries in rows])
        present = [[k in entries for k in keys] for _, entries in rows]
        return table, [s for s, _ in rows], [key_name(k) for k in keys], present

    @_uninterrupted
    def _drain(self, wait: bool = False) -> None:
        """Write every batch whose copy to the host has finished (all of them when ``wait``)."""
        while self._pending and (wait or self._pending[0].ready()):
            copy = self._pending.pop(0)
            self._write_batch(copy.host, copy.result())

    def _write_batch(self, host: dict[str, Any], values: dict[str, list]) -> None:
        steps = host["steps"]
        if steps:
            rows = host["rows"]
            grad_total = _by_row(len(rows), host.get("grad_total_rows", []), values.get("grad_total"))
            keys = sorted({k for row in rows for k in row.scalars})
            scalars: dict[str, list[float | None]] = {}
            for key in keys:
                column: list[float | None] = []
                for i, row in enumerate(rows):
                    slot = host["scalar_slots"].get((i, key))
                    if slot is not None:
                        column.append(values["scalars"][slot])
                    elif row.scalars.get(key):
                        vals = row.scalars[key]
                        column.append(sum(vals) / len(vals))
                    else:
                        column.append(None)
                scalars[key] = rounded(column, 7)
            if any(r.amp_skipped is not None for r in rows):
                scalars["amp_skipped"] = [None if r.amp_skipped is None else float(r.amp_skipped) for r in rows]
            record = {
                "kind": schema.STEPS,
                "step": steps,
                "lr": [r.lr for r in rows],
                "weight_decay": [r.wd for r in rows],
                "seconds": [None if r.seconds is None else round(r.seconds, 6) for r in rows],
                "data_seconds": [None if r.data_seconds is None else round(r.data_seconds, 6) for r in rows],
                "grad_norm": rounded(grad_total),
                "scalars": scalars,
            }
            preclip = _by_row(len(rows), host.get("preclip_rows", []), values.get("grad_preclip"))
            if host.get("preclip_rows"):
                record["grad_norm_preclip"] = rounded(preclip)
                record["clip_max_norm"] = [_smallest_max_norm(r) for r in rows]
            self._writer.write(record)
            self._check_nonfinite(steps, scalars.get("loss"), grad_total)
            self._check_spike(steps, grad_total, preclip)
        if "grads" in values:
            self._writer.write(
                {
                    "kind": schema.GRADS,
                    "step": host["grads_steps"],
                    "norm": rounded(values["grads"], no_value=_NO_VALUE),
                }
            )
            self._check_nonfinite_params(host["grads_steps"], values["grads"])
        if "weights" in values:
            self._writer.write(
                {
                    "kind": schema.WEIGHTS,
                    "step": host["weights_steps"],
                    "norm": rounded(values["weights"]),
                    "update_ratio": rounded(values["update_ratio"], no_value=_NO_VALUE),
                }
            )
        if "spectra" in values:
            self._writer.write(
                {
                    "kind": schema.SPECTRA,
                    "step": host["spectra_steps"],
                    "matrices": self._spectra_names,
                    "sigma_max": rounded(values["spectra"]),
                }
            )
        if "activations" in values:
            self._writer.write(
                {
                    "kind": schema.ACTIVATIONS,
                    "step": host["activation_steps"],
                    "modules": host["activation_modules"],
                    "stats": list(schema.ACTIVATION_STATS),
                    "values": _table_values(values["activations"], host["activation_present"]),
                }
            )
        if "inputs" in values:
            self._writer.write(
                {
                    "kind": schema.INPUTS,
                    "step": host["input_steps"],
                    "names": host["input_names"],
                    "stats": list(schema.INPUT_STATS),
                    "values": _table_values(values["inputs"], host["input_present"]),
                }
            )

    def _check_nonfinite(self, steps: list[int], loss: list[float | None] | None, grad_total: list) -> None:
        """Record the first non-finite loss and global gradient norm (an event each); warn once about the first."""
        for what, series in (("loss", loss), ("gradient", grad_total)):
            if what in self._nonfinite_seen or series is None:
                continue
            for step, value in zip(steps, series):
                if value is not None and not math.isfinite(value):
                    self._nonfinite_seen.add(what)
                    self._event("nonfinite", what=what, step=step, value=str(value))
                    self._alarm = self._alarm or (step, f"non-finite {what} ({value}) at step {step}")
                    break

    def _check_spike(self, steps: list[int], grad_total: list[float | None], preclip: list[float | None]) -> None:
        """Live: warn once when the global gradient norm jumps 10x above its median over the 20 steps before it.

        The values are already on the host (this runs on a copied batch), so the check costs no sync; the
        thresholds are those of the exploding_gradients rule, which says more after the run. Where the step was
        clipped, the norm before clipping is the one judged (the clipped one cannot spike).
        """
        if self._spike_warned or not self.live:
            return
        for step, after, before in zip(steps, grad_total, preclip):
            value = after if before is None else before
            if value is None or not math.isfinite(value):
                continue
            if len(self._recent_grads) >= 5:
                level = median(self._recent_grads)
                if level > 0 and value > 10 * level:
                    self._spike_warned = True
                    which = "gradient norm" if before is None else "gradient norm before clipping"
                    warnings.warn(
                        f"doctor: the {which} spiked to {value:.3g} at step {step}, {value / level:.0f}x its median "
                        "over the steps before it (exploding gradients?); doctor analyze will say more",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return
            self._recent_grads.append(value)

    def _check_nonfinite_params(self, steps: list[int], rows: list[list[float]]) -> None:
        if "parameter" in self._nonfinite_seen:
            return
        finite = np.isfinite(np.array(rows, dtype=np.float64))
        if finite.all():
            return
        for step, row_finite in zip(steps, finite):
            bad = [self._names[i] for i in np.flatnonzero(~row_finite)]
            if bad:
                self._nonfinite_seen.add("parameter")
                self._event("nonfinite", what="parameter_gradient", step=step, params=bad[:20], count=len(bad))
                where = f"first bad gradient in {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                self._alarm = (step, f"{self._alarm[1]}; {where}") if self._alarm else (step, f"{where} at step {step}")
                return

    def _sound_alarm(self) -> None:
        """The one live line for the first non-finite value; with ``on_nonfinite="raise"``, flush and stop the run."""
        if self._alarm is None or self._alarm_sounded:
            return
        self._alarm_sounded = True
        message = f"doctor: {self._alarm[1]}"
        if self.on_nonfinite == "raise":
            self.close(reason="nonfinite")
            raise NonFiniteError(f"{message}; the log {self.path} is flushed and closed")
        if self.live:
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    @_uninterrupted
    def _event(self, type_: str, **fields: Any) -> None:
        self._writer.write({"kind": schema.EVENT, "type": type_, "time": round(time.time(), 3), **fields})


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor passes through)."""
    return t.to_local() if _is_dtensor(t) else t


def _still_scaled(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's gradients still carry the loss scale (GradScaler enabled, unscale_() not yet called).

    GradScaler keeps a per-optimizer stage that unscale_() sets to UNSCALED; an optimizer it has not seen this
    iteration has no entry (reading with .get keeps its defaultdict from growing one).
    """
    if not scaler.is_enabled():
        return False
    try:
        from torch.amp.grad_scaler import OptState
    except ImportError:  # torch < 2.3
        from torch.cuda.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states.get(id(optimizer))
    return state is None or state.get("stage") is OptState.READY


def _by_row(count: int, rows_of_slots: list[int], slot_values: list[float] | None) -> list[float | None]:
    """A column of ``count`` rows from values copied for some of them (slot k belongs to row rows_of_slots[k])."""
    column: list[float | None] = [None] * count
    for slot, row_index in enumerate(rows_of_slots):
        column[row_index] = slot_values[slot]
    return column


def _smallest_max_norm(row: _StepRow) -> float | None:
    """The tightest ``max_norm`` the step was clipped to (the one that bites first)."""
    limits = [m for _, m in row.clips.values() if m is not None]
    return min(limits) if limits else None


def _table_values(rows: list[list[list[float]]], present: list[list[bool]]) -> list[list[list[float | None] | None]]:
    """Rows of per-module statistics; a module not seen in a sampled step is null."""
    table = rounded(rows, 5)
    return [[cell if seen else None for cell, seen in zip(row, mask)] for row, mask in zip(table, present)]


def _host_number(value: Any) -> float | None:
    """Learning rates may be tensors (some schedulers); read them without a device sync where possible."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value) if value.device.type == "cpu" else None
    return float(value)


def _first_floating(output: Any) -> torch.Tensor | None:
    """The tensor to describe: the output itself, a PackedSequence's data, or the first floating tensor in a tuple/dict."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and output.numel() > 0 else None
    if isinstance(output, nn.utils.rnn.PackedSequence):
        return _first_floating(output.data)
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output[:8]:
            found = _first_floating(item)
            if found is not None:
                return found
    return None


def _describe(output: Any) -> str:
    """A few words on an output the recorder cannot describe, for the ``skipped`` event."""
    if isinstance(output, torch.Tensor):
        return "an empty tensor" if output.numel() == 0 else f"a {str(output.dtype).removeprefix('torch.')} tensor"
    return "None" if output is None else f"a {type(output).__name__}"


def _floating_tensors(args: tuple, kwargs: dict, limit: int) -> list[tuple[str, torch.Tensor]]:
    found: list[tuple[str, torch.Tensor]] = []

    def visit(key: str, value: Any, depth: int) -> None:
        if len(found) >= limit or depth > 3:
            return
        if isinstance(value, nn.utils.rnn.PackedSequence):
            value = value.data
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.dim() > 0 and value.numel() > 0:  # a 0-d tensor is a count, not data
                found.append((key, value))
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                visit(f"{key}[{i}]", v, depth + 1)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}", v, depth + 1)

    for i, a in enumerate(args):
        visit(f"input{i}", a, 0)
    for k, v in kwargs.items():
        visit(str(k), v, 0)
    return found


def _doctor_version() -> str:
    from doctor import __version__

    return __version__
