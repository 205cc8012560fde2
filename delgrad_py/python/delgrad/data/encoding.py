"""Time-to-first-spike input encodings that produce Arrow spike tables.

Every encoder returns ``(spikes, n_inputs)``: ``spikes`` is a ``pyarrow.RecordBatch`` with the
schema of DESIGN.md (``sample`` uint32, ``neuron`` uint32, ``time`` float64), one row per input
spike, rows sorted by ``(sample, neuron)``; ``n_inputs`` is the number of input neurons the
network needs (neuron ids are ``0..n_inputs-1``; a neuron may be silent in some samples).
All of it is array arithmetic on the whole ``(n_samples, n_inputs)`` block; nothing loops over
samples or spikes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["SPIKE_SCHEMA", "LatencyEncoder", "encode_latency", "spike_batch"]

#: The spike schema shared by every module (DESIGN.md, "Data: Arrow spike batches").
SPIKE_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("sample", pa.uint32(), nullable=False),
        pa.field("neuron", pa.uint32(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
    ]
)


def spike_batch(sample: np.ndarray, neuron: np.ndarray, time: np.ndarray) -> pa.RecordBatch:
    """Wrap three equally long numpy columns as a spike RecordBatch (zero-copy when possible)."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(sample, dtype=np.uint32), type=pa.uint32()),
            pa.array(np.asarray(neuron, dtype=np.uint32), type=pa.uint32()),
            pa.array(np.asarray(time, dtype=np.float64), type=pa.float64()),
        ],
        schema=SPIKE_SCHEMA,
    )


def encode_latency(
    features: np.ndarray,
    t_early: float = 0.15,
    t_late: float = 2.0,
    bias_time: float | None = None,
    replicate: int = 1,
    invert: bool = False,
    silent_value: float | None = None,
) -> tuple[pa.RecordBatch, int]:
    """Latency (time-to-first-spike) code: one spike per input channel, time linear in value.

    Parameters
    ----------
    features:
        ``(n_samples, n_features)`` values in ``[0, 1]``.
    t_early, t_late:
        Spike times of the two ends of the range, ``t_early < t_late`` (units of ``tau_s``).
        Without ``invert`` a value ``v`` spikes at ``t_early + v * (t_late - t_early)``, so 0 is
        early — the Yin-Yang convention of Fast&Deep / DelGrad.
    bias_time:
        If given, one extra input neuron with id ``n_features * replicate`` (the last id) fires
        at ``bias_time`` in every sample.
    replicate:
        Every channel is presented ``replicate`` times (hardware input replication).  Copy
        ``r`` of channel ``c`` is neuron ``r * n_features + c``: the copies form ``replicate``
        consecutive blocks, each a full image of the input, so block 0 is the unreplicated code.
    invert:
        Bright-is-early: ``t_early + (1 - v) * (t_late - t_early)``, how Fast&Deep encodes
        (MNIST-like) images.
    silent_value:
        Channels whose value equals ``silent_value`` exactly emit no spike at all (e.g. ``0.0``
        for background pixels of digit images); ``None`` keeps every spike.  Compared on the
        raw value, before ``invert``.  The bias neuron is never silenced.

    Returns
    -------
    ``(spikes, n_inputs)``: the spike RecordBatch (rows sorted by ``sample`` then ``neuron``)
    and ``n_inputs = n_features * replicate + (1 if bias_time is not None else 0)``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n_samples, n_features), got shape {x.shape}")
    if not (math.isfinite(t_early) and math.isfinite(t_late)) or not t_early < t_late:
        raise ValueError(f"need finite t_early < t_late, got t_early={t_early}, t_late={t_late}")
    if bias_time is not None and not math.isfinite(bias_time):
        raise ValueError(f"bias_time must be finite, got {bias_time}")
    if int(replicate) != replicate or replicate < 1:
        raise ValueError(f"replicate must be an integer >= 1, got {replicate}")
    replicate = int(replicate)
    # NaN fails both comparisons, so this also rejects NaN.
    if x.size and not (np.all(x >= 0.0) and np.all(x <= 1.0)):
        raise ValueError("features must lie in [0, 1] (scale them first); found values outside")
    n_samples, n_features = x.shape
    n_inputs = n_features * replicate + (bias_time is not None)
    if n_samples >= 2**32 or n_inputs >= 2**32:
        raise ValueError("sample and neuron ids must fit in uint32")

    v = 1.0 - x if invert else x
    times = t_early + v * (t_late - t_early)
    keep = np.ones_like(times, dtype=bool) if silent_value is None else x != silent_value
    # Tiling along the channel axis gives exactly the r * n_features + c numbering, and
    # row-major flattening of a (sample, neuron) block is already sorted by (sample, neuron).
    times = np.tile(times, (1, replicate))
    keep = np.tile(keep, (1, replicate))
    if bias_time is not None:
        times = np.concatenate([times, np.full((n_samples, 1), float(bias_time))], axis=1)
        keep = np.concatenate([keep, np.ones((n_samples, 1), dtype=bool)], axis=1)

    sample, neuron = np.nonzero(keep)  # row-major order: sorted by (sample, neuron)
    return spike_batch(sample, neuron, times[sample, neuron]), int(n_inputs)


@dataclasses.dataclass(frozen=True)
class LatencyEncoder:
    """:func:`encode_latency` with its parameters bound, recordable in dataset metadata.

    ``LatencyEncoder(t_early=0.15, t_late=2.0)(features)`` equals
    ``encode_latency(features, t_early=0.15, t_late=2.0)``; :meth:`config` is what
    :func:`delgrad.data.parquet.write_dataset` stores next to the spikes.
    """

    t_early: float = 0.15
    t_late: float = 2.0
    bias_time: float | None = None
    replicate: int = 1
    invert: bool = False
    silent_value: float | None = None

    def __call__(self, features: np.ndarray) -> tuple[pa.RecordBatch, int]:
        """Encode ``features``; see :func:`encode_latency`."""
        return encode_latency(features, **dataclasses.asdict(self))

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description of this encoder."""
        return {"encoder": "latency", **dataclasses.asdict(self)}
