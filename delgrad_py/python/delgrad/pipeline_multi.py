"""The pipeline stages for multi-spike networks (``[network] mode = "multi"``): build, train
with EventProp, evaluate and report. Same run directory as :mod:`delgrad.pipeline`, with
``model/multi_network.npz`` as the model.

``[network]`` keys: ``hidden``, ``delay_kind``, ``tau_m``, ``tau_s``, ``theta``, ``t_ref``,
``t_end``, ``weight_mean``/``weight_std`` (hidden, readout), ``delay_range``, ``recurrent``,
``recurrent_std``, ``readout`` (``"max"`` or ``"exp_mean"``), ``readout_tau_m``, ``readout_tau_s``, ``tau_w``.
``[train]`` keys: :class:`delgrad.multi.MultiTrainConfig`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from delgrad._core import Neuron
from delgrad.multi import MultiNetwork, MultiTrainConfig, evaluate_multi, fit_multi
from delgrad.train import Split

MODEL_FILE = "multi_network.npz"


def build_network(cfg: dict[str, Any], n_in: int, n_out: int) -> MultiNetwork:
    n = cfg["network"]
    t_end = float(n.get("t_end", 60.0))
    neuron = Neuron(
        tau_m=n["tau_m"],
        tau_s=n["tau_s"],
        theta=n["theta"],
        mode="multi",
        t_ref=float(n.get("t_ref", 0.0)),
        t_end=t_end,
    )
    readout_neuron = Neuron(
        tau_m=float(n.get("readout_tau_m", n["tau_m"])),
        tau_s=float(n.get("readout_tau_s", n["tau_s"])),
        theta=1.0,
        mode="multi",
        t_end=t_end,
    )
    return MultiNetwork.random(
        [n_in, *n["hidden"], n_out],
        neuron,
        readout_neuron,
        delay_kind=n["delay_kind"],
        weight_mean=n["weight_mean"],
        weight_std=n["weight_std"],
        delay_range=tuple(n["delay_range"]),
        readout_kind=n.get("readout", "max"),
        t_end=t_end,
        tau_w=n.get("tau_w"),
        recurrent=bool(n.get("recurrent", False)),
        recurrent_std=float(n.get("recurrent_std", 0.1)),
        seed=int(cfg["train"].get("seed", 0)),
    )


def run(cfg: dict[str, Any], run_dir: Path, splits: dict[str, Split], n_in: int, progress: bool) -> Path:
    from delgrad.pipeline import _progress, n_classes

    net = build_network(cfg, n_in, n_classes(cfg))
    tcfg = MultiTrainConfig.from_dict(cfg["train"])
    t0 = time.perf_counter()
    with _progress(progress, tcfg.epochs) as on_epoch:
        history = fit_multi(
            net, tcfg, splits["train"], {"validation": splits["validation"], "test": splits["test"]}, on_epoch
        )
    wall = time.perf_counter() - t0
    pl.DataFrame(history).write_parquet(run_dir / "metrics.parquet")
    (run_dir / "model").mkdir(exist_ok=True)
    net.save(run_dir / "model" / MODEL_FILE)
    evaluate_run(run_dir, cfg, wall)
    return run_dir


def evaluate_run(run_dir: Path, cfg: dict[str, Any], train_seconds: float | None = None) -> dict[str, float]:
    from delgrad.pipeline import load_split
    from delgrad.report import write_multi_report

    net = MultiNetwork.load(run_dir / "model" / MODEL_FILE)
    results: dict[str, float] = {}
    for split in ("train", "validation", "test"):
        s, _, _ = load_split(run_dir / "data", split)
        r = evaluate_multi(net, s)
        results[f"{split}_acc"], results[f"{split}_loss"] = r.accuracy, r.loss
        if split == "test":
            test_split, test_eval = s, r
    trace = test_eval.output.trace
    tables = [trace.spikes(l, with_layer=True) for l in range(trace.n_layers)]
    pq.write_table(pa.Table.from_batches(tables), run_dir / "spikes_test.parquet", compression="zstd")
    write_multi_report(run_dir, cfg, net, results, test_split, test_eval, train_seconds)
    return results


def readout_values(net: MultiNetwork, split: Split) -> np.ndarray:
    return evaluate_multi(net, split).output.values
