"""The scenario zoo: small real training runs, each with one known fault, and healthy twins.

Every scenario trains a real model on the CPU in a few seconds under
``doctor.watch`` and declares the rule ids that must fire (as warning or
error). Healthy scenarios declare none: any warning or error on them is a false
positive. ``python -m tests.zoo`` records every scenario and prints per-rule
precision and recall (``make eval``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import doctor

CLASSES = 4
FEATURES = 20


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: frozenset[str]
    train: Callable[[Path], None]
    doc: str

    @property
    def healthy(self) -> bool:
        return not self.expected


SCENARIOS: dict[str, Scenario] = {}
SEED_OFFSET = 0  # `python -m tests.zoo --seed-offset N` re-runs the zoo with other initializations


def seed() -> None:
    """Seed model initialization; data stays fixed so the fault, not the sample, varies."""
    torch.manual_seed(SEED_OFFSET)


def scenario(*expected: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        name = fn.__name__
        SCENARIOS[name] = Scenario(name, frozenset(expected), fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


# ----------------------------------------------------------------------------- data
def teacher_data(n: int, seed: int, scale: float = 1.0, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a fixed random teacher network: learnable, not trivially."""
    g = torch.Generator().manual_seed(1234)
    w1 = torch.randn(FEATURES, 32, generator=g) / math.sqrt(FEATURES)
    w2 = torch.randn(32, CLASSES, generator=g) / math.sqrt(32)
    x = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed))
    y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
    return x * scale + offset, y


