"""Type stubs of the compiled extension (Rust, PyO3). Keep in step with delgrad_py/src/ (lib.rs registers)."""

from collections.abc import Sequence
from typing import Any, final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

__version__: str
DELAY_KINDS: tuple[str, ...]  # ("none", "synaptic", "axonal", "dendritic"), defined by the core
MODES: tuple[str, ...]  # neuron modes: ("ttfs", "multi")

# Sample ids choosing a batch: uint32 is used in place; int64/uint64 ids are range-checked first.
_Select = NDArray[np.uint32] | NDArray[np.int64] | NDArray[np.uint64]

class SpikeError(ValueError): ...
class ShapeError(ValueError): ...
class ParameterError(ValueError): ...

class FrameError(ValueError):
    """An Arrow IPC frame that is not a readable spike table."""

    code: str  # the hardware protocol's error code: bad_frame, bad_schema or too_large

@final
class Neuron:
    def __init__(
        self,
        tau_m: float = 2.0,
        tau_s: float = 1.0,
        theta: float = 1.0,
        mode: str = "ttfs",
        t_ref: float = 0.0,
        t_end: float = float("inf"),
    ) -> None: ...
    @property
    def tau_m(self) -> float: ...
    @property
    def tau_s(self) -> float: ...
    @property
    def theta(self) -> float: ...
    @property
    def mode(self) -> str: ...
    @property
    def t_ref(self) -> float: ...
    @property
    def t_end(self) -> float: ...

@final
class SpikeSet:
    def __init__(self, spikes: Any, n_samples: int) -> None: ...
    @property
    def n_samples(self) -> int: ...
    @property
    def n_spikes(self) -> int: ...
    @property
    def n_channels(self) -> int: ...
    def __len__(self) -> int: ...
    def spike_counts(self) -> NDArray[np.uint64]: ...
    def select(self, select: _Select | None = None) -> pa.RecordBatch: ...

@final
class ChipIo:
    """A chip's input/output stage: event clock, recording window, input replication."""

    def __init__(self, *, time_quantum: float, duration: float, replication: int, n_channels: int) -> None: ...
    @property
    def time_quantum(self) -> float: ...
    @property
    def duration(self) -> float: ...
    @property
    def replication(self) -> int: ...
    @property
    def n_channels(self) -> int: ...

@final
class Trace:
    @property
    def n_samples(self) -> int: ...
    @property
    def sizes(self) -> list[int]: ...
    @property
    def n_layers(self) -> int: ...
    def n_spikes(self, layer: int) -> int: ...
    def spikes(self, layer: int, with_layer: bool = False) -> pa.RecordBatch: ...
    def first_times(self, layer: int) -> NDArray[np.float64]: ...
    def first_time_grad(self, layer: int, grad_times: NDArray[np.float64]) -> NDArray[np.float64]: ...
    @staticmethod
    def from_tables(tables: list[Any], sizes: list[int], n_samples: int, mode: str = "ttfs") -> Trace: ...

_LayerArgs = tuple[NDArray[np.float64], str, NDArray[np.float64] | None]

def layer_forward(
    spikes: Any,
    weights: NDArray[np.float64],
    delays: NDArray[np.float64] | None,
    delay_kind: str,
    neuron: Neuron,
    n_samples: int,
) -> pa.RecordBatch: ...
def layer_backward(
    spikes: Any,
    weights: NDArray[np.float64],
    delays: NDArray[np.float64] | None,
    delay_kind: str,
    neuron: Neuron,
    out: Any,
    grad: NDArray[np.float64],
    n_samples: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]: ...
def readout_forward(
    spikes: Any,
    weights: NDArray[np.float64],
    delays: NDArray[np.float64] | None,
    delay_kind: str,
    neuron: Neuron,
    n_samples: int,
    kind: str,
    t_end: float,
    tau_w: float | None = None,
) -> NDArray[np.float64]: ...
def readout_backward(
    spikes: Any,
    weights: NDArray[np.float64],
    delays: NDArray[np.float64] | None,
    delay_kind: str,
    neuron: Neuron,
    n_samples: int,
    kind: str,
    t_end: float,
    dy: NDArray[np.float64],
    tau_w: float | None = None,
    shards: list[int] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]: ...
def readout_cross_entropy(
    values: NDArray[np.float64], labels: NDArray[np.int64], batch_size: int | None = None
) -> tuple[float, NDArray[np.float64], NDArray[np.int64]]: ...
def multi_network_forward(
    spikes: SpikeSet,
    select: _Select | None,
    layers: list[_LayerArgs],
    neuron: Neuron,
    recurrent: list[_LayerArgs | None] | None = None,
) -> Trace: ...
def multi_network_backward(
    spikes: SpikeSet,
    select: _Select | None,
    layers: list[_LayerArgs],
    neuron: Neuron,
    trace: Trace,
    grad_spikes: NDArray[np.float64],
    recurrent: list[_LayerArgs | None] | None = None,
    shards: list[int] | None = None,
    spike_count: list[tuple[float, float, float]] | None = None,
    batch_size: int | None = None,
) -> tuple[
    list[tuple[NDArray[np.float64], NDArray[np.float64]]],
    list[tuple[NDArray[np.float64], NDArray[np.float64]] | None],
    NDArray[np.float64],
]: ...
def network_forward(spikes: SpikeSet, select: _Select | None, layers: list[_LayerArgs], neuron: Neuron) -> Trace: ...
def network_backward(
    spikes: SpikeSet,
    select: _Select | None,
    layers: list[_LayerArgs],
    neuron: Neuron,
    trace: Trace,
    grad_times: NDArray[np.float64],
    min_slope: float | None = None,
    shards: list[int] | None = None,
) -> tuple[list[tuple[NDArray[np.float64], NDArray[np.float64]]], NDArray[np.float64]]: ...
def loss(
    times: NDArray[np.float64],
    labels: NDArray[np.int64],
    kind: str,
    tau_s: float,
    t_silent: float,
    delta: float = 0.3,
    xi: float = 0.2,
    alpha: float = 0.005,
    beta: float = 2.7,
    batch_size: int | None = None,
) -> tuple[float, NDArray[np.float64], NDArray[np.int64]]: ...
def predict(times: NDArray[np.float64]) -> NDArray[np.int64]: ...
def read_spike_frame(
    frame: Any,
    what: str = "spikes",
    n_samples: int | None = None,
    n_neurons: int | None = None,
    max_rows: int | None = None,
) -> pa.RecordBatch: ...
def write_spike_frame(spikes: Any) -> bytes: ...
def chip_run(
    spikes: Any, n_samples: int, layers: list[_LayerArgs], neuron: Neuron, io: ChipIo
) -> tuple[list[pa.RecordBatch], dict[str, Any]]: ...
def chip_run_frames(
    frame: Any, n_samples: int, layers: list[_LayerArgs], neuron: Neuron, io: ChipIo, max_events: int
) -> tuple[list[bytes], dict[str, Any]]: ...
def _column_addresses(spikes: Any) -> dict[str, int]: ...
def delay_shape(kind: str, n_out: int, n_in: int) -> list[int]:
    """Shape of a layer's delay array: none (0,), synaptic (n_out, n_in), axonal (n_in,), dendritic (n_out,)."""

def membrane_potential(
    neuron: Neuron,
    target: int,
    connections: Sequence[
        tuple[
            NDArray[np.uint32],
            NDArray[np.float64],
            tuple[NDArray[np.float64], str, NDArray[np.float64] | None],
        ]
    ],
    times: NDArray[np.float64],
    spikes: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
