"""Recording overhead: median step time watched / unwatched, measured side by side in one process.

Four workloads (issue 5): a bidirectional 2-layer LSTM (hidden 128, 80 steps, batch 32, document 000's
setting), a 6x512 MLP, a 4-layer transformer encoder (d_model 256), a small CNN with batch norm. For each,
three identical models are trained in alternating blocks of steps: unwatched, under doctor.watch (defaults,
one watch for the whole run), under TensorBoard gradient histograms every step (where tensorboard is installed)
and under a naive hand-written monitor (per-parameter ``.norm().item()`` and
per-module mean/std ``.item()`` every step, what ad-hoc scripts and ``wandb.watch(log="all")`` amount to).
Each round runs one block of each, in alternating order; a round's ratio compares block medians, and the
figure printed is the median over rounds, which cancels slow drift of a shared machine.
torch.utils.tensorboard is not installed here, so its histograms are not compared.

Then, per workload, the cost doctor adds to a ``clip_grad_norm_`` call (it records the pre-clip norm the
call returns): calls with and without an open run, interleaved.

    python bench/overhead.py [--device cuda] [--blocks 12] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import doctor


class BiLSTM(nn.Module):
    def __init__(self, inputs=32, hidden=128):
        super().__init__()
        self.rnn = nn.LSTM(inputs, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Encoder(nn.Module):
    def __init__(self, d_model=256, heads=8, feedforward=1024):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, feedforward, batch_first=True, dropout=0.1)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def cnn(widths=(32, 64, 128), pixels=32):
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    a, b, c = widths
    flat = c * (pixels // 8) ** 2
    return nn.Sequential(*block(3, a), *block(a, b), *block(b, c), nn.Flatten(), nn.Linear(flat, 10))


def mlp(width=512):
    layers = [nn.Linear(width, width), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


WORKLOADS = {
    "bilstm_2x128_T80_B32": (BiLSTM, lambda: (torch.randn(32, 80, 32), torch.randint(0, 2, (32,)))),
    "mlp_6x512_B256": (mlp, lambda: (torch.randn(256, 512), torch.randint(0, 10, (256,)))),
    "transformer_4x256_T64_B16": (Encoder, lambda: (torch.randn(16, 64, 256), torch.randint(0, 10, (16,)))),
    "cnn_bn_32px_B64": (cnn, lambda: (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))),
}


class NaiveMonitor:
    """What a hand-written monitor does: read every statistic back to the host, every step."""

    def __init__(self, model):
        self.model, self.rows = model, []
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules() if not list(m.children())]

    def hook(self, module, args, out):
        if isinstance(out, torch.Tensor):
            self.rows.append((out.detach().mean().item(), out.detach().std().item()))

    def step(self):
        self.rows.append([p.grad.norm().item() for p in self.model.parameters() if p.grad is not None])

    def close(self):
        for h in self.handles:
            h.remove()


class TensorBoardMonitor:
    """The common alternative: torch.utils.tensorboard histograms of every gradient, every step."""

    def __init__(self, model, log_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.model, self.rows, self.step_index = model, [], 0
        self.writer = SummaryWriter(str(log_dir))

    def step(self):
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                self.writer.add_histogram(f"grad/{name}", p.grad, self.step_index)
        self.step_index += 1

    def close(self):
        self.writer.close()


def tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class HookClock:
    """Time spent inside doctor's hooks and run.log, summed: on the CPU every op is synchronous, so this is
    the recorder's whole cost per step, free of the machine noise that a step-time ratio carries."""

    seconds = 0.0
    names = ("_before_optimizer_step", "_after_optimizer_step", "_before_forward", "log")

    @classmethod
    def install(cls):
        from doctor.recorder.run import Run

        def timed(fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    cls.seconds += time.perf_counter() - start

            return wrapper

        for name in cls.names:
            setattr(Run, name, timed(getattr(Run, name)))
        make_hook = Run._module_hook
        Run._module_hook = lambda self, index: timed(make_hook(self, index))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setups(name, make, device, log_dir):
    """One identical model and optimizer per mode: (model, optimizer, doctor run or None, other monitor or None)."""
    setups = {}
    modes = ("plain", "doctor", "naive", "tensorboard") if tensorboard_installed() else ("plain", "doctor", "naive")
    for mode in modes:
        torch.manual_seed(0)
        model = make().to(device)
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        run = doctor.watch(model, optimizer, log=Path(log_dir) / f"{name}.log") if mode == "doctor" else None
        monitor = NaiveMonitor(model) if mode == "naive" else None
        if mode == "tensorboard":
            monitor = TensorBoardMonitor(model, Path(log_dir) / f"tb-{name}")
        setups[mode] = (model, optimizer, run, monitor)
    return setups


def measure(name, make, data, device, blocks, steps, log_dir):
    """Three identical models (plain, watched for the whole run, naive monitor), stepped in alternating blocks."""
    x, y = (t.to(device) for t in data())
    loss_fn = nn.CrossEntropyLoss()
    setups = _setups(name, make, device, log_dir)
    times = {m: [] for m in setups}
    rounds = {m: [] for m in setups}  # median step time of each block
    peaks = {m: 0 for m in setups}  # CUDA: peak allocated bytes during a block (every model stays resident)

    def one_block(mode, record=True):
        model, optimizer, run, naive = setups[mode]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if run:
                run.log(loss=loss)
            if naive:
                naive.step()
                naive.rows.append(loss.item())
            sync(device)
            if record:
                times[mode].append(time.perf_counter() - start)
        if record:
            rounds[mode].append(statistics.median(times[mode][-steps:]))
            if device.type == "cuda":
                peaks[mode] = max(peaks[mode], torch.cuda.max_memory_allocated(device))

    for mode in setups:  # warm-up
        one_block(mode, record=False)
    hook_seconds = 0.0
    for b in range(blocks):
        for mode in list(setups) if b % 2 == 0 else list(setups)[::-1]:
            before = HookClock.seconds
            one_block(mode)
            if mode == "doctor":
                hook_seconds += HookClock.seconds - before
    setups["doctor"][2].close()
    for mode in ("naive", "tensorboard"):
        if mode in setups:
            setups[mode][3].close()
    paired = {m: statistics.median(a / b for a, b in zip(rounds[m], rounds["plain"])) for m in rounds}
    out = {m: (statistics.median(v), statistics.fmean(v), paired[m]) for m, v in times.items()}
    out["hooks"] = hook_seconds / len(times["doctor"])
    out["peak_mb"] = {m: b / 2**20 for m, b in peaks.items()}
    return out


def clip_observer_cost(make, data, device, repeats=15, calls=40):
    """Time per clip_grad_norm_ call, unwatched and watched (doctor observes the call), interleaved.

    The observer keeps the total norm the call returns, so its cost is Python bookkeeping only: reading the
    parameter iterable once, a set of ids, one dict entry. Returns (plain, watched) median seconds per call.
    """
    torch.manual_seed(0)
    model = make().to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x, y = (t.to(device) for t in data())
    nn.CrossEntropyLoss()(model(x), y).backward()
    original = torch.nn.utils.clip_grad_norm_
    per_call = {"plain": [], "watched": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = doctor.watch(model, optimizer, log=Path(tmp) / "clip.log")
        wrapped = torch.nn.utils.clip_grad_norm_
        order = (("plain", original), ("watched", wrapped))
        for r in range(repeats):
            for mode, fn in order if r % 2 == 0 else order[::-1]:
                sync(device)
                start = time.perf_counter()
                for _ in range(calls):
                    fn(model.parameters(), 1e9)  # a limit never reached: the gradients stay as they are
                sync(device)
                per_call[mode].append((time.perf_counter() - start) / calls)
        run.close()
    return statistics.median(per_call["plain"]), statistics.median(per_call["watched"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.simplefilter("ignore")
    HookClock.install()
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"blocks={args.blocks} steps/block={args.steps}"
    )
    print("x = median over rounds of (block median step time / the plain block's of the same round);")
    print("mean = ratio of mean step times, which includes the sampled and flush steps")
    print("hooks = time inside doctor's hooks per step (all steps averaged), as a share of the plain mean step")
    print(
        f"{'workload':28} {'plain ms':>9} {'doctor ms':>10} {'doctor x':>9} {'mean':>6} {'hooks ms':>9} {'hooks %':>8} "
        f"{'naive ms':>9} {'naive x':>8} {'mean':>6} {'tb hist x':>9} {'mean':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, data) in WORKLOADS.items():
            if args.only and args.only not in name:
                continue
            med = measure(name, make, data, device, args.blocks, args.steps, tmp)
            (p_med, p_mean, _), (d_med, d_mean, d_x), (n_med, n_mean, n_x) = med["plain"], med["doctor"], med["naive"]
            hooks = med["hooks"]
            tb = "      n/a    n/a"
            if "tensorboard" in med:
                tb = f"{med['tensorboard'][2]:9.3f} {med['tensorboard'][1] / p_mean:6.3f}"
            print(
                f"{name:28} {1e3 * p_med:9.2f} {1e3 * d_med:10.2f} {d_x:9.3f} {d_mean / p_mean:6.3f} "
                f"{1e3 * hooks:9.3f} {100 * hooks / p_mean:7.2f}% "
                f"{1e3 * n_med:9.2f} {n_x:8.3f} {n_mean / p_mean:6.3f} {tb}",
                flush=True,
            )
            if device.type == "cuda":
                peak = med["peak_mb"]
                print(
                    f"{'':28} peak CUDA memory in a block: {peak['plain']:.1f} MB plain, {peak['doctor']:.1f} MB watched "
                    f"(+{peak['doctor'] - peak['plain']:.1f} MB)",
                    flush=True,
                )
            plain_clip, watched_clip = clip_observer_cost(make, data, device)
            print(
                f"{'':28} clip_grad_norm_ per call: {1e6 * plain_clip:.0f} us unwatched, {1e6 * watched_clip:.0f} us "
                f"watched: the observer adds {1e6 * (watched_clip - plain_clip):.0f} us, "
                f"{100 * (watched_clip - plain_clip) / p_mean:.2f}% of the plain step",
                flush=True,
            )


if __name__ == "__main__":
    main()
