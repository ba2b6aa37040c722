"""Instructions per training step, plain and watched, counted by callgrind: the recorder's CPU cost, exactly.

A shared machine's clock moves by 10-30% between runs, more than the cost being measured. Instruction counts
do not: callgrind counts the same total for the same program and input. Each tiny workload of ``dispatch.py``
runs twice per mode, for 20 and for 120 steps; the difference over 100 steps cancels interpreter start-up and
importing torch, and holds the sampled steps (50, 100) and a flush (100) at their usual rate. The count covers
the whole process (the Python interpreter, PyTorch's dispatcher, the CPU kernels), so it is what a launch-bound
loop spends on the host per step, minus the CUDA driver's launch cost per kernel.

    python bench/instructions.py [--jobs 2] [--repo PATH]    # needs valgrind; about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("bilstm_2 layers", "mlp_6 layers", "transformer_4 layers", "cnn_bn_3 blocks")
SHORT, LONG = 20, 120


def count(workload: str, mode: str, steps: int, repo: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(HERE / "dispatch.py"),
             "--only-run", workload, mode, str(steps)],
            capture_output=True, text=True, env=env, cwd=tmp,
        )
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not found:
            raise SystemExit(f"callgrind run failed ({workload}, {mode}, {steps}): {proc.stderr[-500:]}")
        return int(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the doctor checkout to measure")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    workloads = [w for w in WORKLOADS if args.only in w]
    jobs = [(w, m, n) for w in workloads for m in ("plain", "doctor") for n in (SHORT, LONG)]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: count(*job, args.repo), jobs)))
    print(f"doctor at {args.repo}; instructions per step = (count at {LONG} steps - count at {SHORT}) / {LONG - SHORT}")
    print(f"{'workload (tiny widths)':24} {'plain':>12} {'watched':>12} {'added':>10} {'ratio':>7}")
    for w in workloads:
        plain, watched = ((counts[(w, m, LONG)] - counts[(w, m, SHORT)]) / (LONG - SHORT) for m in ("plain", "doctor"))
        print(f"{w:24} {plain:12,.0f} {watched:12,.0f} {watched - plain:10,.0f} {watched / plain:7.3f}", flush=True)


if __name__ == "__main__":
    main()