def memory_data(n: int, seed: int, length: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose label is the sign of the first step's first feature: needs memory over `length` steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 4, generator=g) * 0.5
    y = (x[:, 0, 0] > 0).long()
    x[:, 0, 0] = torch.where(y == 1, 2.0, -2.0)
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def mlp(widths: list[int], act: type[nn.Module] = nn.ReLU, norm: bool = False, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            if norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def train_classifier(
    log: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    *,
    batch: int = 64,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_every: int = 20,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: float | None = None,
    poison_step: int | None = None,
) -> None:
    """The ordinary loop every scenario shares, watched by doctor."""
    loss_fn = nn.CrossEntropyLoss()
    with doctor.watch(model, optimizer, log=log) as run:
        for step, (xb, yb) in enumerate(batches(*data, batch, steps, seed=7)):
            if step == poison_step:
                xb = xb.clone()
                xb[0, 0] = float("nan")  # a corrupt sample, as a data pipeline bug would deliver it
            model.train()
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            run.log(loss=loss)
            if val is not None and step % val_every == 0:
                model.eval()
                with torch.no_grad():
                    run.log(val_loss=loss_fn(model(val[0]), val[1]))


class SequenceClassifier(nn.Module):
    def __init__(self, cell: str = "lstm", hidden: int = 32, layers: int = 1, bidirectional: bool = False, **kw):
        super().__init__()
        rnn_type = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn_type(4, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional, **kw)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, d_model: int = 32):
        super().__init__()
        self.embed = nn.Linear(4, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class SmallCNN(nn.Module):
    def __init__(self, init_std: float | None = None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(64, CLASSES)
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def image_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """12x12 images: one of four quadrants is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.5
    for c in range(CLASSES):
        r, k = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, k * 6 : k * 6 + 6] += 1.0
    return x, y


# ----------------------------------------------------------------------------- healthy twins
@scenario()
def healthy_mlp(log: Path) -> None:
    """A 3-layer ReLU MLP with Adam at 1e-3 on teacher data, validation logged: learns well."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1), 400, val=teacher_data(512, 2))


@scenario()
def healthy_cnn_bn(log: Path) -> None:
    """A small CNN with batch norm, SGD with momentum, default init: learns well."""
    seed()
    model = SmallCNN()
    train_classifier(log, model, torch.optim.SGD(model.parameters(), 0.05, momentum=0.9), image_data(2048, 1), 200)


@scenario()
def healthy_lstm(log: Path) -> None:
    """An LSTM on a 30-step memory task with Adam and no weight decay: learns it."""
    seed()
    model = SequenceClassifier("lstm")
    train_classifier(
        log,
        model,
        torch.optim.Adam(model.parameters(), 1e-2),
        memory_data(2048, 1),
        400,
        val=memory_data(256, 2),
        val_every=25,
    )


@scenario()
def healthy_bilstm_clipped(log: Path) -> None:
    """A bidirectional 2-layer LSTM (the setting of document 000, smaller) with clipping and no L2: learns."""
    seed()
    model = SequenceClassifier("lstm", hidden=32, layers=2, bidirectional=True)
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 3e-3), memory_data(2048, 1), 250, clip=1.0)


@scenario()
def healthy_rnn_clipped(log: Path) -> None:
    """The exploding RNN's twin: the same tanh RNN and optimizer with gradient-norm clipping at 1.0."""
    rnn_on_a_cliff(log, clip=1.0)


@scenario()
def healthy_transformer(log: Path) -> None:
    """A 2-layer transformer encoder with AdamW and warm-up: learns the memory task."""
    seed()
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    train_classifier(log, model, opt, memory_data(2048, 1, length=16), 250, scheduler=warmup)


@scenario()
def healthy_frozen_backbone(log: Path) -> None:
    """Fine-tuning a head on a deliberately frozen first layer: only an info note is allowed."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    for p in model[0].parameters():
        p.requires_grad_(False)
    train_classifier(
        log,
        model,
        torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3),
        teacher_data(4096, 1),
        300,
    )


# ----------------------------------------------------------------------------- faults
def rnn_on_a_cliff(log: Path, clip: float | None) -> None:
    """A tanh RNN (recurrent spectral norm 1.2) on 50-step sequences, SGD with momentum."""
    seed()
    model = SequenceClassifier("rnn", hidden=32)
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0)
        model.rnn.weight_hh_l0.mul_(1.2)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    train_classifier(log, model, optimizer, memory_data(2048, 1, length=50), 250, clip=clip)


@scenario("exploding_gradients", "saturated_activations")
def exploding_rnn(log: Path) -> None:
    """A tanh RNN on 50-step sequences, SGD with momentum, no clipping: one gradient spike wrecks the weights."""
    rnn_on_a_cliff(log, clip=None)


@scenario("vanishing_gradients", "deep_sigmoid")
def vanishing_sigmoid(log: Path) -> None:
    """A 10-layer sigmoid MLP with plain SGD: early layers get almost no gradient."""
    seed()
    model = mlp([FEATURES] + [32] * 9 + [CLASSES], act=nn.Sigmoid)
    train_classifier(log, model, torch.optim.SGD(model.parameters(), 0.1), teacher_data(4096, 1), 300)


@scenario("nonfinite")
def nan_in_data(log: Path) -> None:
    """A healthy MLP fed one corrupt (NaN) sample at step 150: every weight turns NaN."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1), 250, poison_step=150)


@scenario("over_regularized_rnn")
def rnn_l2(log: Path) -> None:
    """Document 000: the healthy LSTM with L2 (Adam weight_decay) on every weight, recurrent ones too."""
    seed()
    model = SequenceClassifier("lstm")
    train_classifier(
        log,
        model,
        torch.optim.Adam(model.parameters(), 1e-2, weight_decay=1e-3),
        memory_data(2048, 1),
        400,
        val=memory_data(256, 2),
        val_every=25,
    )


@scenario("over_regularized")
def adam_l2_collapse(log: Path) -> None:
    """The healthy MLP with Adam(weight_decay=0.3): the L2 term outweighs the data and the weights vanish."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-2, weight_decay=0.3), teacher_data(4096, 1), 400)


@scenario()
def healthy_adamw_decay(log: Path) -> None:
    """The over-regularized MLP's twin: AdamW with the same decay, decoupled, trains normally."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.AdamW(model.parameters(), 1e-2, weight_decay=0.3), teacher_data(4096, 1), 400)


def big_init_mlp(norm: bool = False) -> nn.Sequential:
    """A 6-layer ReLU MLP (batch norm after each hidden layer if ``norm``) with N(0, 1) weights: far too large."""
    model = mlp([FEATURES] + [64] * 5 + [CLASSES], norm=norm)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)
    return model


@scenario("bad_init")
def relu_big_init(log: Path) -> None:
    """A 6-layer ReLU MLP initialized with N(0, 1) weights: activations grow ~5x per layer at step 0."""
    seed()
    model = big_init_mlp()
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1), 300)


