"""Multi-spike EventProp throughput through the Python API on an SHD-sized problem.

    python benchmarks/shd_throughput.py [--batch 64] [--spikes 5000] [--repeat 5]

The same problem as ``rust_core/examples/shd_throughput.rs`` (which times the core alone): 700
input channels with ``--spikes`` spikes per sample, channel and time uniform over a 1 s trial
(SHD itself is not on this machine), a 700-256-20 network — multi-spike LIF hidden layer with
synaptic delays U(0, 150) ms, tau_m 20 ms, tau_s 5 ms, theta 1 — and a leaky-integrator readout
(exponentially weighted mean voltage, tau_w = 1 s) with softmax cross-entropy. One step is what
``delgrad.multi.fit_multi`` does per batch: ``MultiNetwork.forward`` on a batch selected from a
``SpikeSet``, the loss, ``MultiNetwork.backward`` (EventProp, all weights and delays).

A synaptic event is one spike arriving at one target: per sample ``input spikes x 256 + hidden
spikes x 20``. The rate is those events over the wall time of the step (each event counted
once, not once per pass). Peak RSS is this process's.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import delgrad  # noqa: E402
from delgrad import _core  # noqa: E402
from delgrad.multi import MultiNetwork, Readout  # noqa: E402
from delgrad.network import Layer  # noqa: E402

N_IN, N_HIDDEN, N_OUT, T_TRIAL = 700, 256, 20, 1000.0


def inputs(n_samples: int, per_sample: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    sample = np.repeat(np.arange(n_samples, dtype=np.uint32), per_sample)
    neuron = rng.integers(0, N_IN, n_samples * per_sample).astype(np.uint32)
    t = rng.uniform(0.0, T_TRIAL, n_samples * per_sample)
    order = np.lexsort((t, sample))
    return pa.record_batch(
        [pa.array(sample[order]), pa.array(neuron[order]), pa.array(t[order])], names=["sample", "neuron", "time"]
    )


def network(seed: int) -> MultiNetwork:
    rng = np.random.default_rng(seed)
    half = np.sqrt(3.0) * 0.02
    w1 = rng.uniform(0.0015 - half, 0.0015 + half, (N_HIDDEN, N_IN))
    d1 = rng.uniform(0.0, 150.0, (N_HIDDEN, N_IN))
    w2 = rng.uniform(-0.05, 0.05, (N_OUT, N_HIDDEN))
    neuron = delgrad.Neuron(20.0, 5.0, 1.0, mode="multi", t_end=T_TRIAL)
    readout = Readout(
        Layer(w2, np.zeros(0), "none"), delgrad.Neuron(20.0, 5.0, 1.0, mode="multi"), "exp_mean", T_TRIAL, T_TRIAL
    )
    return MultiNetwork([Layer(w1, d1, "synaptic")], neuron, readout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--spikes", type=int, default=5000, help="input spikes per sample")
    ap.add_argument("--batches", type=int, default=4, help="distinct batches in the split")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps (after one warm-up step)")
    args = ap.parse_args()

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, load {os.getloadavg()}"
    )
    n = args.batch * args.batches
    split = delgrad.SpikeSet(inputs(n, args.spikes, seed=1), n)
    labels = np.arange(n) % N_OUT
    net = network(seed=2)
    print(
        f"SHD-sized EventProp step through the Python API: batch {args.batch}, {args.spikes} input "
        f"spikes/sample, {N_IN}-{N_HIDDEN}-{N_OUT}, synaptic delays U(0, 150) ms"
    )

    def step(k: int) -> tuple[float, float, int]:
        sel = np.arange((k % args.batches) * args.batch, (k % args.batches + 1) * args.batch, dtype=np.uint32)
        t0 = time.perf_counter()
        out = net.forward(split, select=sel)
        loss, dy, _ = _core.readout_cross_entropy(out.values, labels[sel])
        net.backward(split, out, dy, select=sel)
        wall = time.perf_counter() - t0
        hidden = out.trace.spikes(0).num_rows
        events = args.batch * args.spikes * N_HIDDEN + hidden * N_OUT
        return wall, loss, events

    step(0)
    rates = []
    for k in range(args.repeat):
        wall, loss, events = step(k + 1)
        rates.append(events / wall)
        print(
            f"  step {k}: {wall:.3f} s, loss {loss:.4f}, {events / args.batch / 1e6:.2f} M synaptic events "
            f"per sample, {events / wall / 1e6:.1f} M synaptic events/s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"median {np.median(rates) / 1e6:.1f} M, best {max(rates) / 1e6:.1f} M synaptic events/s; "
        f"peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
