"""Adapter to a real BrainScaleS-2 system through its host software (hxcomm / grenade).

That software is not installable here, and this adapter has never been run against a chip, so
it refuses to construct rather than pretend: any use fails loudly at construction. The
:class:`~hw_daemon.backends.base.Backend` interface is what a working adapter must implement
(configure: place the network, write 6-bit weights with sign by row, program axonal delays and
calibration; run: play input spikes, read back the spike recording).
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from hw_daemon.backends.base import Backend, BackendUnavailable

# The Python bindings of the BrainScaleS-2 host stack.
REQUIRED_MODULES = ("pyhxcomm_vx", "pygrenade_vx")


class BrainScaleS2Backend(Backend):
    """Placeholder for the hardware adapter; raises :class:`BackendUnavailable` when built."""

    name = "brainscales2"

    def __init__(self, **options: Any) -> None:
        missing = [m for m in REQUIRED_MODULES if find_spec(m) is None]
        if missing:
            raise BackendUnavailable(
                "BrainScaleS-2 backend unavailable: hxcomm/grenade not installed "
                f"(missing Python modules: {', '.join(missing)}). Run the daemon with "
                "--backend emulator, or on a BrainScaleS-2 host with the hxcomm/grenade stack."
            )
        raise BackendUnavailable(
            "BrainScaleS-2 backend: hxcomm/grenade are importable, but this adapter is not "
            "implemented yet (it has never been run against a chip); use --backend emulator."
        )

    # Unreachable: __init__ always raises. Present so the class satisfies the interface.
    def capabilities(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def fingerprint(self) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def configure(self, network, *, weight_scale=None, input_replication=1):  # pragma: no cover
        raise NotImplementedError

    def run(self, config, spikes, n_samples, *, seed, duration=None):  # pragma: no cover
        raise NotImplementedError
