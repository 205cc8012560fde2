"""Ctrl-C during a long core call: the call stops and raises KeyboardInterrupt within about a
second, and the process exits cleanly. Each case runs a real pass, many seconds long if left
alone, in its own Python process, which the test interrupts with SIGINT by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SETUP = r"""
import sys, time
import numpy as np, pyarrow as pa, delgrad

def table(n, per, n_in, t_max):
    rng = np.random.default_rng(0)
    return pa.record_batch({
        "sample": np.repeat(np.arange(n, dtype=np.uint32), per),
        "neuron": rng.integers(0, n_in, n * per).astype(np.uint32),
        "time": rng.uniform(0.0, t_max, n * per),
    })

ttfs = delgrad.Neuron(2.0, 1.0, 1.0)
multi = delgrad.Neuron(1.0, 1.0, 1.0, mode="multi", t_end=1000.0)
"""

# Each case: (setup of the pass, the call). Sizes are chosen so that the call takes several
# seconds on a 2-core machine: far longer than the test waits.
CASES = {
    # Many samples: chunks on rayon's pool, the calling thread polls for signals.
    "ttfs_network_parallel": (
        "net = delgrad.Network.random([50, 200, 200, 10], ttfs, weight_mean=1.0, weight_std=0.5, seed=0)\n"
        "s = delgrad.SpikeSet(table(4000, 200, 50, 5.0), 4000)",
        "net.forward(s)",
    ),
    # A small batch (one chunk, run on the calling thread) of long samples (about 0.1 s each:
    # inhibitory weights, so every neuron scans all 20000 arrivals).
    "ttfs_layer_serial": (
        "w = np.random.default_rng(1).normal(-0.05, 0.05, (1000, 50))\nt = table(60, 20000, 50, 50.0)",
        "delgrad.layer_forward(t, w, None, ttfs, n_samples=60)",
    ),
    "multi_network": (
        "from delgrad.multi import MultiNetwork\n"
        "net = MultiNetwork.random([100, 300, 5], multi, multi, delay_kind='synaptic', t_end=1000.0)\n"
        "s = delgrad.SpikeSet(table(8000, 100, 100, 1000.0), 8000)",
        "net.forward(s)",
    ),
}

CHILD = """
{setup}
{case_setup}
print("ready", flush=True)
try:
    t0 = time.perf_counter()
    {call}
except KeyboardInterrupt:
    print(f"interrupted {{time.time():.6f}}", flush=True)
    sys.exit(0)
print(f"finished after {{time.perf_counter() - t0:.1f}} s", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_ctrl_c_stops_a_long_core_call(case):
    case_setup, call = CASES[case]
    code = CHILD.format(setup=SETUP, case_setup=case_setup, call=call)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)  # well inside the call
        sent = time.time()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err)
    words = out.split()
    assert words[0] == "interrupted", out
    latency = float(words[1]) - sent
    assert latency < 1.0, f"KeyboardInterrupt {latency:.2f} s after SIGINT"
