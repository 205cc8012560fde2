"""hw_daemon crashes and restarts under a client; CURVE authentication."""

from __future__ import annotations

import threading
import time

import delgrad
import numpy as np
import pyarrow as pa
import pytest
import zmq
import zmq.auth
from delgrad.hardware import HardwareClient, HardwareTimeout, ipc_endpoint, spike_batch, start_daemon
from delgrad.hardware import protocol as P

NEURON = delgrad.Neuron(tau_m=1.0, tau_s=1.0, theta=2.6)


def small_net() -> delgrad.Network:
    return delgrad.Network.random(
        [8, 10, 3], NEURON, delay_kind="axonal", weight_mean=(1.5, 0.5), delay_range=(0.0, 0.3), seed=4
    )


def inputs(n: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return spike_batch(np.repeat(np.arange(n), 8), np.tile(np.arange(8), n), rng.uniform(0, 2, 8 * n))


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_sigkill_mid_sequence_client_reconnects_and_continues(transport, tmp_path):
    bind = "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint()
    d = start_daemon(bind, chip_seed=3, log_path=tmp_path / "first.log")
    endpoint = d.endpoint  # the restarted daemon binds the very same endpoint (port / path)
    restarted: list = []
    try:
        with HardwareClient(endpoint, timeout=0.5, retries=10) as c:
            cid, _ = c.configure(small_net())
            before = [c.run(cid, inputs(6, k), 6, seed=k).spikes for k in range(3)]
            d.kill()  # SIGKILL by pid: no clean shutdown, config store and reply cache gone
            assert not d.alive()

            def restart() -> None:
                time.sleep(1.0)  # the client's next request times out at least once meanwhile
                restarted.append(start_daemon(endpoint, chip_seed=3, log_path=tmp_path / "second.log"))

            t = threading.Thread(target=restart)
            t.start()
            after = [c.run(cid, inputs(6, k), 6, seed=k).spikes for k in range(3)]
            t.join(timeout=30)
            assert c.stats["reconnects"] >= 1  # timed out on the dead daemon, fresh socket
            assert c.stats["reconfigures"] == 1  # restored the lost config, same id
            for b, a in zip(before, after):
                assert [x.equals(y) for x, y in zip(b, a)] == [True, True]
            assert c.status()["counters"]["runs"] == 3
    finally:
        d.stop()
        for r in restarted:
            assert r.stop() == 0


@pytest.fixture(scope="module")
def curve_daemon(tmp_path_factory):
    keys = tmp_path_factory.mktemp("curve")
    for name in ("server", "client", "intruder"):
        zmq.auth.create_certificates(keys, name)
    allowed = keys / "allowed"
    allowed.mkdir()
    (keys / "client.key").rename(allowed / "client.key")
    d = start_daemon(
        "tcp://127.0.0.1:*",
        log_path=keys / "daemon.log",
        args=["--curve-secret", str(keys / "server.key_secret"), "--curve-allow", str(allowed)],
    )
    yield d, keys
    assert d.stop() == 0


def test_curve_authorised_client_is_served(curve_daemon):
    d, keys = curve_daemon
    assert d.ready["curve"] is True
    with HardwareClient(
        d.endpoint, timeout=5, retries=0, server_key=keys / "server.key", client_key=keys / "client.key_secret"
    ) as c:
        assert c.hello()["backend"] == "emulator"
        cid, _ = c.configure(small_net())
        spikes, _ = c.run(cid, inputs(3), 3, seed=0)
        assert len(spikes) == 2


@pytest.mark.parametrize("who", ["wrong key", "no curve"])
def test_curve_unauthorised_client_gets_no_reply(curve_daemon, who):
    d, keys = curve_daemon
    kw = {}
    if who == "wrong key":
        kw = {"server_key": keys / "server.key", "client_key": keys / "intruder.key_secret"}
    with HardwareClient(d.endpoint, timeout=0.7, retries=1, **kw) as c:
        with pytest.raises(HardwareTimeout):
            c.status()
    # A raw plaintext DEALER gets nothing either, and the daemon still serves the right key.
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(d.endpoint)
    # Once the daemon has refused the handshake this socket has no peer, and a blocking send
    # would wait for one for ever: a message that cannot even be queued is "nothing" too.
    try:
        s.send(P.encode_header({"v": 1, "op": "status", "id": "sneak"}), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    assert not s.poll(500)
    s.close()
    with HardwareClient(
        d.endpoint, timeout=5, retries=0, server_key=keys / "server.key", client_key=keys / "client.key_secret"
    ) as c:
        assert c.status()["counters"]["requests"] >= 1