@scenario("bad_init")
def bn_hides_bad_init(log: Path) -> None:
    """Document 002's case: batch norm after every layer hides an N(0, 1) init that is far too large."""
    seed()
    model = big_init_mlp(norm=True)
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1), 300)


@scenario("saturated_activations", "unnormalized_inputs")
def tanh_raw_inputs(log: Path) -> None:
    """A tanh MLP fed raw inputs of scale 30: the first layer is saturated for the whole run."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES], act=nn.Tanh)
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1, scale=30.0), 300)


@scenario("unnormalized_inputs", "dead_relu")
def relu_offset_inputs(log: Path) -> None:
    """A ReLU MLP fed inputs with offset 500 and scale 50 (raw sensor counts): half its units die."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1, scale=50.0, offset=500.0), 300)


@scenario("dead_relu")
def dead_relu_bias(log: Path) -> None:
    """A ReLU MLP whose hidden biases start at -4 (a bad bias init): most units never fire."""
    seed()
    model = mlp([FEATURES, 128, 128, CLASSES])
    with torch.no_grad():
        model[0].bias.fill_(-4.0)
        model[2].bias.fill_(-4.0)
    train_classifier(log, model, torch.optim.SGD(model.parameters(), 0.05), teacher_data(4096, 1), 300)


@scenario("lr_decay_too_fast")
def fast_exponential_decay(log: Path) -> None:
    """Document 002's case: the LR is multiplied by 0.98 every step and is gone long before convergence."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train_classifier(
        log, model, opt, teacher_data(4096, 1), 400, scheduler=torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    )


@scenario("lr_too_high", "saturated_activations")
def sgd_lr_too_high(log: Path) -> None:
    """Plain SGD at lr 3.0 on a tanh MLP: the loss jumps around and the oversized weights saturate tanh."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES], act=nn.Tanh)
    train_classifier(log, model, torch.optim.SGD(model.parameters(), 3.0), teacher_data(4096, 1), 300)


@scenario("loss_plateau")
def lr_far_too_low(log: Path) -> None:
    """Adam at lr 1e-7: healthy gradients, a loss that does not move."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-7), teacher_data(4096, 1), 300)


@scenario("weights_not_updating")
def layer_missing_from_optimizer(log: Path) -> None:
    """The middle layer was left out of the optimizer by mistake: it gets gradients and never changes."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES])
    params = list(model[0].parameters()) + list(model[4].parameters())
    train_classifier(log, model, torch.optim.Adam(params, 1e-3), teacher_data(4096, 1), 300)


@scenario("overfitting")
def memorizes_small_set(log: Path) -> None:
    """A wide MLP on 64 training samples, validation logged: validation loss turns up and keeps rising."""
    seed()
    model = mlp([FEATURES, 256, 256, CLASSES])
    train_classifier(
        log,
        model,
        torch.optim.Adam(model.parameters(), 3e-3),
        teacher_data(64, 1),
        400,
        batch=32,
        val=teacher_data(512, 2),
        val_every=10,
    )


@scenario("output_activation")
def relu_on_logits(log: Path) -> None:
    """A classifier whose last layer is followed by a ReLU before the cross-entropy loss (document 002)."""
    seed()
    model = mlp([FEATURES, 64, 64, CLASSES], out_act=nn.ReLU())
    train_classifier(log, model, torch.optim.Adam(model.parameters(), 1e-3), teacher_data(4096, 1), 300)


def train_fp16_regression(log: Path, target_scale: float, reduction: str, steps: int = 300) -> None:
    """Regression under float16 autocast with GradScaler, the scaler handed to doctor.watch."""
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), 3e-2)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) * target_scale
    with doctor.watch(model, optimizer, log=log, scaler=scaler) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x), y, reduction=reduction)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            run.log(loss=loss)


@scenario("amp_skipped_steps")
def fp16_overflowing_targets(log: Path) -> None:
    """Unnormalized regression targets (x1000) and a summed loss under float16: the scaled gradients overflow."""
    seed()
    train_fp16_regression(log, target_scale=1e3, reduction="sum")


@scenario()
def healthy_fp16(log: Path) -> None:
    """The same regression with unit-scale targets and a mean loss: no overflow beyond GradScaler's calibration."""
    seed()
    train_fp16_regression(log, target_scale=1.0, reduction="mean")


