"""Document 000's failure, recorded: an LSTM that stops learning once L2 reaches its recurrent weights.

Trains the same LSTM twice on a task that needs memory (the label
is decided by the first of 30 time steps):

* ``rnn-l2``: Adam with weight_decay=1e-3 on every parameter, recurrent ones too;
* ``rnn-l2-exempt``: the same decay, but the recurrent weights (weight_hh_*) in a
  parameter group without it, the fix `doctor` recommends.

Both runs are recorded with ``doctor.watch``; ``make demo`` then runs
``doctor analyze`` on the two logs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import doctor


def memory_task(n: int, seed: int, length: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 4, generator=g) * 0.5
    y = (torch.rand(n, generator=g) > 0.5).long()
    x[:, 0, 0] = torch.where(y == 1, 2.0, -2.0)
    return x, y


class Tagger(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = nn.LSTM(4, hidden, batch_first=True, bidirectional=False)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(log: Path, exempt_recurrent: bool, steps: int = 400) -> None:
    torch.manual_seed(0)
    model = Tagger()
    if exempt_recurrent:
        recurrent = [p for n, p in model.named_parameters() if "weight_hh" in n]
        others = [p for n, p in model.named_parameters() if "weight_hh" not in n]
        groups = [{"params": others, "weight_decay": 1e-3}, {"params": recurrent, "weight_decay": 0.0}]
    else:
        groups = [{"params": model.parameters(), "weight_decay": 1e-3}]
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    x, y = memory_task(2048, seed=1)
    x_val, y_val = memory_task(256, seed=2)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(7)
    with doctor.watch(model, optimizer, log=log) as run:
        for step in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
            if step % 25 == 0:
                with torch.no_grad():
                    run.log(val_loss=loss_fn(model(x_val), y_val))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/demo")
    train(out / "rnn-l2.log", exempt_recurrent=False)
    train(out / "rnn-l2-exempt.log", exempt_recurrent=True)
    print(f"recorded {out / 'rnn-l2.log'} and {out / 'rnn-l2-exempt.log'}")
