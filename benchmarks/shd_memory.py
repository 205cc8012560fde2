"""Peak memory of an SHD-sized run's parts, for one or more builds side by side.

    python benchmarks/shd_memory.py [--build DIR ...] [--what split step] [--samples 8156]
                                    [--spikes 8000] [--hidden 512] [--batch 256]

Each measurement runs in a fresh process of each build (``DIR/.venv/bin/python``; default: this
checkout), on one encoded data set of the synthetic stand-in of ``pipelines/shd.toml`` at SHD's
shape (``--samples`` training samples, 700 channels, 20 classes, ``--spikes`` input spikes per
sample), and prints wall time and the process's peak resident set (VmHWM):

* ``split``: the training split as a run builds it (``pipeline.training_split``) with the
  recipe's ``[augment]`` (channel shift 40, blend): reading the Parquet data set plus whatever
  the augmentation holds.
* ``step``: one training step of ``pipelines/shd.toml`` (recurrent ``--hidden``, batch
  ``--batch``, 8 shards, augmentation off) on the split: forward, loss, backward, update.

Builds alternate per measurement so that both see the same machine. The rayon thread count is
the environment's (``RAYON_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        "data.synthetic=true",
        f"data.n_train={args.samples}",
        "data.n_validation=16",
        "data.n_test=16",
        f"data.spikes_per_sample={args.spikes}",
        f"network.hidden=[{args.hidden}]",
        f"train.batch_size={args.batch}",
    ]


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One measurement in this process (of the build whose python runs it); one JSON line."""
    import numpy as np
    from delgrad import pipeline
    from delgrad.config import load_config

    data_dir = Path(args.data) / "data"
    t0 = time.perf_counter()
    if args.what == "split":
        cfg = load_config(ROOT / "pipelines" / "shd.toml", [*overrides(args), "augment.enabled=true"])
        train = pipeline.training_split(data_dir, cfg)
        size = getattr(train, "epoch_size", len(train))
    else:
        from delgrad.train import Trainer

        cfg = load_config(ROOT / "pipelines" / "shd.toml", [*overrides(args), "augment.enabled=false"])
        train, _, n_in = pipeline.load_split(data_dir, "train")
        loaded = peak_mb()
        net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
        t0 = time.perf_counter()
        Trainer(net, cfg.train, shards=8).step(train, np.arange(args.batch, dtype=np.uint32), 1.0)
        size = args.batch
    out = {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb(), "samples": size}
    if args.what == "step":
        out["split_loaded_mb"] = loaded
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="append", help="a checkout with its .venv (repeatable; default: this one)")
    p.add_argument("--what", nargs="+", choices=["split", "step"], default=["split", "step"])
    p.add_argument("--samples", type=int, default=8156)
    p.add_argument("--spikes", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--child", choices=["split", "step"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.what = args.child
        child(args)
        return

    from delgrad import pipeline
    from delgrad.config import load_config

    builds = [Path(b).resolve() for b in (args.build or [ROOT])]
    commits = {
        b: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=b, capture_output=True, text=True).stdout.strip()
        for b in builds
    }
    print(
        f"shd_memory: {args.samples} samples x ~{args.spikes} input spikes, 700-{args.hidden}(rec)-20, batch "
        f"{args.batch}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, RAYON_NUM_THREADS="
        f"{os.environ.get('RAYON_NUM_THREADS', 'all')}, load average {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.encode(load_config(ROOT / "pipelines" / "shd.toml", overrides(args)), Path(tmp))
        for what in args.what:
            for build in builds:
                command = [str(build / ".venv" / "bin" / "python"), __file__, "--child", what, "--data", tmp]
                command += ["--samples", str(args.samples), "--spikes", str(args.spikes)]
                command += ["--hidden", str(args.hidden), "--batch", str(args.batch)]
                # The child imports delgrad from the build's own checkout.
                env = {**os.environ, "PYTHONPATH": ""}
                out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True, cwd=build)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                extra = f", split loaded {r['split_loaded_mb']:.0f} MB" if "split_loaded_mb" in r else ""
                print(
                    f"  {what:5s} {build.name} ({commits[build]}): {r['seconds']:.1f} s, peak RSS "
                    f"{r['peak_mb']:.0f} MB{extra} ({r['samples']} samples)",
                    flush=True,
                )


if __name__ == "__main__":
    sys.exit(main())
