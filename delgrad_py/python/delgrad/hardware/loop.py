"""Training in the loop (the Fast&Deep / DelGrad scheme): forward passes on the (emulated)
hardware, exact gradients on the host at the spike times the hardware recorded.

:class:`HardwareLoop` is a forward function for :class:`delgrad.train.Trainer`::

    with HardwareClient(endpoint) as hw:
        loop = HardwareLoop(hw, seed=0)
        Trainer(net, cfg, forward=loop).fit(train, evals)

Each call configures the network's current float parameters (the *shadow* parameters: the
daemon quantises them and the host keeps training the floats), runs the selected samples and
turns the recorded spikes of every layer into a :class:`Trace`. The trainer then evaluates the
gradient formulas at those times with the shadow parameters, so the quantisation, threshold
mismatch, noise and jitter of the chip enter only through the recorded spike times.

Every run gets a seed derived from the configuration and the samples it holds, so a batch is
reproducible: a retry after a daemon restart, a resumed run or a re-evaluation of the same
parameters sees the same noise draw.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from delgrad._core import SpikeSet, Trace
from delgrad.hardware.client import Configured, HardwareClient
from delgrad.hardware.protocol import spike_batch


def _param_digest(net: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for layer in net.layers:
        h.update(layer.delay_kind.encode())
        h.update(np.ascontiguousarray(layer.weights, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(layer.delays, dtype=np.float64).tobytes())
    return h.digest()


class HardwareLoop:
    """Runs a network's forward passes through ``hw_daemon``.

    Args:
        client: a connected :class:`HardwareClient`.
        seed: base of every run's noise seed.
        weight_scale: passed to ``configure`` (hardware units per weight unit; None: the
            backend's default).
        input_replication: channels the hardware replicates; the spike sets hold the
            unreplicated channels then, and the host's backward needs the replicated ones, so
            the default (1) expects data sets encoded with ``replicate`` already.
        max_batch: samples per ``run`` request; longer selections (whole evaluation splits) are
            sent in pieces of this size.
        project: clip the shadow weights, in place, to the range the hardware realises
            (``weight_max_int / weight_scale``, from ``hello``) before each configure, as
            DelGrad clips its weights at 2.1: a shadow weight beyond the range would receive
            gradients for a value the chip never uses.
    """

    def __init__(
        self,
        client: HardwareClient,
        *,
        seed: int = 0,
        weight_scale: float | list[float] | None = None,
        input_replication: int = 1,
        max_batch: int = 1000,
        project: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.client = client
        self.seed = int(seed)
        self.weight_scale = weight_scale
        self.input_replication = int(input_replication)
        self.max_batch = int(max_batch)
        self.counters = {
            "runs": 0,
            "configures": 0,
            "samples": 0,
            "input_events": 0,
            "dropped_inputs": 0,
            "lost_events": 0,
            "recorded_events": 0,
            "backend_seconds": 0.0,
        }
        self.project = project
        # The daemon this loop's session started and restarts (session.OwnDaemon), if any.
        self.daemon: Any = None
        self._weight_max: list[float] | None = None
        self._last: tuple[bytes, Configured] | None = None

    def weight_max(self, n_layers: int) -> list[float]:
        """The largest weight magnitude the hardware realises, per layer."""
        if self._weight_max is None or len(self._weight_max) != n_layers:
            caps = self.client.hello()["capabilities"]
            scale = self.weight_scale if self.weight_scale is not None else caps["default_weight_scale"]
            scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * n_layers
            self._weight_max = [caps["weight_max_int"] / float(s) for s in scales]
        return self._weight_max

    def configure(self, net: Any) -> Configured:
        """Configures ``net`` unless its parameters are the ones configured last."""
        if self.project:
            for layer, wmax in zip(net.layers, self.weight_max(len(net.layers))):
                np.clip(layer.weights, -wmax, wmax, out=layer.weights)
        digest = _param_digest(net)
        if self._last is not None and self._last[0] == digest:
            return self._last[1]
        got = self.client.configure(net, weight_scale=self.weight_scale, input_replication=self.input_replication)
        self.counters["configures"] += 1
        self._last = (digest, got)
        return got

    def realised(self, net: Any) -> Any:
        """The network as the hardware realises ``net`` (quantised weights, clipped delays)."""
        return self.configure(net).network

    def backward_network(self, net: Any) -> Any:
        """What :class:`Trainer` evaluates the gradient formulas with: the realised network,
        whose parameters produced the recorded spikes (a straight-through estimator for the
        quantisation: the gradient w.r.t. the realised weights updates the float ones)."""
        return self.realised(net)

    def run_seed(self, config_id: str, select: NDArray[np.uint32]) -> int:
        h = hashlib.blake2b(digest_size=8)
        h.update(self.seed.to_bytes(8, "little", signed=True))
        h.update(config_id.encode())
        h.update(np.ascontiguousarray(select, dtype=np.uint32).tobytes())
        return int.from_bytes(h.digest(), "little") >> 1  # fits an int64 on every side

    def __call__(self, net: Any, spikes: SpikeSet, select: NDArray[np.uint32] | None) -> Trace:
        cfg = self.configure(net)
        sel = (
            np.arange(len(spikes), dtype=np.uint32) if select is None else np.ascontiguousarray(select, dtype=np.uint32)
        )
        n_layers = len(net.layers)
        pieces: list[list[pa.RecordBatch]] = [[] for _ in range(n_layers)]
        for start in range(0, len(sel), self.max_batch):
            part = sel[start : start + self.max_batch]
            res = self.client.run(
                cfg.config_id, spikes.select(part), len(part), seed=self.run_seed(cfg.config_id, part)
            )
            self._count(res.health, len(part))
            for index, rb in enumerate(res.spikes):
                if start:
                    shifted = pc.add(rb.column("sample"), pa.scalar(start, pa.uint32()))
                    rb = pa.RecordBatch.from_arrays([shifted, *rb.columns[1:]], schema=rb.schema)
                pieces[index].append(rb)
        tables = [pa.Table.from_batches(p) if p else _EMPTY for p in pieces]
        return Trace.from_tables(tables, [layer.shape[0] for layer in net.layers], len(sel))

    def _count(self, health: dict[str, Any], n_samples: int) -> None:
        c = self.counters
        c["runs"] += 1
        c["samples"] += n_samples
        for k in ("input_events", "dropped_inputs", "lost_events"):
            c[k] += int(health.get(k, 0))
        c["recorded_events"] += int(sum(health.get("recorded_events", [])))
        c["backend_seconds"] += float(health.get("wall_time_s", 0.0))


_EMPTY = spike_batch(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0))
