"""Test accuracy and wall time of the shipped Yin-Yang pipelines over several seeds.

Each (pipeline, seed) is an ordinary pipeline run (`delgrad run ... --set train.seed=S`) into
benchmarks/out/<pipeline>-seed<S>; the table reports the test accuracy of the saved model (the
best-validation epoch, as the pipelines select), the test accuracy of the last epoch, and the
wall time of the whole run (encode + training with per-epoch evaluation + report). For
pipelines trained in the loop (``[hardware]``) the accuracies are the ones measured on the
(emulated) hardware.

Usage: python benchmarks/yinyang_accuracy.py [--seeds 0 1 2 3 4] [--pipelines NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import polars as pl
from delgrad import pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ["yinyang_synaptic", "yinyang_axonal", "yinyang_nodelay", "yinyang_synaptic_5"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--pipelines", nargs="+", default=PIPELINES)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    for name in args.pipelines:
        accs, last, walls = [], [], []
        for seed in args.seeds:
            out = ROOT / "benchmarks" / "out" / f"{name}-seed{seed}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            run_dir = pipeline.run(
                ROOT / "pipelines" / f"{name}.toml", [f"train.seed={seed}", *args.overrides], out, progress=False
            )
            walls.append(time.perf_counter() - t0)
            res = pipeline.evaluate_run(run_dir)
            m = pl.read_parquet(run_dir / "metrics.parquet")
            hw_file = run_dir / "hardware.json"
            extra = ""
            if hw_file.exists():
                # In the loop, the result is the accuracy measured on the (emulated) hardware;
                # the ideal simulation of the same parameters is printed beside it.
                accs.append(100 * json.loads(hw_file.read_text())["accuracy"]["test"]["acc"])
                extra = f", same parameters in ideal simulation {100 * res['test_acc']:.2f} %"
            else:
                accs.append(100 * res["test_acc"])
            last.append(100 * m["test_acc"][-1])
            print(
                f"  {name} seed {seed}: test {accs[-1]:.2f} % (last epoch {last[-1]:.2f} %{extra}), "
                f"wall {walls[-1]:.1f} s",
                flush=True,
            )
        print(
            f"{name}: median test {statistics.median(accs):.2f} % (min {min(accs):.2f}, max {max(accs):.2f}); "
            f"last-epoch median {statistics.median(last):.2f} %; median wall {statistics.median(walls):.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
