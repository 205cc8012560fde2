"""Forward+backward throughput and peak memory of TTFS networks, Yin-Yang shaped.

Each configuration runs in a fresh subprocess so that its peak RSS is its own. Measured per
batch: network forward, loss on output times, and the exact backward pass (all weights and
synaptic delays), i.e. one training step without the optimiser. Two input paths:
``set``   the split is a SpikeSet and batches are selected by index (what training does);
``table`` every batch is a fresh Arrow RecordBatch (the function-level API).

Usage: python benchmarks/ttfs_throughput.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CONFIGS = [(30, 150), (30, 5000), (120, 150), (120, 5000)]


def one(hidden: int, batch: int, path: str, repeat: int) -> dict:
    import delgrad
    import numpy as np
    from delgrad.data.encoding import LatencyEncoder
    from delgrad.data.yinyang import yinyang
    from delgrad.losses import LossConfig, spike_time_loss

    x, y = yinyang(5000, 42)
    spikes, n_in = LatencyEncoder(bias_time=0.9)(x)
    neuron = delgrad.Neuron(2.0, 1.0, 1.0)
    net = delgrad.Network.random([n_in, hidden, 3], neuron, delay_kind="synaptic", seed=0)
    full = delgrad.SpikeSet(spikes, len(y))
    batches = []
    for k in range(0, 5000, batch):
        sel = np.arange(k, min(k + batch, 5000), dtype=np.uint32)
        if path == "table":
            sub = spikes.filter(np.isin(spikes.column("sample").to_numpy(), sel))
            sub = sub.set_column(0, "sample", (sub.column("sample").to_numpy() - k).astype(np.uint32))
            batches.append((sub, len(sel), None, y[sel]))
        else:
            batches.append((full, None, sel, y[sel]))
    cfg = LossConfig()

    def epoch() -> int:
        n = 0
        for sp, ns, sel, lab in batches:
            tr = net.forward(sp, ns, select=sel)
            res = spike_time_loss(tr.first_times(1), lab, cfg)
            net.backward(sp, tr, res.grad, select=sel)
            n += len(lab)
        return n

    epoch()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = epoch()
        times.append(time.perf_counter() - t0)
    best, med = min(times), sorted(times)[len(times) // 2]
    return {
        "network": f"4(+bias)-{hidden}-3 synaptic",
        "batch": batch,
        "input": path,
        "samples_per_s_median": n / med,
        "samples_per_s_best": n / best,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        h, b, p = args.child
        print(json.dumps(one(int(h), int(b), p, args.repeat)))
        return
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(
        "forward + loss + backward over the 5000-sample Yin-Yang train split, median of "
        f"{args.repeat} epochs after a warm-up; peak RSS of a fresh process"
    )
    print(f"{'network':<26}{'batch':>6}{'input':>7}{'samples/s (median)':>20}{'(best)':>11}{'peak RSS MiB':>14}")
    for h, b in CONFIGS:
        for p in ("set", "table"):
            out = subprocess.run(
                [sys.executable, __file__, "--repeat", str(args.repeat), "--child", str(h), str(b), p],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out)
            print(
                f"{r['network']:<26}{r['batch']:>6}{r['input']:>7}{r['samples_per_s_median']:>20,.0f}"
                f"{r['samples_per_s_best']:>11,.0f}{r['peak_rss_mib']:>14.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
