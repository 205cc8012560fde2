"""Hardware backends behind one interface (:class:`Backend`), chosen by name."""

from __future__ import annotations

from typing import Any

from hw_daemon.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Configuration,
    RunOutput,
)

BACKENDS = ("emulator", "brainscales2")


def make_backend(name: str, **options: Any) -> Backend:
    """Builds the backend ``name``; raises :class:`BackendUnavailable` if it cannot run here."""
    if name == "emulator":
        from hw_daemon.backends.emulator import EmulatorBackend, EmulatorParams

        chip_seed = options.pop("chip_seed", 0)
        return EmulatorBackend(chip_seed=chip_seed, params=EmulatorParams(**options))
    if name == "brainscales2":
        from hw_daemon.backends.brainscales2 import BrainScaleS2Backend

        return BrainScaleS2Backend(**options)
    raise ValueError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendUnavailable", "Configuration", "RunOutput", "make_backend"]
