"""A trained classifier: the network plus everything needed to go from raw features to a class
(data set convention and input encoding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from delgrad import _core
from delgrad._core import ShapeError
from delgrad.data.encoding import LatencyEncoder
from delgrad.network import Network


class Model:
    """``Model(network, encoder, dataset)``; ``predict(features) -> class indices``.

    For Yin-Yang, ``features`` may be the published ``(n, 4)`` rows ``[x, y, 1-x, 1-y]`` or just
    ``(n, 2)`` coordinates ``[x, y]`` (the mirrored pair is added).
    """

    def __init__(self, network: Network, encoder: LatencyEncoder, dataset: str, n_features: int) -> None:
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

    def output_times(self, features: ArrayLike) -> NDArray[np.float64]:
        """First spike time of each output neuron, ``(n, n_classes)``; inf where silent."""
        x = self._features(features)
        spikes, _ = self.encoder(x)
        trace = self.network.forward(spikes, len(x))
        return trace.first_times(trace.n_layers - 1)

    def predict(self, features: ArrayLike) -> NDArray[np.int64]:
        """Class of each row: the output neuron that spikes first (-1 if none spikes)."""
        return _core.predict(self.output_times(features))

    # --- persistence -------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> Path:
        d = Path(run_dir) / "model"
        d.mkdir(parents=True, exist_ok=True)
        self.network.save(d / "network.npz")
        meta: dict[str, Any] = {
            "dataset": self.dataset,
            "n_features": self.n_features,
            "encoder": self.encoder.config(),
        }
        (d / "model.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, run_dir: str | Path) -> Model:
        d = Path(run_dir) / "model"
        if not (d / "model.json").exists():
            raise FileNotFoundError(f"no saved model in {d} (expected model.json and network.npz)")
        meta = json.loads((d / "model.json").read_text())
        enc = {k: v for k, v in meta["encoder"].items() if k != "encoder"}
        return cls(Network.load(d / "network.npz"), LatencyEncoder(**enc), meta["dataset"], meta["n_features"])
