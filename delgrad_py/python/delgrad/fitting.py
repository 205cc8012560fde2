"""``delgrad.fit``: the pipeline's trainer, run directory, checkpoints, resume and report for a
network and spike data built in Python.

The data are written once into the run directory in the usual layout (``data/``), the
configuration records the network's architecture, the training settings and a fingerprint of
the data and initial parameters, so calling ``fit`` again with the same arguments resumes (or
finds the run finished) and different arguments into the same directory are refused.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from delgrad._core import SpikeSet
from delgrad.config import DataConfig, NetworkConfig, PipelineConfig, TrainConfig, parse_config
from delgrad.data.split import Split
from delgrad.multi import MultiNetwork
from delgrad.network import Network
from delgrad.train import Trainer

__all__ = ["FitResult", "fit"]

SplitLike = Split | tuple[Any, Any]


@dataclass
class FitResult:
    """What :func:`fit` did: the per-epoch metrics, the trained network (best epoch restored
    when ``select_on`` is set) and the run directory (None for an in-memory fit)."""

    history: pl.DataFrame
    network: Network | MultiNetwork
    run_dir: Path | None


def as_split(data: SplitLike, what: str) -> Split:
    """A :class:`Split` from a Split, or from ``(spikes, labels)`` with ``spikes`` a pyarrow or
    polars table (sample ids ``0..len(labels)-1``) or a :class:`SpikeSet`."""
    if isinstance(data, Split):
        return data
    try:
        spikes, labels = data
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected a Split or (spikes, labels), got {type(data).__name__}") from None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if not isinstance(spikes, SpikeSet):
        spikes = SpikeSet(spikes, len(labels))
    elif spikes.n_samples != len(labels):
        raise ValueError(f"{what}: the SpikeSet holds {spikes.n_samples} samples but there are {len(labels)} labels")
    return Split(spikes, labels.astype(np.int64))


def _train_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    return parse_config({"train": dict(config)}).train  # checked like a pipeline's [train]


def _network_config(net: Network | MultiNetwork) -> NetworkConfig:
    n = net.neuron
    kind = net.layers[0].delay_kind if isinstance(net, MultiNetwork) else net.layers[-1].delay_kind
    common = dict(hidden=net.sizes[1:-1], delay_kind=kind, tau_m=n.tau_m, tau_s=n.tau_s, theta=n.theta)
    if isinstance(net, MultiNetwork):
        r = net.readout
        return NetworkConfig(
            mode="multi",
            t_ref=n.t_ref,
            t_end=n.t_end,
            recurrent=any(x is not None for x in net.recurrent),
            readout=r.kind,
            readout_tau_m=r.neuron.tau_m,
            readout_tau_s=r.neuron.tau_s,
            tau_w=r.tau_w,
            **common,
        )
    return NetworkConfig(mode="ttfs", **common)


def _fingerprint(net: Network | MultiNetwork, splits: dict[str, Split]) -> str:
    digest = hashlib.sha256()
    for name, split in splits.items():
        digest.update(name.encode())
        batch = split.spikes.select()
        for column in ("sample", "neuron", "time"):
            digest.update(np.ascontiguousarray(batch.column(column).to_numpy()).tobytes())
        digest.update(split.labels.tobytes())
    params = (
        net.params()
        if isinstance(net, MultiNetwork)
        else [a for layer in net.layers for a in (layer.weights, layer.delays)]
    )
    for array in params:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _write_data(run_dir: Path, splits: dict[str, Split], n_inputs: int) -> None:
    from delgrad.data.parquet import SpikeChunk, write_spike_dataset

    partial = run_dir / "data.partial"
    chunks = {name: [SpikeChunk(split.spikes.select(), split.labels)] for name, split in splits.items()}
    write_spike_dataset(partial, chunks, n_inputs, metadata={"dataset": "arrays"})
    partial.rename(run_dir / "data")


def fit(
    network: Network | MultiNetwork,
    train: SplitLike,
    validation: SplitLike | None = None,
    test: SplitLike | None = None,
    *,
    config: TrainConfig | Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    name: str = "fit",
    progress: bool = True,
    restart: bool = False,
) -> FitResult:
    """Trains ``network`` in place with the one trainer of every pipeline.

    ``train`` / ``validation`` / ``test`` are :class:`Split` objects or ``(spikes, labels)``.
    ``config`` is a :class:`TrainConfig` or a dict of ``[train]`` keys (checked like a pipeline
    file). Without ``run_dir`` training happens in memory. With it, ``fit`` writes the same run
    directory as ``delgrad run`` (data, checkpoints every epoch, ``metrics.parquet``, model,
    predictions, report; ``validation`` and ``test`` are then required), resumes an
    interrupted fit exactly, and returns at once for a finished one (``network`` is then left
    as it is; the result holds the trained network read from the run).
    """
    train_config = _train_config(config)
    splits = {"train": as_split(train, "train")}
    for split_name, data in (("validation", validation), ("test", test)):
        if data is not None:
            splits[split_name] = as_split(data, split_name)
    if run_dir is None:
        trainer = Trainer(network, train_config)
        history = trainer.fit(splits["train"], {k: v for k, v in splits.items() if k != "train"})
        return FitResult(pl.DataFrame(history), network, None)

    from delgrad.model import Model
    from delgrad.pipeline import _train_and_evaluate
    from delgrad.rundir import RunDir

    missing = [k for k in ("validation", "test") if k not in splits]
    if missing:
        raise ValueError(
            f"fit: a run directory's report evaluates every split; pass {' and '.join(k + '=' for k in missing)}"
        )
    n_inputs = network.sizes[0]
    for split_name, split in splits.items():
        if split.spikes.n_channels > n_inputs:
            raise ValueError(
                f"{split_name}: neuron ids reach {split.spikes.n_channels - 1}, the network has {n_inputs} inputs"
            )
    cfg = PipelineConfig(
        name=name,
        data=DataConfig(dataset="arrays", fingerprint=_fingerprint(network, splits)),
        network=_network_config(network),
        train=train_config,
    )
    run_dir = Path(run_dir)
    with RunDir.open(run_dir, cfg, restart=restart) as owned:
        if owned.status != "finished":
            owned.set_status("running", error=None)
            if not (run_dir / "data").exists():
                _write_data(run_dir, splits, n_inputs)
            try:
                seconds = _train_and_evaluate(
                    cfg, run_dir, progress, None, lambda text: print(text, file=sys.stderr), net=network
                )
            except BaseException as e:
                owned.set_status("failed", error=f"{type(e).__name__}: {e}")
                raise
            owned.set_status("finished", train_seconds=seconds)
    trained = Model.load(run_dir).network
    return FitResult(pl.read_parquet(run_dir / "metrics.parquet"), trained, run_dir)
