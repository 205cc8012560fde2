"""Hardware-loop latency and throughput: hw_daemon over tcp loopback vs the same emulator in process.

    python benchmarks/hw_latency.py [--requests 2000] [--big-samples 50000] [--keep-awake] [--json out.json]

Latency: one 40-sample Yin-Yang-shaped batch (4 input channels x 5 replication = 20 inputs,
30 hidden, 3 outputs, axonal delays) per request; p50/p99 over ``--requests`` requests for
(a) the bare core forward on the realised network, (b) the emulator backend in process (a + the
modelled non-idealities), (c) ``run`` through the daemon (b + protocol + ZeroMQ tcp loopback),
(d) ``status`` through the daemon (transport and protocol only); (c) and (d) again with the
daemon pinned to the last CPU (``--cpus``), and (c) with a client that busy-waits. Throughput: one large batch,
spike events (played input events + recorded events) per second, in process and through the
daemon. Every request uses a fresh noise seed, so nothing is served from the reply cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import delgrad  # noqa: E402
from delgrad.hardware import HardwareClient, replicate_inputs, spike_batch, start_daemon  # noqa: E402

from hw_daemon.backends.emulator import EmulatorBackend  # noqa: E402

CHANNELS, REPLICATION, HIDDEN, OUT = 4, 5, 30, 3


def yinyang_batch(n_samples: int, seed: int) -> pa.RecordBatch:
    """Yin-Yang-shaped input: points (x, y) in the unit square, channels (x, y, 1-x, 1-y) as
    spike times in [0, 2] tau (the spike counts and time ranges of the task, not its labels)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n_samples, 2))
    t = np.column_stack([xy, 1 - xy]).ravel() * 2.0
    return spike_batch(np.repeat(np.arange(n_samples), CHANNELS), np.tile(np.arange(CHANNELS), n_samples), t)


def network() -> delgrad.Network:
    neuron = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)
    return delgrad.Network.random(
        [CHANNELS * REPLICATION, HIDDEN, OUT],
        neuron,
        delay_kind="axonal",
        weight_mean=(1.5, 0.5),
        delay_range=(0.0, 0.3),
        seed=1,
    )


def timed_interleaved(fns: dict, n: int) -> dict[str, np.ndarray]:
    """Per-call wall times of every function, called in turn within each iteration, so that
    load changes on a shared machine hit all of them alike."""
    out = {k: np.empty(n) for k in fns}
    for i in range(n):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(i)
            out[k][i] = time.perf_counter() - t0
    return out


