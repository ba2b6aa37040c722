"""Analysis speed and log size: a synthetic 100k-step log of a 50-layer model through `doctor analyze`.

The log is written record by record the way the recorder writes it (same kinds, fields, rounding and
sampling schedules), from a synthetic run whose gradient norm spikes once, so the rules have work to do.
Then `doctor analyze --json -o report.html` runs in a subprocess; wall time and peak RSS are measured.
Run at several lengths to check that time grows linearly with steps.

    python bench/analysis.py [--steps 100000] [--layers 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from doctor import schema
from doctor.recorder.config import RecorderConfig
from doctor.recorder.writer import LogWriter, rounded


def header(layers: int, width: int) -> dict:
    params, modules = (
        [],
        [{"name": "<model>", "type": "Sequential", "activation": "other", "order": 0, "leaf": False, "params": 0}],
    )
    for i in range(layers):
        lin, act = str(2 * i), str(2 * i + 1)
        modules.append(
            {
                "name": lin,
                "type": "Linear",
                "activation": "linear",
                "order": 2 * i + 1,
                "leaf": True,
                "params": width * width + width,
            }
        )
        if i < layers - 1:  # the output layer is linear
            modules.append({"name": act, "type": "ReLU", "activation": "relu", "order": 2 * i + 2, "leaf": True, "params": 0})
        for kind, shape in (("weight", [width, width]), ("bias", [width])):
            params.append(
                {
                    "name": f"{lin}.{kind}",
                    "module": lin,
                    "module_type": "Linear",
                    "shape": shape,
                    "numel": int(np.prod(shape)),
                    "dtype": "float32",
                    "requires_grad": True,
                    "group": 0,
                    "weight_decay": 0.0,
                    "recurrent": False,
                    "gates": 1,
                }
            )
    return {
        "kind": schema.HEADER,
        "format": schema.FORMAT_NAME,
        "schema": schema.SCHEMA_VERSION,
        "name": "synthetic",
        "env": {"torch": "synthetic", "device": "cpu", "started": "2026-01-01T00:00:00+00:00"},
        "model": {"class": "Sequential", "parameters": sum(p["numel"] for p in params), "modules": modules, "params": params},
        "optimizer": {
            "class": "Adam",
            "groups": [{"index": 0, "params": [p["name"] for p in params], "lr": 1e-3, "weight_decay": 0.0}],
        },
        "recorded_modules": [m["name"] for m in modules[1:]],
        "spectra": [],
        "config": RecorderConfig().to_json(),
    }


def write_log(path: Path, steps: int, layers: int, width: int = 64) -> None:
    rng = np.random.default_rng(0)
    config = RecorderConfig()
    schedules = config.schedules()
    n_params = 2 * layers
    modules = [str(i) for i in range(2 * layers - 1)]
    loss = 2.3 * np.exp(-np.arange(steps) / (steps / 5)) + 0.1 + 0.05 * rng.standard_normal(steps)
    grad_total = 0.5 + 0.1 * rng.standard_normal(steps) ** 2
    grad_total[steps // 2] *= 200  # one spike that wrecks the loss: exploding_gradients should name it
    loss[steps // 2 : steps // 2 + 3] += 10
    out = LogWriter(path)  # the recorder's own writer: same encoding, one line per record
    try:
        out.write(header(layers, width))
        out.write({"kind": schema.TRACE, "call_order": modules})
        window = np.zeros(n_params)
        for start in range(0, steps, config.flush_every):
            chunk = range(start, min(start + config.flush_every, steps))
            out.write(
                {
                    "kind": schema.STEPS,
                    "step": list(chunk),
                    "lr": [[1e-3]] * len(chunk),
                    "weight_decay": [[0.0]] * len(chunk),
                    "seconds": [0.01] * len(chunk),
                    "grad_norm": rounded(grad_total[list(chunk)].tolist()),
                    "scalars": {"loss": rounded(loss[list(chunk)].tolist(), 7)},
                },
            )
            grad_rows, weight_rows, act_rows = [], [], []
            for s in chunk:
                window = np.maximum(window, grad_total[s] / np.sqrt(n_params) * rng.uniform(0.5, 1.5, n_params))
                if schedules["grads"].due(s):
                    grad_rows.append((s, rounded(window.tolist())))
                    window[:] = 0
                if schedules["weights"].due(s):
                    weight_rows.append(
                        (s, rounded(rng.uniform(5, 6, n_params).tolist()), rounded(rng.uniform(1e-4, 1e-3, n_params).tolist()))
                    )
                if schedules["activations"].due(s):
                    act_rows.append((s, [rounded([0.1, 1.0, 4.0, 0.5, float("nan"), 0.02], 5) for _ in modules]))
            if grad_rows:
                out.write(
                    {"kind": schema.GRADS, "step": [s for s, _ in grad_rows], "norm": [r for _, r in grad_rows]},
                )
            if weight_rows:
                out.write(
                    {
                        "kind": schema.WEIGHTS,
                        "step": [s for s, _, _ in weight_rows],
                        "norm": [w for _, w, _ in weight_rows],
                        "update_ratio": [u for _, _, u in weight_rows],
                    },
                )
            if act_rows:
                out.write(
                    {
                        "kind": schema.ACTIVATIONS,
                        "step": [s for s, _ in act_rows],
                        "modules": modules,
                        "stats": list(schema.ACTIVATION_STATS),
                        "values": [v for _, v in act_rows],
                    },
                )
        out.write({"kind": schema.EVENT, "type": "close", "reason": "clean", "steps": steps})
    finally:
        out.close()


def analyze(path: Path, report: Path) -> tuple[float, float, dict]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "doctor", "analyze", str(path), "--json", "-o", str(report)], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode != 0:
        raise SystemExit(f"doctor analyze failed: {result.stderr}")
    return wall, rss_mb, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=50)
    args = parser.parse_args()
    print(f"{'steps':>8} {'layers':>6} {'log MB':>7} {'analyze s':>9} {'peak RSS MB':>11} {'report MB':>9}  findings")
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (args.steps // 4, args.steps // 2, args.steps):
            log = Path(tmp) / f"synthetic-{steps}.log"
            write_log(log, steps, args.layers)
            wall, rss, payload = analyze(log, Path(tmp) / "report.html")
            size = log.stat().st_size / 1e6
            report = (Path(tmp) / "report.html").stat().st_size / 1e6
            rules = sorted(f["rule"] for f in payload["findings"])
            print(f"{steps:8,} {args.layers:6} {size:7.1f} {wall:9.2f} {rss:11.0f} {report:9.1f}  {rules}", flush=True)


if __name__ == "__main__":
    main()
