"""Trained by tests/test_distributed.py under torchrun: FSDP2 (fully_shard) on CPU with gloo, every rank recording.

Prints, as JSON on rank 0, the true norms of whole gradients at step 0 (gathered with full_tensor, outside doctor)
so the test can check what analyze combines from the ranks' shards.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import doctor


def main() -> None:
    log = sys.argv[1]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    run = doctor.watch(model, optimizer, log=log, all_ranks=True, flush_every=5)
    g = torch.Generator().manual_seed(dist.get_rank())
    truth = {}
    for step in range(12):
        x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            names = [n for n, _ in model.named_parameters()]
            full = [p.grad.full_tensor().norm().item() for p in model.parameters()]  # a collective on every rank
            truth = {"params": dict(zip(names, full)), "total": sum(v * v for v in full) ** 0.5}
        optimizer.step()
        run.log(loss=loss)
    run.close()
    if dist.get_rank() == 0:
        print(json.dumps(truth), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
