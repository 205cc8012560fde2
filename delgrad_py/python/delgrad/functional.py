"""Single-layer forward and backward passes (the stable, function-level contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._arrays import as_f64, delay_kind_of

SpikesLike = Any  # pyarrow RecordBatch / Table / RecordBatchReader, polars DataFrame


@dataclass(frozen=True)
class LayerGrad:
    """Gradients of a loss for one layer.

    ``weights`` has the weights' shape ``(n_out, n_in)``, ``delays`` the delays' shape (synaptic
    ``(n_out, n_in)``, axonal ``(n_in,)``, dendritic ``(n_out,)``; empty without delays), and
    ``inputs`` holds ``dL/dt`` of each row of the input spike table, in its row order.
    """

    weights: NDArray[np.float64]
    delays: NDArray[np.float64]
    inputs: NDArray[np.float64]


def _layer_args(weights: ArrayLike, delays: ArrayLike | None, delay_kind: str | None):
    w = as_f64(weights, "weights", ndim=2)
    d = None if delays is None else as_f64(delays, "delays")
    kind = delay_kind_of(w, d, delay_kind)
    return w, (None if kind == "none" else d), kind


def layer_forward(
    spikes: SpikesLike,
    weights: ArrayLike,
    delays: ArrayLike | None,
    neuron: _core.Neuron,
    n_samples: int,
    *,
    delay_kind: str | None = None,
) -> pa.RecordBatch:
    """Exact output spikes of one fully connected layer: the first spike of every neuron
    (``neuron.mode == "ttfs"``) or every spike until ``neuron.t_end`` (``"multi"``: reset to 0,
    refractory ``t_ref``).

    Args:
        spikes: input spikes, one row per spike (``sample``, ``neuron``, ``time``).
        weights: ``(n_out, n_in)``; ``weights[j, i]`` is added to the current of ``j`` when a
            spike of input ``i`` arrives.
        delays: ``None``, synaptic ``(n_out, n_in)``, axonal ``(n_in,)`` or dendritic
            ``(n_out,)``; a spike of ``i`` at ``t`` arrives at ``j`` at ``t + d_ji``.
        neuron: the neuron model.
        n_samples: number of samples in the batch; sample ids must be below it.
        delay_kind: ``"none"``, ``"synaptic"``, ``"axonal"`` or ``"dendritic"``; read off the
            shape of ``delays`` when omitted (a square layer needs it for 1-d delays).

    Returns:
        A RecordBatch (``sample``, ``neuron``, ``time``) sorted by sample, neuron and time. A
        neuron that never reaches threshold has no row.
    """
    w, d, kind = _layer_args(weights, delays, delay_kind)
    return _core.layer_forward(spikes, w, d, kind, neuron, int(n_samples))


def layer_backward(
    spikes: SpikesLike,
    weights: ArrayLike,
    delays: ArrayLike | None,
    neuron: _core.Neuron,
    out: SpikesLike,
    grad: ArrayLike,
    n_samples: int,
    *,
    delay_kind: str | None = None,
) -> LayerGrad:
    """Exact gradients of one layer by the implicit function theorem.

    ``out`` are the layer's output spikes (from :func:`layer_forward`, or recorded on hardware)
    and ``grad[k]`` is ``dL/dt`` of row ``k`` of ``out``. Gradients are evaluated at the given
    output times, as in-the-loop training needs.
    """
    w, d, kind = _layer_args(weights, delays, delay_kind)
    g = as_f64(grad, "grad", ndim=1)
    gw, gd, gin = _core.layer_backward(spikes, w, d, kind, neuron, out, g, int(n_samples))
    return LayerGrad(weights=gw, delays=gd, inputs=gin)
