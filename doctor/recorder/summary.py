"""The header's static description of the model, optimizer and environment."""

from __future__ import annotations

import datetime as _dt
import math
import platform
import re
import socket
import sys
from typing import Any

import torch
from torch import nn

_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_RECURRENT_WEIGHT = re.compile(r"(^|\.)weight_hh_l\d+(_reverse)?$")


def activation_kind(module: nn.Module) -> str:
    """What the module's output is, for saturation/deadness statistics."""
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "relu"  # exact zeros mean dead units only for the plain ReLU family
    if isinstance(module, _RELU_FAMILY):
        return "relu_like"
    if isinstance(module, (nn.Tanh, nn.Hardtanh, nn.Softsign)):
        return "tanh"
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid)):
        return "sigmoid" if not isinstance(module, nn.LogSigmoid) else "other"
    if isinstance(module, nn.RNN):
        return "relu" if module.nonlinearity == "relu" else "tanh"
    if isinstance(module, (nn.LSTM, nn.GRU)):
        return "tanh"
    if isinstance(module, (nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)):
        return "smooth"
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        return "softmax"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Dropout):
        return "dropout"
    return "other"


def recorded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs are recorded: leaves, plus recurrent modules (whose children are none anyway)."""
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase) or not any(True for _ in module.children()):
            chosen.append((name or "<model>", module))
    return chosen


def gate_count(module: nn.Module) -> int:
    if isinstance(module, nn.LSTM):
        return 4
    if isinstance(module, nn.GRU):
        return 3
    return 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu())  # once, at watch() time: not in the hot path
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return repr(value)[:200]


def describe_optimizer(optimizer: torch.optim.Optimizer, param_names: dict[int, str]) -> dict[str, Any]:
    groups = []
    for index, group in enumerate(optimizer.param_groups):
        hyper = {k: _jsonable(v) for k, v in group.items() if k != "params"}
        groups.append(
            {
                "index": index,
                "params": [param_names.get(id(p), f"<unnamed:{i}>") for i, p in enumerate(group["params"])],
                "lr": hyper.get("lr"),
                "weight_decay": hyper.get("weight_decay", 0.0),
                "hyper": hyper,
            }
        )
    return {"class": type(optimizer).__name__, "module": type(optimizer).__module__, "groups": groups}


def describe_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (model summary, optimizer summary) for the header."""
    param_names = {id(p): name for name, p in model.named_parameters()}
    group_of: dict[int, int] = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            group_of[id(p)] = index
    owner: dict[int, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, module))

    modules = []
    for order, (name, module) in enumerate(model.named_modules()):
        modules.append(
            {
                "name": name or "<model>",
                "type": type(module).__name__,
                "activation": activation_kind(module),
                "order": order,
                "leaf": not any(True for _ in module.children()),
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "extra": module.extra_repr()[:200],
            }
        )
    params = []
    for name, p in model.named_parameters():
        mname, module = owner.get(id(p), ("", model))
        group = group_of.get(id(p))
        wd = optimizer.param_groups[group].get("weight_decay", 0.0) if group is not None else None
        recurrent = bool(_RECURRENT_WEIGHT.search(name)) and isinstance(module, nn.RNNBase)
        params.append(
            {
                "name": name,
                "module": mname or "<model>",
                "module_type": type(module).__name__,
                "shape": list(p.shape),
                "numel": p.numel(),
                "dtype": str(p.dtype).replace("torch.", ""),
                "requires_grad": p.requires_grad,
                "group": group,
                "weight_decay": _jsonable(wd),
                "recurrent": recurrent,
                "gates": gate_count(module) if recurrent else 1,
            }
        )
    model_summary = {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "modules": modules,
        "params": params,
    }
    return model_summary, describe_optimizer(optimizer, param_names)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "argv": list(sys.argv),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **_distributed(),
    }


def _distributed() -> dict[str, Any]:
    from doctor.recorder.distributed import rank_and_world

    rank, world = rank_and_world()
    return {"rank": rank, "world_size": world} if world > 1 else {}
