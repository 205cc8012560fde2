"""A trained classifier: the network (TTFS or multi-spike) plus everything needed to go from raw
features to a class (data set convention and input encoding; spike data sets have none)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._core import ShapeError
from delgrad.data.encoding import LatencyEncoder
from delgrad.multi import MultiNetwork
from delgrad.network import Network

NETWORK_FILES = {"ttfs": "network.npz", "multi": "multi_network.npz"}


class Model:
    """``Model(network, encoder, dataset, n_features)``; ``predict(data) -> class indices``.

    For Yin-Yang, ``features`` may be the published ``(n, 4)`` rows ``[x, y, 1-x, 1-y]`` or just
    ``(n, 2)`` coordinates ``[x, y]`` (the mirrored pair is added).
    """

    def __init__(
        self, network: Network | MultiNetwork, encoder: LatencyEncoder | None, dataset: str, n_features: int
    ) -> None:
        self.network = network
        self.encoder = encoder
        self.dataset = dataset
        self.n_features = n_features

    def _features(self, features: ArrayLike) -> NDArray[np.float64]:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if self.dataset == "yinyang" and x.shape[1] == 2:
            x = np.concatenate([x, 1.0 - x], axis=1)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ShapeError(
                f"features: expected shape (n, {self.n_features})"
                + (" or (n, 2)" if self.dataset == "yinyang" else "")
                + f", got {x.shape}"
            )
        return x

    @property
    def kind(self) -> str:
        return "multi" if isinstance(self.network, MultiNetwork) else "ttfs"

    def spikes(self, data: Any, n_samples: int | None = None) -> _core.SpikeSet:
        """The network's input for ``data``: a spike table (pyarrow, polars; with ``n_samples``)
        or :class:`SpikeSet` as it is, or features through the model's encoder."""
        if isinstance(data, _core.SpikeSet):
            return data
        if hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__"):
            if n_samples is None:
                raise ShapeError("n_samples is required with a spike table (samples without spikes have no rows)")
            return _core.SpikeSet(data, int(n_samples))
        if self.encoder is None:
            raise ValueError(
                f"this model was trained on spikes ({self.dataset}) and has no encoder: "
                "pass a spike table and n_samples"
            )
        x = self._features(data)
        spikes, _ = self.encoder(x)
        return _core.SpikeSet(spikes, len(x))

    def output_times(self, data: Any, n_samples: int | None = None) -> NDArray[np.float64]:
        """First spike time of each output neuron, ``(n, n_classes)``; inf where silent (TTFS)."""
        if self.kind != "ttfs":
            raise ValueError("output_times: a multi-spike model has readout values (readout_values), not spike times")
        trace = self.network.forward(self.spikes(data, n_samples))
        return trace.first_times(trace.n_layers - 1)

    def readout_values(self, data: Any, n_samples: int | None = None) -> NDArray[np.float64]:
        """The readout's value of each class unit, ``(n, n_classes)`` (multi-spike)."""
        if self.kind != "multi":
            raise ValueError("readout_values: a TTFS model has output spike times (output_times)")
        return self.network.forward(self.spikes(data, n_samples)).values

    def predict(self, data: Any, n_samples: int | None = None) -> NDArray[np.int64]:
        """Class of each sample: the output neuron that spikes first (-1 if none spikes), or the
        readout unit with the largest value. ``data`` is features (where the model has an
        encoder) or a spike table with ``n_samples``."""
        if self.kind == "multi":
            return np.argmax(self.readout_values(data, n_samples), axis=1).astype(np.int64)
        return _core.predict(self.output_times(data, n_samples))

    # --- persistence -------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> Path:
        d = Path(run_dir) / "model"
        d.mkdir(parents=True, exist_ok=True)
        self.network.save(d / NETWORK_FILES[self.kind])
        meta: dict[str, Any] = {
            "kind": self.kind,
            "dataset": self.dataset,
            "n_features": self.n_features,
            "encoder": None if self.encoder is None else self.encoder.config(),
        }
        (d / "model.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, run_dir: str | Path) -> Model:
        d = Path(run_dir) / "model"
        if not (d / "model.json").exists():
            raise FileNotFoundError(f"no saved model in {d} (expected model.json and a network file)")
        meta = json.loads((d / "model.json").read_text())
        kind = meta.get("kind", "ttfs")
        network_class = MultiNetwork if kind == "multi" else Network
        network = network_class.load(d / NETWORK_FILES[kind])
        encoder = None
        if meta.get("encoder") is not None:
            encoder = LatencyEncoder(**{k: v for k, v in meta["encoder"].items() if k != "encoder"})
        return cls(network, encoder, meta["dataset"], meta["n_features"])
