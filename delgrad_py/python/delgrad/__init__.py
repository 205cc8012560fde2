"""delgrad: exact, event-based gradients for weights and delays in spiking neural networks.

The numerics live in the Rust core (``delgrad._core``); this package converts, orchestrates and
documents. Spike batches are Arrow tables with columns ``sample`` (uint32), ``neuron`` (uint32)
and ``time`` (float64); pyarrow RecordBatches/Tables and polars DataFrames are accepted
without copies.
"""

# Submodules a user reaches from `import delgrad` alone (delgrad.train.Trainer, ...).
from delgrad import config, data, hardware, multi, train
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
from delgrad.config import ConfigError, PipelineConfig, TrainConfig, load_config
from delgrad.fitting import FitResult, fit
from delgrad.functional import LayerGrad, layer_backward, layer_forward
from delgrad.model import Model
from delgrad.multi import MultiNetwork
from delgrad.network import Layer, Network, NetworkGrad
from delgrad.train import Trainer

__all__ = [
    "__version__",
    "config",
    "ConfigError",
    "data",
    "fit",
    "FitResult",
    "FrameError",
    "hardware",
    "Layer",
    "layer_backward",
    "layer_forward",
    "LayerGrad",
    "load_config",
    "Model",
    "multi",
    "MultiNetwork",
    "Network",
    "NetworkGrad",
    "Neuron",
    "ParameterError",
    "PipelineConfig",
    "ShapeError",
    "SpikeError",
    "SpikeSet",
    "Trace",
    "train",
    "TrainConfig",
    "Trainer",
]
