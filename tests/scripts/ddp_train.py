"""Trained by tests/test_distributed.py under torchrun (2 processes, gloo on CPU).

Usage: torchrun --nproc_per_node=2 ddp_train.py LOG MODE, MODE one of:
  healthy   both ranks read their shard of one dataset;
  faulty    rank 1 reads shuffled labels (desynchronised data) and waits 30 ms per batch (a slow loader);
  default   as healthy, recorded with the default (rank 0 only).
"""

import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import doctor


def main() -> None:
    log, mode = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # identical replicas before wrapping
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    x, y = x[rank::2], y[rank::2]  # this rank's shard
    faulty = mode == "faulty" and rank == 1
    if faulty:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    run = doctor.watch(model, optimizer, log=log, all_ranks=mode != "default", weight_every=10)
    order = torch.Generator().manual_seed(rank)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,), generator=order)
        if faulty:
            time.sleep(0.03)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log(loss=loss)
    run.close()
    print(f"rank {rank}: {type(run).__name__}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
