"""Data-parallel training: one process against Ray workers on this machine, same steps.

    python benchmarks/data_parallel.py [--hidden 128] [--batch 32] [--steps 6] [--n-train 256]

The problem is the SHD stand-in of ``pipelines/shd.toml`` (``data.synthetic = true``: 700
channels, ~2000 spikes per sample over 1 s, recurrent hidden layer with synaptic delays,
exponentially weighted readout), with ``--hidden`` neurons. Each configuration trains the same
``--steps`` batches from the same initial network in a fresh process (the core's thread count
is fixed when its pool starts) and prints, per step, the wall time and, with Ray, the part of
it that is not the slowest worker's own compute (putting the parameters, scheduling, moving
shard gradients back: "communication"). The first step of every configuration is left out of
the means (workers load their data and start their pools). The final parameters of every
configuration are compared bit for bit with the first's.

Configurations: one process with 1 and with 2 core threads; Ray with 1 worker x 1 thread and
2 workers x 1 thread (the target: 2 workers >= 1.6x one worker, one thread each). With
``--repeat R`` the four run in turn R times (so a change in the machine's load hits all of
them) and the medians are reported, with the range.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("one process", 1, 0), ("one process", 2, 0), ("Ray", 1, 1), ("Ray", 1, 2)]


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        "data.synthetic=true",
        f"data.n_train={args.n_train}",
        "data.n_validation=8",
        "data.n_test=8",
        f"network.hidden=[{args.hidden}]",
        f"train.batch_size={args.batch}",
    ]


def child(args: argparse.Namespace) -> None:
    """One configuration, in this process; prints one JSON line."""
    import numpy as np
    from delgrad import pipeline
    from delgrad.config import DistributedConfig, load_config
    from delgrad.train import Trainer

    cfg = load_config(ROOT / "pipelines" / "shd.toml", overrides(args))
    data_dir = Path(args.data) / "data"
    train, _, n_in = pipeline.load_split(data_dir, "train")
    net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
    executor = None
    if args.workers:
        import ray
        from delgrad.distributed import RayShards

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
        read = functools.partial(pipeline.training_split, data_dir, cfg)
        executor = RayShards(DistributedConfig(workers=args.workers), net, cfg.train, train, read)
    trainer = Trainer(net, cfg.train, shards=cfg.distributed.shards, executor=executor)
    perm = np.random.default_rng(0).permutation(len(train)).astype(np.uint32)
    walls, comms, cpu_max = [], [], []
    for k in range(args.steps):
        select = perm[k * args.batch : (k + 1) * args.batch]
        times = executor.times if executor else None
        before = (times.wall - times.compute, times.cpu_max) if times else (0.0, 0.0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        trainer.step(train, select, 1.0)
        walls.append(time.perf_counter() - t0)
        if times:
            comms.append(times.wall - times.compute - before[0])
            cpu_max.append(times.cpu_max - before[1])
        else:
            cpu_max.append(time.process_time() - cpu0)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in net.params())).hexdigest()[:16]
    events = trainer.last_step[1]
    if executor:
        executor.close()
    print(json.dumps({"walls": walls, "comms": comms, "cpu_max": cpu_max, "digest": digest, "events_last": events}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1, help="rounds of all configurations (medians reported)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    from delgrad import pipeline
    from delgrad.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "pipelines" / "shd.toml", overrides(args))
        pipeline.encode(cfg, Path(tmp))
        print(
            f"data_parallel: SHD stand-in, 700-{args.hidden}(recurrent)-20, batch {args.batch}, 8 shards, "
            f"{args.steps} steps (first left out); {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"
        )
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeat):
            for name, threads, workers in CONFIGS:
                env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
                command = [sys.executable, __file__, "--child", "--data", tmp, "--workers", str(workers)]
                command += ["--hidden", str(args.hidden), "--batch", str(args.batch), "--steps", str(args.steps)]
                command += ["--n-train", str(args.n_train)]
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                label = f"{name}, {threads} thread(s)" if not workers else f"Ray, {workers} worker(s) x 1 thread"
                runs.setdefault(label, []).append(json.loads(out.stdout.strip().splitlines()[-1]))

        def mean(values: list[float]) -> float:
            return sum(values[1:]) / (len(values) - 1)

        labels = list(runs)
        walls = {label: sorted(mean(r["walls"]) for r in runs[label]) for label in labels}
        median = {label: w[len(w) // 2] for label, w in walls.items()}
        digests = {r["digest"] for rs in runs.values() for r in rs}
        base, ray_one = median[labels[0]], median[labels[2]]
        for label in labels:
            comms = sorted(mean(r["comms"]) for r in runs[label] if r["comms"])
            comm = f"{1e3 * comms[len(comms) // 2]:6.1f} ms" if comms else "     -   "
            low, high = walls[label][0], walls[label][-1]
            print(
                f"  {label:32s} {1e3 * median[label]:7.1f} ms/step (range {1e3 * low:.0f}-{1e3 * high:.0f})  "
                f"communication {comm}  x{base / median[label]:4.2f} vs one process 1 thread  "
                f"x{ray_one / median[label]:4.2f} vs 1 Ray worker"
            )
        # Load-independent view: the busiest worker's CPU time plus communication is what a
        # step would take on cores of its own (an estimate: CPU time still feels shared caches).
        estimate = {}
        for label in labels[2:]:
            cpu = sorted(mean(r["cpu_max"]) + mean(r["comms"]) for r in runs[label])
            estimate[label] = cpu[len(cpu) // 2]
            print(f"  {label:32s} busiest worker's CPU time + communication: {1e3 * estimate[label]:7.1f} ms/step")
        one, two = estimate[labels[2]], estimate[labels[3]]
        print(f"  estimate for idle cores from those CPU times: 2 workers x{one / two:4.2f} vs 1 worker")
        print(f"  final parameters: {'the same bits in every run' if len(digests) == 1 else 'DIFFERENT BITS'}")
        print(f"  synaptic events of the last step: {runs[labels[0]][0]['events_last']:,}")


if __name__ == "__main__":
    main()
