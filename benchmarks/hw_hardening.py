"""hw_daemon under abuse, measured on a real daemon process (loopback tcp).

1. Decompression bomb: a configure request whose weights frame is ZSTD-compressed (26 M rows,
   480 MB of zeros, ~50 KB on the wire): the reply, and the daemon's peak RSS growth.
2. A client that stops reading: 5 runs of ~26 MB replies, never read, against a cap of 64 MB
   per client (``--max-reply-bytes``); RSS growth and how many replies were answered
   ``slow_client``.
3. Fairness: one client runs 20 M-event batches (1 M samples x 4 channels x 5 replicas) back
   to back while another sends training-sized runs (40 samples) and hellos; latency
   percentiles of the well-behaved client.
4. Fuzzing: random requests (header fields, body frames) at the daemon; crashes (the process
   dies) and ``internal`` replies.

Usage: python benchmarks/hw_hardening.py [--seconds 60] [--fuzz 3000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import threading
import time

import delgrad
import numpy as np
import pyarrow as pa
import zmq
from delgrad.hardware import HardwareClient, spike_batch, start_daemon
from delgrad.hardware import protocol as P

MB = 1 << 20


def net() -> delgrad.Network:
    return delgrad.Network.random(
        [20, 30, 3], delgrad.Neuron(1.0, 1.0, 2.6), delay_kind="axonal", weight_mean=(0.6, 0.6),
        weight_std=(0.4, 0.4), delay_range=(2.5, 3.0), seed=1,
    )  # fmt: skip


def inputs(n: int, seed: int = 0) -> pa.RecordBatch:
    t = 0.15 + 1.85 * np.random.default_rng(seed).uniform(0, 1, (n, 4))
    return spike_batch(np.repeat(np.arange(n), 4), np.tile(np.arange(4), n), t.ravel())


def raw(endpoint: str, frames: list, timeout: float = 60.0) -> dict:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        if not s.poll(timeout * 1000):
            return {"ok": False, "code": "no reply"}
        return json.loads(s.recv_multipart()[0])
    finally:
        s.close()


def status(endpoint: str) -> dict:
    with HardwareClient(endpoint, timeout=60, retries=0) as c:
        return c.status()


def bomb(endpoint: str) -> None:
    n = 26_000_000
    zeros = pa.array(np.zeros(n, np.uint32))
    table = pa.RecordBatch.from_arrays(
        [pa.array(np.zeros(n, np.uint16)), zeros, zeros, pa.array(np.zeros(n))], schema=P.WEIGHT_SCHEMA
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write(table)
    frame = sink.getvalue()
    header = P.encode_header(
        {"v": 1, "op": "configure", "id": "bomb", "neuron": {"tau_m": 1.0, "tau_s": 1.0, "theta": 2.6},
         "layers": [{"n_in": 4000, "n_out": 4000, "delay_kind": "none"}]}
    )  # fmt: skip
    delays = P.encode_table(pa.RecordBatch.from_pylist([], schema=P.DELAY_SCHEMA))
    before = status(endpoint)["memory"]
    reply = raw(endpoint, [header, frame, delays])
    after = status(endpoint)["memory"]
    growth = (after["peak_rss_bytes"] - before["peak_rss_bytes"]) / MB
    print(
        f"1. bomb: {len(frame) / 1e3:.1f} KB frame declaring {table.nbytes / MB:.0f} MB -> [{reply.get('code')}] "
        f"{reply.get('message')}; daemon peak RSS growth {growth:.1f} MB"
    )


def slow_client(endpoint: str) -> None:
    with HardwareClient(endpoint, timeout=60, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
    before = status(endpoint)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvhwm = 1
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(endpoint)
    frame = P.encode_spikes(inputs(50_000))
    for k in range(5):
        hdr = {"v": 1, "op": "run", "id": f"slow-{k}", "config_id": cid, "n_samples": 50_000, "seed": k}
        s.send_multipart([P.encode_header(hdr), frame])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = status(endpoint)
        if st["counters"].get("runs", 0) - before["counters"].get("runs", 0) >= 5:
            break
        time.sleep(0.2)
    slow = st["errors"].get(P.SLOW_CLIENT, 0) - before["errors"].get(P.SLOW_CLIENT, 0)
    growth = (st["memory"]["rss_bytes"] - before["memory"]["rss_bytes"]) / MB
    print(
        f"2. unread replies: 5 runs of ~26 MB replies, {slow} answered slow_client; daemon RSS growth {growth:.1f} MB"
    )
    s.close()
    ctx.term()


def fairness(endpoint: str, seconds: float) -> None:
    with HardwareClient(endpoint, timeout=300, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
    stop = threading.Event()
    big_runs: list[float] = []
    n_big = 1_000_000  # x 4 channels x 5 replicas = 20 M played events
    big = inputs(n_big, seed=1)

    def hog() -> None:
        with HardwareClient(endpoint, timeout=600, retries=0) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                _, health = c.run(cid, big, n_big, seed=len(big_runs))
                big_runs.append(time.perf_counter() - t0)
                assert health["played_events"] == 20_000_000

    t = threading.Thread(target=hog, daemon=True)
    t.start()
    time.sleep(1.0)
    lat: list[float] = []
    small = inputs(40, seed=2)
    with HardwareClient(endpoint, timeout=120, retries=0) as c:
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            if k % 2:
                c.hello(timeout=30.0)  # the latency itself, not the 2 s endpoint check
            else:
                c.run(cid, small, 40, seed=k)
            lat.append(time.perf_counter() - t0)
            k += 1
            time.sleep(0.05)
    stop.set()
    t.join()
    a = np.array(lat)
    print(
        f"3. fairness: {len(big_runs)} runs of 20 M events meanwhile ({np.mean(big_runs):.1f} s each); "
        f"well-behaved client {len(a)} requests: p50 {1e3 * np.percentile(a, 50):.0f} ms, "
        f"p99 {1e3 * np.percentile(a, 99):.0f} ms, max {1e3 * a.max():.0f} ms"
    )


def fuzz(endpoint: str, n: int, daemon) -> None:
    rng = np.random.default_rng(0)
    with HardwareClient(endpoint, timeout=60, retries=0) as c:
        cid, _ = c.configure(net(), input_replication=5)
    good = P.encode_spikes(inputs(3))
    weights = P.encode_network(net())[1][0]
    values = [0, -1, 1, 2**63, 2**64, 5e-324, 1e308, -1e308, 0.5, "x", "", None, True, [], [1, 2], {"a": 1}, cid]
    keys = ["config_id", "n_samples", "seed", "duration", "weight_scale", "input_replication", "layers", "neuron",
            "v", "id", "session", "op"]  # fmt: skip
    ops = ["hello", "configure", "run", "status", "x"]
    internal = 0
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    for k in range(n):
        h = {"v": 1, "op": ops[rng.integers(len(ops))], "id": f"z{k}", "config_id": cid}
        for key in rng.choice(keys, rng.integers(0, 5)):
            h[str(key)] = values[rng.integers(len(values))]
        bodies = [good, weights, good[: rng.integers(1, len(good))], rng.bytes(int(rng.integers(0, 200)))]
        frames = [bodies[i] for i in rng.integers(0, len(bodies), rng.integers(0, 3))]
        s.send_multipart([json.dumps(h).encode(), *frames])
        if s.poll(60_000):
            reply = json.loads(s.recv_multipart()[0])
            internal += reply.get("code") == P.INTERNAL
    s.close()
    alive = daemon.alive()
    print(f"4. fuzzing: {n} random requests, daemon alive: {alive}, crashes: {0 if alive else 1}, internal: {internal}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fuzz", type=int, default=3000)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load average {os.getloadavg()}")
    d = start_daemon(args=["--log-level", "WARNING", "--max-reply-bytes", str(64 * MB)])
    try:
        bomb(d.endpoint)
        slow_client(d.endpoint)
        fairness(d.endpoint, args.seconds)
        fuzz(d.endpoint, args.fuzz, d)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
