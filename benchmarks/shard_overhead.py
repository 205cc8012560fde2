"""What the shard path costs one process: a training epoch with ``[distributed] shards = 8``
(the default) against ``shards = 1`` (one shard: the whole batch in one backward, as delgrad
computed it before shards), same build, alternated.

    python benchmarks/shard_overhead.py [--repeat 5]

Pipelines: ``yinyang_synaptic`` (TTFS, batch 150, 34 steps of a few ms: where per-batch
overhead shows most) and ``temporal`` (multi-spike, batch 64). Each epoch is timed without
its evaluations (the trainer's steps only); medians over ``--repeat`` alternated rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from delgrad import pipeline  # noqa: E402
from delgrad.config import load_config  # noqa: E402
from delgrad.train import Trainer  # noqa: E402


def epoch_seconds(cfg, train, n_in: int, shards: int) -> float:
    trainer = Trainer(pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg)), cfg.train, shards=shards)
    t0 = time.perf_counter()
    trainer.run_epoch(train)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"shard_overhead: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    for name in ("yinyang_synaptic", "temporal"):
        cfg = load_config(ROOT / "pipelines" / f"{name}.toml", ["train.epochs=1"])
        with tempfile.TemporaryDirectory() as tmp:
            data = pipeline.encode(cfg, Path(tmp))
            train, _, n_in = pipeline.load_split(data, "train")
            times: dict[int, list[float]] = {1: [], 8: []}
            epoch_seconds(cfg, train, n_in, 8)  # warm-up: the core's thread pool, caches
            for _ in range(args.repeat):
                for shards in (1, 8):
                    times[shards].append(epoch_seconds(cfg, train, n_in, shards))
        one, eight = (float(np.median(times[s])) for s in (1, 8))
        print(
            f"  {name:18s} batch {cfg.train.batch_size:3d}: 1 shard {1e3 * one:7.1f} ms/epoch, "
            f"8 shards {1e3 * eight:7.1f} ms/epoch (medians of {args.repeat}); 8/1 = {eight / one:.3f}"
        )


if __name__ == "__main__":
    main()
