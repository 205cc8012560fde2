"""One SHD-sized training epoch: seconds per epoch, peak memory, 1 against 2 local workers, the
per-step communication, and an estimate for a cluster.

    python benchmarks/shd_epoch.py [--hidden 512 256] [--workers 1 2] [--samples 8156]
                                   [--steps N] [--spikes 8000]

The data are the synthetic stand-in of ``pipelines/shd.toml`` (SHD is not on this machine) at
SHD's shape: ``--samples`` training samples (8156 = SHD's training file), 700 channels, 20
classes, ``--spikes`` input spikes per sample over 1 s (SHD averages about 8000). The network
and trainer are ``pipelines/shd.toml`` as shipped — the reference recipe of Mészáros et al.:
recurrent hidden layer (``--hidden``, 512 in the recipe; 256 is the size of mlGeNN's published
26.7 s/epoch), synaptic delays U(0, 150) ms, recurrent delays from 0, batch 256, 8 shards — with
``[distributed] workers`` set per configuration (1: one process, no Ray; 2: two local Ray
workers), every process with one core thread (the issue's "one thread each").

Each configuration trains in a fresh process from the same initial network on the same batches.
With ``--steps N`` only the first N batches of the epoch are trained and the epoch time is
extrapolated from their mean (printed as "extrapolated"); without it the whole epoch runs.
Printed per configuration: seconds per step and per epoch, synaptic events per second (every
input and hidden spike of the forward pass times its fan-out), peak RSS of the training process
and of each worker (the kernel's high-water mark, VmHWM), and with workers the part of a step
that is not the slowest worker's own compute ("communication": putting the parameters,
scheduling, the shard gradients coming back). The final parameters of 1 and 2 workers are
compared bit for bit.

The cluster estimate is arithmetic on those measured figures, not a measurement: a step's
compute is the one-worker step's CPU time spread evenly over W one-thread workers (shards = W),
plus the communication measured here per returned shard gradient times W, plus W shard
gradients sent over a network of ``--bandwidth`` Gbit/s to the trainer.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHD_TRAIN = 8156


def overrides(args: argparse.Namespace, hidden: int) -> list[str]:
    return [
        "data.synthetic=true",
        f"data.n_train={args.samples}",
        "data.n_validation=16",
        "data.n_test=16",
        f"data.spikes_per_sample={args.spikes}",
        f"network.hidden=[{hidden}]",
        # One training split as the trainer sees it; augmentation would double it.
        "augment.enabled=false",
    ]


def vm_hwm_mb(pid: int) -> float:
    """The peak resident set of a running process (VmHWM), in MB; NaN if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One configuration in this process; prints one JSON line."""
    import numpy as np
    from delgrad import pipeline
    from delgrad.config import DistributedConfig, load_config
    from delgrad.train import Trainer

    cfg = load_config(ROOT / "pipelines" / "shd.toml", overrides(args, args.hidden))
    data_dir = Path(args.data) / "data"
    train, _, n_in = pipeline.load_split(data_dir, "train")
    net = pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))
    executor = None
    if args.workers > 1:
        import ray
        from delgrad.distributed import RayShards

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        read = functools.partial(pipeline.training_split, data_dir, cfg)
        executor = RayShards(DistributedConfig(workers=args.workers), net, cfg.train, train, read)
    trainer = Trainer(net, cfg.train, shards=cfg.distributed.shards, executor=executor)
    batch = cfg.train.batch_size
    n_steps = math.ceil(len(train) / batch)
    steps = min(args.steps or n_steps, n_steps)
    perm = np.random.default_rng(0).permutation(len(train)).astype(np.uint32)
    walls, comms, cpus, events = [], [], [], []
    for k in range(steps):
        select = perm[k * batch : (k + 1) * batch]
        times = executor.times if executor else None
        before = (times.wall - times.compute, times.cpu_sum) if times else (0.0, 0.0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        trainer.step(train, select, 1.0)
        walls.append(time.perf_counter() - t0)
        events.append(trainer.last_step[1])
        if times:
            comms.append(times.wall - times.compute - before[0])
            cpus.append(times.cpu_sum - before[1])
        else:
            cpus.append(time.process_time() - cpu0)
        print(f"  step {k + 1}/{steps}: {walls[-1]:.1f} s", file=sys.stderr, flush=True)
    worker_rss = [vm_hwm_mb(pid) for pid in executor.pids] if executor else []
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in net.params())).hexdigest()[:16]
    grad_bytes = sum(p.nbytes for p in net.params())
    if executor:
        executor.close()
    print(
        json.dumps(
            {
                "walls": walls,
                "comms": comms,
                "cpus": cpus,
                "events": events,
                "n_steps": n_steps,
                "batch": batch,
                "shards": cfg.distributed.shards,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_rss_mb": worker_rss,
                "digest": digest,
                "grad_bytes": grad_bytes,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--samples", type=int, default=SHD_TRAIN, help="training samples (SHD: 8156)")
    p.add_argument("--steps", type=int, default=0, help="time only the first N batches (0: the whole epoch)")
    p.add_argument("--spikes", type=int, default=8000, help="input spikes per sample")
    p.add_argument("--bandwidth", type=float, default=10.0, help="Gbit/s between nodes, for the cluster estimate")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.hidden, args.workers = args.hidden[0], args.workers[0]
        child(args)
        return

    from delgrad import pipeline
    from delgrad.config import load_config

    print(
        f"shd_epoch: SHD stand-in, {args.samples} training samples x ~{args.spikes} input spikes, "
        f"pipelines/shd.toml (recurrent, batch 256, 8 shards); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        # The encoded data set does not depend on the hidden size: written once.
        pipeline.encode(load_config(ROOT / "pipelines" / "shd.toml", overrides(args, args.hidden[0])), Path(tmp))
        for hidden in args.hidden:
            results = {}
            for workers in args.workers:
                env = {**os.environ, "RAYON_NUM_THREADS": "1"}
                command = [sys.executable, __file__, "--child", "--data", tmp, "--hidden", str(hidden)]
                command += ["--workers", str(workers), "--samples", str(args.samples), "--steps", str(args.steps)]
                command += ["--spikes", str(args.spikes)]
                t0 = time.perf_counter()
                out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
                r = results[workers] = json.loads(out.stdout.strip().splitlines()[-1])
                steps = len(r["walls"])
                per_step = sum(r["walls"]) / steps
                epoch = per_step * r["n_steps"]
                how = "measured" if steps == r["n_steps"] else f"extrapolated from {steps} of {r['n_steps']} steps"
                rate = sum(r["events"]) / sum(r["walls"])
                comm = f", communication {1e3 * sum(r['comms']) / steps:.0f} ms/step" if r["comms"] else ""
                workers_rss = ""
                if r["worker_rss_mb"]:
                    workers_rss = ", workers " + " / ".join(f"{m:.0f}" for m in r["worker_rss_mb"])
                label = "1 process x 1 thread" if workers == 1 else f"{workers} Ray workers x 1 thread"
                print(
                    f"  700-{hidden}(rec)-20, {label}: {per_step:.1f} s/step, {epoch:.0f} s/epoch ({how}), "
                    f"{rate / 1e6:.1f} M synaptic events/s, CPU {sum(r['cpus']) / steps:.1f} s/step{comm}; "
                    f"peak RSS trainer {r['rss_mb']:.0f} MB{workers_rss} "
                    f"(wall of the run {time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            if len(results) > 1:
                base, *others = results.values()
                same = all(o["digest"] == base["digest"] for o in others if len(o["walls"]) == len(base["walls"]))
                print(f"  final parameters: {'the same bits' if same else 'DIFFERENT BITS'} for every worker count")
            several = [w for w in results if w > 1]
            if several:
                rw = results[several[0]]
                per_step = {w: sum(r["walls"]) / len(r["walls"]) for w, r in results.items()}
                if 1 in results:
                    speedup = per_step[1] / per_step[several[0]]
                    print(f"  {several[0]} workers against 1 process: x{speedup:.2f} per step")
                # The step's CPU time in all: one process's, or the workers' summed.
                r1 = results.get(1, rw)
                cpu_step = sum(r1["cpus"]) / len(r1["cpus"])
                # Estimate for a cluster of W one-thread workers from the measured figures.
                comm_per_shard = (sum(rw["comms"]) / len(rw["comms"])) / rw["shards"]
                net_per_shard = rw["grad_bytes"] * 8 / (args.bandwidth * 1e9)
                for cores in (16, 64):
                    transfer = cores * (comm_per_shard + net_per_shard)
                    step = cpu_step / cores + transfer
                    print(
                        f"  ESTIMATE, {cores} cores ({cores} workers x 1 thread, shards = {cores}, "
                        f"{args.bandwidth:g} Gbit/s): {step:.1f} s/step, {step * r1['n_steps']:.0f} s/epoch "
                        f"(compute {cpu_step / cores:.1f} s + shard gradients {transfer:.2f} s "
                        f"per step; {rw['grad_bytes'] / 1e6:.1f} MB per shard gradient)"
                    )


if __name__ == "__main__":
    main()
