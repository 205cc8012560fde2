"""The hardware loop as a pipeline runs it: one ``[hardware]`` table in, a ready
:class:`HardwareLoop` out, and the record of what the hardware measured.

:func:`hardware_session` checks the endpoint with a short ``hello`` before any training (a
dead endpoint is one clear error within seconds, naming it and how to start a daemon). With
no ``endpoint`` it starts its own emulator daemon on a free loopback port, restarts that
daemon on the same endpoint when it dies (training goes on bit-identically: runs are seeded
and the client re-sends its configuration), and stops it by its pid at the end.

:func:`write_hardware_record` measures the trained network on the hardware and writes
``hardware.json`` and the test set's recorded spikes (``spikes_test_hw.parquet``).

The ``[hardware]`` table is :class:`delgrad.config.HardwareConfig` (its keys, types, defaults).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from delgrad.config import HardwareConfig
from delgrad.hardware.client import HELLO_TIMEOUT, HardwareClient, HardwareError, HardwareUnavailable
from delgrad.hardware.daemon import DaemonProcess, start_daemon
from delgrad.hardware.loop import HardwareLoop

log = logging.getLogger("delgrad.hardware")


class OwnDaemon:
    """A daemon the pipeline started: restarted on the same endpoint when it dies.

    :meth:`watch` is the client's ``watch`` callback: it returns True after a restart so that
    the pending request is re-sent at once, and raises :class:`HardwareError` once the daemon
    died more than ``max_restarts`` times.
    """

    def __init__(self, start: Any, max_restarts: int) -> None:
        self._start = start
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self.process: DaemonProcess = start("tcp://127.0.0.1:*")
        self.endpoint = self.process.endpoint
        self._lock = threading.Lock()

    def watch(self) -> bool:
        with self._lock:
            if self.process.alive():
                return False
            code = self.process.process.poll()
            if self.restarts >= self.max_restarts:
                raise HardwareError(
                    "daemon_died",
                    f"the pipeline's hw_daemon at {self.endpoint} died (exit code {code}) after "
                    f"{self.restarts} restarts; see its log {self.process.log_path}",
                )
            self.restarts += 1
            log.warning(
                "hw_daemon at %s died (exit code %s); restarting it (%d/%d)",
                self.endpoint,
                code,
                self.restarts,
                self.max_restarts,
            )
            self.process = self._start(self.endpoint)
            return True

    def stop(self) -> None:
        self.process.stop()


def check_endpoint(hw: HardwareConfig | None) -> None:
    """The short ``hello`` a pipeline sends before anything else when ``[hardware]`` names an
    endpoint: raises :class:`HardwareUnavailable` (one line) if nothing answers there."""
    if hw is None or not hw.enabled:
        return
    if hw.endpoint:
        with HardwareClient(hw.endpoint, retries=0) as client:
            client.hello(timeout=HELLO_TIMEOUT)


def daemon_args(hw: HardwareConfig) -> list[str]:
    """Command-line flags for a daemon started from a ``[hardware]`` table."""
    profile = hw.chip_profile
    if Path(profile).is_file():  # the daemon runs in another directory: pass the file absolutely
        profile = str(Path(profile).resolve())
    args = ["--chip-profile", profile]
    if hw.ideal:
        args.append("--ideal")
    if hw.keep_awake:
        args.append("--keep-awake")
    return args


@contextmanager
def hardware_session(hw: HardwareConfig, run_dir: Path, *, seed: int = 0) -> Iterator[HardwareLoop]:
    """A :class:`HardwareLoop` for a ``[hardware]`` table (see the module docstring).

    Raises :class:`HardwareUnavailable` (one line: the endpoint and how to start a daemon)
    within :data:`HELLO_TIMEOUT` seconds when nothing answers at ``endpoint``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    own: OwnDaemon | None = None
    endpoint = hw.endpoint
    if not endpoint:

        def start(bind: str) -> DaemonProcess:
            return start_daemon(
                bind,
                backend=hw.backend,
                chip_seed=hw.chip_seed,
                args=daemon_args(hw),
                log_path=run_dir / "hw_daemon.log",
                cpus=hw.daemon_cpus,
            )

        own = OwnDaemon(start, hw.max_restarts)
        endpoint = own.endpoint
    try:
        with HardwareClient(
            endpoint,
            timeout=hw.timeout,
            retries=hw.retries,
            watch=own.watch if own is not None else None,
        ) as client:
            client.hello(timeout=HELLO_TIMEOUT)  # the check: HardwareUnavailable if nobody answers
            loop = HardwareLoop(
                client,
                seed=hw.seed if hw.seed is not None else int(seed),
                weight_scale=hw.weight_scale,
                input_replication=hw.input_replication,
                max_batch=hw.max_batch,
                project=hw.project_weights,
            )
            loop.daemon = own
            yield loop
    finally:
        if own is not None:
            own.stop()


def write_hardware_record(
    run_dir: Path, loop: HardwareLoop, net: Any, splits: dict[str, Any], loss: Any, hw: HardwareConfig
) -> dict[str, Any]:
    """Measures ``net`` on the hardware on every split and writes ``hardware.json`` (what the
    report quotes as the in-the-loop result) and ``spikes_test_hw.parquet`` (the test split's
    recorded spikes of every layer: ``sample``, ``neuron``, ``time``, ``layer``)."""
    from delgrad.rundir import atomic_write, atomic_write_parquet
    from delgrad.train import evaluate

    run_dir = Path(run_dir)
    accuracy = {}
    for name, split in splits.items():
        r = evaluate(net, split, loss, loop)
        accuracy[name] = {"acc": r.accuracy, "loss": r.loss}
        if name == "test":
            tables = [r.trace.spikes(layer, with_layer=True) for layer in range(r.trace.n_layers)]
            atomic_write_parquet(run_dir / "spikes_test_hw.parquet", pa.Table.from_batches(tables))
    configured = loop.configure(net)
    own = loop.daemon
    record = {
        "endpoint": loop.client.endpoint,
        "hardware": dataclasses.asdict(hw),
        "backend": loop.client.hello(),
        "config_id": configured.config_id,
        "realised": loop.client.config_info(configured.config_id).get("report"),
        "counters": loop.counters,
        "client": loop.client.stats,
        "daemon_restarts": own.restarts if own is not None else None,
        "accuracy": accuracy,
    }
    atomic_write(run_dir / "hardware.json", json.dumps(record, indent=1, default=float))
    return record


__all__ = [
    "HardwareUnavailable",
    "OwnDaemon",
    "check_endpoint",
    "daemon_args",
    "hardware_session",
    "write_hardware_record",
]