def summary(name: str, t: np.ndarray) -> dict:
    us = t * 1e6
    row = {
        "name": name,
        "n": int(t.size),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "min_us": float(us.min()),
    }
    print(
        f"  {name:<40} p50 {row['p50_us']:9.0f} us   p99 {row['p99_us']:9.0f} us   "
        f"mean {row['mean_us']:9.0f} us   min {row['min_us']:8.0f} us   (n={row['n']})"
    )
    return row


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "delgrad": delgrad.__version__,
        "pyarrow": pa.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--big-samples", type=int, default=50_000)
    ap.add_argument("--big-repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--keep-awake",
        action="store_true",
        help="start the daemon with --keep-awake (idle-priority spinners on every CPU, "
        "so no vCPU halts: in-process and daemon measurements alike)",
    )
    args = ap.parse_args()

    info = machine()
    info["keep_awake"] = args.keep_awake
    print("hw_latency: hw_daemon (emulator backend) over tcp loopback vs in process")
    for k, v in info.items():
        print(f"  {k}: {v}")

    net, S, N = network(), args.samples, args.requests
    x = yinyang_batch(S, seed=0)
    emu = EmulatorBackend(chip_seed=0)
    cfg = emu.configure(net, input_replication=REPLICATION)
    x_rep = replicate_inputs(x, CHANNELS, REPLICATION)
    results: dict = {"machine": info, "latency": [], "throughput": []}

    logdir = tempfile.TemporaryDirectory(prefix="hw_latency-")
    d = start_daemon(
        "tcp://127.0.0.1:*",
        chip_seed=0,
        args=["--log-level", "WARNING", *(["--keep-awake"] if args.keep_awake else [])],
        log_path=Path(logdir.name) / "daemon.log",
    )
    # A second daemon pinned to the last CPU (--cpus): on a small machine the scheduler otherwise
    # runs daemon and client by turns on the same core, each evicting the other's caches.
    cpu = max(os.sched_getaffinity(0))
    d_pin = start_daemon(
        "tcp://127.0.0.1:*",
        chip_seed=0,
        args=["--log-level", "WARNING"],
        log_path=Path(logdir.name) / "daemon-pinned.log",
        cpus=[cpu],
    )
    try:
        with (
            HardwareClient(d.endpoint, timeout=60, retries=0) as c,
            HardwareClient(d.endpoint, timeout=60, retries=0, spin=0.02) as c_spin,
            HardwareClient(d_pin.endpoint, timeout=60, retries=0) as c_pin,
        ):
            cid, realised = c.configure(net, input_replication=REPLICATION)
            assert c_spin.configure(net, input_replication=REPLICATION).config_id == cid
            assert c_pin.configure(net, input_replication=REPLICATION).config_id == cid
            spikes, health = c.run(cid, x, S, seed=0)
            ref = emu.run(cfg, x, S, seed=0)
            assert all(a.equals(b) for a, b in zip(spikes, ref.layers)), "daemon != in-process emulator"
            print(
                f"\nlatency: batch of {S} samples, {x.num_rows} channel spikes -> "
                f"{health['played_events']} input events, recorded {health['recorded_events']} "
                f"(sizes {net.sizes}, axonal delays, replication {REPLICATION}); daemon {d.endpoint}"
            )
            inside: list[float] = []

            def daemon_run(i: int) -> None:
                inside.append(c.run(cid, x, S, seed=10**9 + i).health["wall_time_s"])

            fns = {
                "core forward (realised net, in process)": lambda i: cfg.network.forward(x_rep, S),
                "emulator run (in process)": lambda i: emu.run(cfg, x, S, seed=i),
                "daemon run (tcp loopback round trip)": daemon_run,
                "daemon status (transport + protocol)": lambda i: c.status(),
                "daemon run, client spinning (spin=0.02)": lambda i: c_spin.run(cid, x, S, seed=2 * 10**9 + i),
                f"daemon run, daemon pinned (--cpus {cpu})": lambda i: c_pin.run(cid, x, S, seed=3 * 10**9 + i),
                f"daemon status, daemon pinned (--cpus {cpu})": lambda i: c_pin.status(),
            }
            timed_interleaved(fns, min(200, N))  # warm-up: caches, rayon pool, tcp path
            inside.clear()
            busy0 = c.status()["busy_s"]
            times = timed_interleaved(fns, N)
            busy = (c.status()["busy_s"] - busy0) / (3 * N)  # runs and status calls alike
            rows = [summary(k, t) for k, t in times.items()]
            rows.append(summary("  of which emulator inside the daemon", np.asarray(inside)))
            print(f"  daemon recv->send time per request (runs and status averaged): {busy * 1e6:.0f} us")
            results["latency"] = rows
            for name, k in (("daemon", 2), ("daemon pinned", 5), ("daemon, spinning client", 4)):
                add50 = rows[k]["p50_us"] - rows[1]["p50_us"]
                add99 = rows[k]["p99_us"] - rows[1]["p99_us"]
                print(f"  {name} adds over the in-process emulator: p50 {add50:.0f} us, p99 {add99:.0f} us")

            # Back to back: a client that does nothing but runs (an evaluation sweep), so that
            # neither side's caches are cold from the other measurements.
            print("\n  back to back (each measurement alone, in turn):")
            b2b = {}
            for name, f in (
                ("emulator run (in process)", lambda i: emu.run(cfg, x, S, seed=i)),
                ("daemon run (tcp loopback)", lambda i: c.run(cid, x, S, seed=4 * 10**9 + i)),
                (f"daemon run, daemon pinned (--cpus {cpu})", lambda i: c_pin.run(cid, x, S, seed=5 * 10**9 + i)),
            ):
                b2b[name] = summary(name, timed_interleaved({name: f}, N)[name][min(200, N // 4) :])
            names = list(b2b)
            for k in names[1:]:
                print(f"  {k} adds: p50 {b2b[k]['p50_us'] - b2b[names[0]]['p50_us']:.0f} us")
            results["back_to_back"] = list(b2b.values())

            B = args.big_samples
            xb = yinyang_batch(B, seed=1)
            print(
                f"\nthroughput: one batch of {B} samples ({xb.num_rows} channel spikes, "
                f"{xb.num_rows * REPLICATION} input events), best and median of {args.big_repeats}"
            )
            for name, f in (
                ("emulator run (in process)", lambda k: emu.run(cfg, xb, B, seed=k)),
                ("daemon run (tcp loopback)", lambda k: c.run(cid, xb, B, seed=k + 7)),
            ):
                times, events = [], 0
                for k in range(args.big_repeats):
                    t0 = time.perf_counter()
                    out = f(k)
                    times.append(time.perf_counter() - t0)
                    h = out.health
                    events = h["played_events"] + sum(h["recorded_events"])
                best, med = min(times), float(np.median(times))
                row = {
                    "name": name,
                    "samples": B,
                    "events": events,
                    "best_s": best,
                    "median_s": med,
                    "events_per_s_best": events / best,
                    "events_per_s_median": events / med,
                }
                results["throughput"].append(row)
                print(
                    f"  {name:<28} {events} events  best {best * 1e3:8.1f} ms  "
                    f"({events / best / 1e6:6.2f} M events/s)   median {med * 1e3:8.1f} ms "
                    f"({events / med / 1e6:6.2f} M events/s)"
                )
    finally:
        d.stop()
        d_pin.stop()
        logdir.cleanup()
    info["loadavg_end"] = os.getloadavg()
    print(
        f"\n  load average start {info['loadavg_start']}, end {info['loadavg_end']} "
        "(other processes on this machine share its CPUs)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
