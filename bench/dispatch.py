"""The recorder's fixed cost per step, where compute is nil: what a launch-bound GPU loop feels.

On a GPU the four workloads of ``overhead.py`` are small enough that a step is bound by the host launching
kernels, not by the device running them: every op and every line of Python the recorder adds lands on the
step's critical path. The CPU cannot show that with full-size tensors (its compute hides it), so this runs
the same architectures with tiny widths, where a step is almost pure dispatch, and reports:

* ops: aten operations dispatched per step, plain and watched (a non-sampled step, and the mean over steps
  1-100, which holds two sampled steps and a flush). Exact and repeatable: each op is a kernel launch on CUDA.
* us: step time added by doctor, median over interleaved blocks (thread CPU time on the CPU, synchronized wall
  time on CUDA); and the wall time inside doctor's hooks.

``added / plain`` is the launch-bound estimate of the GPU step-time ratio; ``--device cuda`` measures it.

    python bench/dispatch.py [--device cuda] [--blocks 30] [--steps 50]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BiLSTM, Encoder, HookClock, cnn, mlp, sync  # noqa: E402

import doctor  # noqa: E402

# overhead.py's four architectures (the same layers and parameter tensors), at tiny widths.
WORKLOADS = {
    "bilstm_2 layers": (lambda: BiLSTM(4, 8), lambda: (torch.randn(2, 8, 4), torch.randint(0, 2, (2,)))),
    "mlp_6 layers": (lambda: mlp(16), lambda: (torch.randn(4, 16), torch.randint(0, 10, (4,)))),
    "transformer_4 layers": (lambda: Encoder(16, 2, 32), lambda: (torch.randn(2, 4, 16), torch.randint(0, 10, (2,)))),
    "cnn_bn_3 blocks": (lambda: cnn((4, 8, 8), 8), lambda: (torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,)))),
}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _setup(make, device, log):
    torch.manual_seed(0)
    model = make().to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, foreach=True)  # CUDA's default; the CPU's is a loop
    return model, optimizer, (doctor.watch(model, optimizer, log=log) if log else None)


def _step(model, optimizer, run, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if run:
        run.log(loss=loss)


def count_ops(make, data, device, log):
    """Ops of one plain step; of one watched non-sampled step (step 1); mean per watched step over steps 1-100."""
    x, y = (t.to(device) for t in data())
    counts = {}
    for mode in ("plain", "doctor"):
        model, optimizer, run = _setup(make, device, log if mode == "doctor" else None)
        _step(model, optimizer, run, x, y)  # step 0: sampled, and optimizer state is created
        with OpCounter() as one:
            _step(model, optimizer, run, x, y)
        with OpCounter() as many:
            for _ in range(99):
                _step(model, optimizer, run, x, y)
        first = sum(one.ops.values())
        counts[mode] = (first, (first + sum(many.ops.values())) / 100, one.ops)
        if run:
            run.close()
    return counts


def time_steps(make, data, device, log, blocks, steps):
    """Median step time plain and watched (interleaved blocks), mean time inside doctor's hooks per step."""
    x, y = (t.to(device) for t in data())
    setups = {"plain": _setup(make, device, None), "doctor": _setup(make, device, log)}
    times = {m: [] for m in setups}
    hook_seconds, watched_steps = 0.0, 0
    # On the CPU every op runs in this thread: its CPU time is the step's cost without the other tenants of a
    # shared machine. On CUDA the step ends when the device is done: wall time, synchronized.
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    for b in range(blocks + 1):
        for mode in setups if b % 2 == 0 else list(setups)[::-1]:
            before = HookClock.seconds
            block = []
            for _ in range(steps):
                sync(device)
                start = clock()
                _step(*setups[mode], x, y)
                sync(device)
                block.append(clock() - start)
            if b:  # block 0 warms up
                times[mode] += block
                if mode == "doctor":
                    hook_seconds += HookClock.seconds - before
                    watched_steps += steps
    setups["doctor"][2].close()
    plain, watched = statistics.median(times["plain"]), statistics.median(times["doctor"])
    means = statistics.fmean(times["plain"]), statistics.fmean(times["doctor"])
    return plain, watched, means, hook_seconds / watched_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--only-run", nargs=3, metavar=("WORKLOAD", "MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # dispatch cost, not intra-op parallelism
    if args.only_run:  # bench/instructions.py counts the instructions of this under callgrind
        name, mode, steps = args.only_run
        make, data = WORKLOADS[name]
        x, y = data()
        with tempfile.TemporaryDirectory() as tmp:
            setup = _setup(make, device, Path(tmp) / "run.log" if mode == "doctor" else None)
            for _ in range(int(steps)):
                _step(*setup, x, y)
            if setup[2]:
                setup[2].close()
        return
    HookClock.install()
    print(f"device={device} torch={torch.__version__} blocks={args.blocks} steps/block={args.steps}")
    print(
        f"{'workload (tiny widths)':24} {'ops plain':>9} {'+ops step':>9} {'+ops mean':>9} "
        f"{'plain us':>9} {'+us med':>8} {'+us mean':>9} {'hooks us':>9} {'est. x':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, data) in WORKLOADS.items():
            log = Path(tmp) / f"{name.split('_')[0]}.log"
            counts = count_ops(make, data, device, log)
            plain, watched, (plain_mean, watched_mean), hooks = time_steps(
                make, data, device, log, args.blocks, args.steps
            )
            extra = counts["doctor"][2] - counts["plain"][2]
            print(
                f"{name:24} {counts['plain'][0]:9d} {counts['doctor'][0] - counts['plain'][0]:9d} "
                f"{counts['doctor'][1] - counts['plain'][1]:9.1f} {1e6 * plain:9.1f} {1e6 * (watched - plain):8.1f} "
                f"{1e6 * (watched_mean - plain_mean):9.1f} {1e6 * hooks:9.1f} {watched / plain:7.3f}",
                flush=True,
            )
            print(f"{'':24} ops a watched step adds: {dict(extra)}", flush=True)


if __name__ == "__main__":
    main()
