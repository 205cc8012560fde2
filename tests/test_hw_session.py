"""The hardware loop as a user meets it: a dead endpoint is one clear line within seconds, the
pipeline's own daemon is restarted after a SIGKILL and training continues bit-identically, and
the daemon starts from any directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import delgrad
import numpy as np
import pytest
from delgrad.cli import main
from delgrad.config import HardwareConfig
from delgrad.data.encoding import LatencyEncoder
from delgrad.data.yinyang import yinyang_splits
from delgrad.hardware import HardwareClient, HardwareUnavailable
from delgrad.hardware.session import hardware_session
from delgrad.train import Split, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_hello_against_a_dead_endpoint_is_quick_and_says_what_to_do():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with HardwareClient(endpoint) as c, pytest.raises(HardwareUnavailable) as e:
        c.hello()
    assert time.monotonic() - t0 < 5
    assert endpoint in e.value.message and f"delgrad-hw-daemon --bind {endpoint}" in e.value.message


def test_pipeline_with_a_dead_endpoint_fails_in_one_line_within_5_s(tmp_path, capsys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    rc = main(
        ["run", str(ROOT / "pipelines" / "yinyang_hw.toml"), "--set", f"hardware.endpoint={endpoint}", "--quiet"]
        + ["--out", str(tmp_path / "run")]
    )
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 5, elapsed
    assert err.count("\n") == 1 and endpoint in err and "delgrad-hw-daemon --bind" in err


def yinyang(n: int) -> Split:
    x, y = yinyang_splits()["train"]
    spikes, _ = LatencyEncoder(replicate=5)(x[:n])
    return Split(delgrad.SpikeSet(spikes, n), y[:n].astype(np.int64))


def train(tmp_path: Path, kill_at: int | None) -> tuple[Trainer, int, int]:
    """Three epochs of 5 batches through a session-owned daemon; optionally SIGKILL that daemon
    (from another thread, as a crash comes) before forward call ``kill_at``."""
    data = yinyang(200)
    net = delgrad.Network.random(
        [20, 30, 3], delgrad.Neuron(1.0, 1.0, 2.6), delay_kind="axonal", weight_mean=(0.6, 0.6),
        weight_std=(0.4, 0.4), delay_range=(2.5, 3.0), seed=0,
    )  # fmt: skip
    cfg = TrainConfig(epochs=3, batch_size=40, lr=[0.003, 0.003], lr_delay=[0.003, 0.003], min_slope=0.2)
    hw = HardwareConfig(chip_seed=2, timeout=20.0, retries=2)
    with hardware_session(hw, tmp_path, seed=5) as loop:
        calls = {"n": 0}
        first_pid = loop.daemon.process.pid

        def forward(net, spikes, select):
            calls["n"] += 1
            if calls["n"] == kill_at:
                threading.Thread(target=os.kill, args=(loop.daemon.process.pid, signal.SIGKILL)).start()
            return loop(net, spikes, select)

        trainer = Trainer(net, cfg, forward=forward)
        trainer.fit(data, {})
        assert calls["n"] == 15
        restarts, pid = loop.daemon.restarts, loop.daemon.process.pid
        assert loop.daemon.process.alive()
    assert (pid != first_pid) == (restarts > 0)
    return trainer, restarts, pid


def test_sigkilled_own_daemon_is_restarted_and_training_is_bit_identical(tmp_path):
    ref, ref_restarts, _ = train(tmp_path / "ref", None)
    t0 = time.monotonic()
    got, restarts, pid = train(tmp_path / "killed", 7)
    assert ref_restarts == 0 and restarts == 1
    assert time.monotonic() - t0 < 60  # noticed by the watch, not after the 20 s timeouts
    assert got.adam.t == ref.adam.t
    for a, b in zip(got.net.layers, ref.net.layers):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.delays, b.delays)
    with pytest.raises(ProcessLookupError):  # the restarted daemon was stopped with the session
        os.kill(pid, 0)


@pytest.mark.parametrize("command", [["delgrad-hw-daemon"], ["python", "-m", "hw_daemon"]])
def test_daemon_starts_from_any_directory(command, tmp_path):
    exe = [str(VENV_BIN / command[0]) if command[0] != "python" else sys.executable, *command[1:]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [*exe, "--bind", "tcp://127.0.0.1:*", "--log-level", "WARNING"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        with HardwareClient(ready["endpoint"], timeout=10, retries=0) as c:
            assert c.hello()["capabilities"]["profile"] == "delgrad"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
