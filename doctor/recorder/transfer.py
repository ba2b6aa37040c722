"""One batched device-to-host copy per flush, asynchronous on CUDA.

On CUDA the copy is queued with ``non_blocking=True`` (into pinned memory) and
a CUDA event marks its end; the recorder polls the event at later steps and
writes the batch once it has landed, so the training loop never waits.
"""

from __future__ import annotations

from typing import Any

import torch


class HostCopy:
    def __init__(self, tensors: dict[str, torch.Tensor], host: dict[str, Any]):
        self.host = host
        self._event = None
        if any(t.device.type == "cuda" for t in tensors.values()):
            self._copies = {k: t.detach().to("cpu", non_blocking=True) for k, t in tensors.items()}
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._copies = {k: t.detach() for k, t in tensors.items()}

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> dict[str, list]:
        """The copied values as Python lists (waits for the copy if it has not landed yet)."""
        if self._event is not None:
            self._event.synchronize()
        return {k: v.tolist() for k, v in self._copies.items()}