def train_clipped_regression(log: Path, target_scale: float, steps: int = 300) -> None:
    """A ReLU MLP regressing a smooth teacher, SGD with momentum, the gradient norm clipped at 1.0 every step."""
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), 1e-2, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) * target_scale
    with doctor.watch(model, optimizer, log=log) as run:
        for xb, yb in batches(x, y, 64, steps, seed=7):
            loss = nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            run.log(loss=loss)


@scenario("persistent_clipping")
def clipped_unscaled_targets(log: Path) -> None:
    """Regression targets left at scale 100 and clip_grad_norm_(1.0): every step is clipped by ~400x."""
    seed()
    train_clipped_regression(log, target_scale=100.0)


@scenario()
def healthy_clipped_regression(log: Path) -> None:
    """The same regression on unit-scale targets: the clip at 1.0 is there for spikes and never bites."""
    seed()
    train_clipped_regression(log, target_scale=1.0)


@scenario("bad_init")  # persistent_clipping fires too, folded into bad_init as its consequence
def clip_hides_big_init(log: Path) -> None:
    """Document 002's case: the N(0, 1)-initialized ReLU MLP trained with SGD and clipping, which hides the init."""
    seed()
    model = big_init_mlp()
    opt = torch.optim.SGD(model.parameters(), 1e-2, momentum=0.9)
    train_classifier(log, model, opt, teacher_data(4096, 1), 300, clip=1.0)


# ----------------------------------------------------------------------------- evaluation
def record(name: str, directory: Path) -> Path:
    path = Path(directory) / f"{name}.log"
    SCENARIOS[name].train(path)
    return path


def flagged(analysis) -> set[str]:  # noqa: ANN001
    """Rule ids with a warning or error finding (info notes are not diagnoses)."""
    return {f.rule for f in analysis.findings if f.severity in ("error", "warning")}


def evaluate(directory: Path) -> dict[str, dict[str, float]]:
    """Record every scenario, analyze it, and print per-rule precision and recall over the zoo."""
    from doctor.engine import analyze, load_rules
    from doctor.loader import load_run

    rules = load_rules()
    tp: dict[str, int] = {r.id: 0 for r in rules}
    fp = dict.fromkeys(tp, 0)
    fn = dict.fromkeys(tp, 0)
    for name, sc in SCENARIOS.items():
        start = time.perf_counter()
        found = flagged(analyze(load_run(record(name, directory)), rules))
        for rule in tp:
            tp[rule] += rule in found and rule in sc.expected
            fp[rule] += rule in found and rule not in sc.expected
            fn[rule] += rule not in found and rule in sc.expected
        status = "ok " if found == set(sc.expected) else "BAD"
        print(f"{status} {name:32} expected={sorted(sc.expected)} found={sorted(found)} ({time.perf_counter() - start:.1f}s)")
    table = {}
    print(f"\n{'rule':26} {'precision':>9} {'recall':>7}  (tp/fp/fn)")
    for rule in tp:
        precision = tp[rule] / (tp[rule] + fp[rule]) if tp[rule] + fp[rule] else 1.0
        recall = tp[rule] / (tp[rule] + fn[rule]) if tp[rule] + fn[rule] else 1.0
        table[rule] = {"precision": precision, "recall": recall}
        if not (tp[rule] or fp[rule] or fn[rule]):  # e.g. rank_drift: its scenario needs several processes
            print(f"{rule:26} {'n/a':>9} {'n/a':>7}  (no zoo scenario; see tests/test_meta.py OUTSIDE_THE_ZOO)")
            continue
        print(f"{rule:26} {precision:9.0%} {recall:7.0%}  ({tp[rule]}/{fp[rule]}/{fn[rule]})")
    return table


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Record every scenario and print per-rule precision and recall.")
    parser.add_argument("directory", nargs="?", help="where to write the logs (a temporary folder by default)")
    parser.add_argument("--seed-offset", type=int, default=0, help="initialize models from another seed")
    args = parser.parse_args()
    SEED_OFFSET = args.seed_offset
    out = Path(args.directory) if args.directory else Path(tempfile.mkdtemp(prefix="doctor-zoo-"))
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate(out)
    sys.exit(0 if all(v["precision"] == 1.0 and v["recall"] == 1.0 for v in results.values()) else 1)
