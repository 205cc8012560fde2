"""The interface every hardware backend implements.

A backend turns a requested :class:`delgrad.Network` into a *configuration* (the parameter values
the hardware really realises) and executes runs of input spikes on it, returning the recorded
spikes of every layer and health counters. The daemon owns transport, caching and config ids;
backends own physics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


class BackendError(Exception):
    """A request the backend refuses; ``code`` is a protocol error code (see
    :data:`delgrad.hardware.protocol.ERROR_CODES`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class BackendUnavailable(RuntimeError):
    """The backend cannot be constructed on this machine (missing software or hardware)."""


@dataclass
class Configuration:
    """A realised network on the backend.

    ``network`` holds the values the hardware realises (quantised weights, clipped delays);
    it is what the host should use for the backward pass. ``report`` says what changed.
    ``state`` is backend-private (placement, hidden per-neuron properties).
    """

    network: Any
    input_replication: int
    report: dict[str, Any]
    fingerprint: bytes
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        """Input channels a run addresses (before replication)."""
        return self.network.sizes[0] // self.input_replication


@dataclass
class RunOutput:
    """Recorded spikes of every layer (``sample``, ``neuron``, ``time``) and health counters."""

    layers: list[pa.RecordBatch]
    health: dict[str, Any]
    seed: int


@dataclass
class FramedRun:
    """A run as the daemon sends it: one Arrow IPC stream frame of recorded spikes per layer,
    the health counters and the noise seed."""

    frames: list[Any]
    health: dict[str, Any]
    seed: int


class Backend(ABC):
    """One hardware (or emulated hardware) system."""

    name: str = "abstract"

    @abstractmethod
    def capabilities(self) -> dict[str, Any]:
        """What ``hello`` reports: neurons, weight bits, time quantum, delay range, ..."""

    @abstractmethod
    def fingerprint(self) -> bytes:
        """Bytes identifying this system and its fixed properties (chip identity): two backends
        with the same fingerprint realise the same configuration identically."""

    @abstractmethod
    def configure(
        self, network: Any, *, weight_scale: float | list[float] | None = None, input_replication: int = 1
    ) -> Configuration:
        """Realises ``network``; raises :class:`BackendError` (``does_not_fit``, ``unsupported``,
        ``bad_parameters``) when it cannot."""

    @abstractmethod
    def run(
        self, config: Configuration, spikes: pa.RecordBatch, n_samples: int, *, seed: int, duration: float | None = None
    ) -> RunOutput:
        """Plays ``spikes`` (validated :data:`SPIKE_SCHEMA` rows addressing input *channels*)
        into ``config`` and records every layer."""

    def run_frames(
        self,
        config: Configuration,
        frame: Any,
        n_samples: int,
        *,
        seed: int,
        duration: float | None = None,
        max_events: int,
    ) -> FramedRun:
        """:meth:`run` from and to protocol frames, as the daemon calls it: ``frame`` is the
        request's input spike frame (untrusted; channels ``< config.n_channels``, at most
        ``max_events`` events after replication). Raises :class:`ProtocolError` for a bad
        frame. Backends that can skip the tables in between override this."""
        from delgrad.hardware import protocol as P

        spikes = P.decode_spikes(
            frame, "input spikes", n_samples=n_samples, n_neurons=config.n_channels, max_rows=max_events
        )
        if spikes.num_rows * config.input_replication > max_events:
            raise P.ProtocolError(
                P.TOO_LARGE,
                f"input spikes: {spikes.num_rows} x replication {config.input_replication} exceeds {max_events} events",
            )
        out = self.run(config, spikes, n_samples, seed=seed, duration=duration)
        return FramedRun(P.encode_layers(out.layers), out.health, out.seed)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases hardware resources."""
