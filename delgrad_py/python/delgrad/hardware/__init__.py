"""Hardware in the loop: the client of ``hw_daemon`` and the protocol both speak.

* :class:`HardwareClient` — hello / configure / run / status with timeouts, retries (same
  request id, so never executed twice) and reconnection.
* :class:`HardwareLoop` — a trainer forward that runs on the hardware (training in the loop).
* :func:`start_daemon` / :func:`stop_daemon` — run a daemon subprocess (tests, pipelines).
* :mod:`delgrad.hardware.protocol` — frames, schemas and error codes of the wire protocol.
"""

from delgrad.hardware.client import (
    Configured,
    HardwareClient,
    HardwareError,
    HardwareTimeout,
    HardwareUnavailable,
    RunResult,
)
from delgrad.hardware.daemon import DaemonProcess, ipc_endpoint, start_daemon, stop_daemon
from delgrad.hardware.loop import HardwareLoop
from delgrad.hardware.protocol import ERROR_CODES, PROTOCOL_VERSION, ProtocolError, replicate_inputs, spike_batch

__all__ = [
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "Configured",
    "DaemonProcess",
    "HardwareClient",
    "HardwareError",
    "HardwareLoop",
    "HardwareTimeout",
    "HardwareUnavailable",
    "ProtocolError",
    "RunResult",
    "ipc_endpoint",
    "replicate_inputs",
    "spike_batch",
    "start_daemon",
    "stop_daemon",
]
