"""delgrad: exact, event-based gradients for weights and delays in spiking neural networks.

The numerics live in the Rust core (``delgrad._core``); this package converts, orchestrates and
documents. Spike batches are Arrow tables with columns ``sample`` (uint32), ``neuron`` (uint32)
and ``time`` (float64); pyarrow RecordBatches/Tables and polars DataFrames are accepted
without copies.
"""

from delgrad._core import (
    FrameError,
    Neuron,
    ParameterError,
    ShapeError,
    SpikeError,
    SpikeSet,
    Trace,
    __version__,
)
from delgrad.functional import LayerGrad, layer_backward, layer_forward
from delgrad.model import Model
from delgrad.network import Layer, Network, NetworkGrad

__all__ = [
    "FrameError",
    "Layer",
    "LayerGrad",
    "Model",
    "Network",
    "NetworkGrad",
    "Neuron",
    "ParameterError",
    "ShapeError",
    "SpikeError",
    "SpikeSet",
    "Trace",
    "__version__",
    "layer_backward",
    "layer_forward",
]
