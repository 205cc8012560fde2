"""Pipelines: a TOML file names the data set, encoding, network and training; ``run`` chains
encode -> train -> evaluate -> report into one run directory.

Run directory::

    config.toml          the resolved configuration (after --set overrides)
    data/                spikes.parquet + samples.parquet (encoded data set)
    metrics.parquet      one row per epoch
    hardware.json        in-the-loop runs only: backend, realised configuration, counters and
                         the trained model's accuracy measured on the hardware
    spikes_test_hw.parquet  in-the-loop runs only: the test set's spikes recorded on the hardware
    hw_daemon.log        the log of the daemon the pipeline started (if it started one)
    spikes_test.parquet  test-set spikes of every layer (sample, neuron, time, layer)
    model/               network.npz + model.json (Model.load)
    checkpoint/          resumable training state
    report.md, plots/    the report
"""

from __future__ import annotations

import copy
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from delgrad._core import Neuron, SpikeSet
from delgrad.data.encoding import LatencyEncoder
from delgrad.data.parquet import SpikeDataset, write_dataset
from delgrad.model import Model
from delgrad.network import Network
from delgrad.train import Split, TrainConfig, Trainer, evaluate

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "data": {"dataset": "yinyang", "seed": 0},
    "encoding": {"t_early": 0.15, "t_late": 2.0, "bias_time": 0.9, "replicate": 1, "invert": False},
    "network": {
        "hidden": [30],
        "delay_kind": "synaptic",
        "tau_m": 2.0,
        "tau_s": 1.0,
        "theta": 1.0,
        "weight_mean": [1.5, 0.5],
        "weight_std": [0.8, 0.8],
        "delay_range": [0.0, 0.1],
    },
    "train": {},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str) -> Any:
    """A --set value as TOML would read it (numbers, booleans, lists, quoted strings); a bare
    word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Reads a pipeline TOML, fills defaults, applies ``key.sub=value`` overrides."""
    cfg = _merge(DEFAULTS, tomllib.loads(Path(path).read_text()))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return cfg


def _dump_toml(cfg: dict[str, Any]) -> str:
    """Minimal TOML writer for the resolved config (tables, scalars, lists of scalars)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []

    def table(prefix: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", cfg)
    return "\n".join(lines).lstrip() + "\n"


def _raw_splits(cfg: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    name = cfg["data"]["dataset"]
    if name == "yinyang":
        from delgrad.data.yinyang import yinyang_splits

        return yinyang_splits()
    if name == "digits":
        from delgrad.data.digits import digits_splits

        return digits_splits(seed=int(cfg["data"].get("seed", 0)))
    if name == "temporal":
        from delgrad.data.temporal import temporal_splits

        opts = {k: v for k, v in cfg["data"].items() if k not in ("dataset", "seed")}
        return temporal_splits(seed=int(cfg["data"].get("seed", 0)), **opts)
    raise ValueError(f"data.dataset: unknown data set {name!r} (available: yinyang, digits, temporal, shd, ssc)")


def encoder_of(cfg: dict[str, Any]) -> LatencyEncoder:
    enc = dict(cfg["encoding"])
    if enc.get("bias_time") is False:  # TOML has no null: `bias_time = false` means no bias input
        enc["bias_time"] = None
    return LatencyEncoder(**enc)


SPIKING_AUDIO = ("shd", "ssc")
_AUDIO_DATA_KEYS = {
    "dataset",
    "seed",
    "path",
    "synthetic",
    "validation_fraction",
    "chunk_size",
    "n_train",
    "n_validation",
    "n_test",
    "spikes_per_sample",
    "noise_fraction",
    "band_width",
    "jitter",
    "duration",
}


def _write_spiking_audio(cfg: dict[str, Any], data_dir: Path) -> None:
    """SHD / SSC: stream the real HDF5 files into Parquet, or write the synthetic stand-in
    (``[data] synthetic = true``). Times in milliseconds (:mod:`delgrad.data.shd`)."""
    from delgrad.data import shd

    d = cfg["data"]
    unknown = set(d) - _AUDIO_DATA_KEYS
    if unknown:
        raise ValueError(f"[data]: unknown keys for {d['dataset']}: {sorted(unknown)}")
    seed = int(d.get("seed", 0))
    if d.get("synthetic", False):
        sizes = {s: int(d[f"n_{s}"]) for s in ("train", "validation", "test") if f"n_{s}" in d}
        kw = {k: d[k] for k in ("spikes_per_sample", "noise_fraction", "band_width", "jitter", "duration") if k in d}
        shd.write_synthetic_dataset(data_dir, d["dataset"], seed=seed, sizes=sizes, **kw)
    else:
        shd.write_h5_dataset(
            data_dir,
            d["dataset"],
            d.get("path") or None,
            validation_fraction=float(d.get("validation_fraction", 0.1)),
            seed=seed,
            chunk_size=int(d.get("chunk_size", 512)),
        )


def encode(cfg: dict[str, Any], run_dir: Path) -> Path:
    """Stage 1: the data set, encoded, as Parquet in ``run_dir/data`` (kept if present)."""
    data_dir = run_dir / "data"
    if not (data_dir / "spikes.parquet").exists():
        if cfg["data"]["dataset"] in SPIKING_AUDIO:
            _write_spiking_audio(cfg, data_dir)
        else:
            write_dataset(data_dir, _raw_splits(cfg), encoder_of(cfg))
    return data_dir


def augmented(cfg: dict[str, Any], split: Split, n_inputs: int) -> Split:
    """The training split with one augmented copy appended (``[augment]``, once per run):
    ``channel_shift = k`` shifts every copy's channels by up to ±k, ``blend = true`` mixes
    same-class pairs (:mod:`delgrad.data.augment`), seeded by ``[augment] seed``."""
    from delgrad.data.augment import blend, channel_shift
    from delgrad.data.encoding import spike_batch

    a = cfg.get("augment") or {}
    unknown = set(a) - {"enabled", "channel_shift", "blend", "blend_p", "seed"}
    if unknown:
        raise ValueError(f"[augment]: unknown keys {sorted(unknown)}")
    if not a.get("enabled", True) or not (a.get("channel_shift") or a.get("blend")):
        return split
    rng = np.random.default_rng(int(a.get("seed", cfg["train"].get("seed", 0))))
    n = len(split)
    orig = split.spikes.select()  # the split's spikes as one batch, from memory
    spikes, labels = orig, split.labels
    if a.get("blend"):
        b = blend(spikes, labels, rng, p=float(a.get("blend_p", 0.5)))
        spikes, labels = b.spikes, b.labels
    if a.get("channel_shift"):
        spikes = channel_shift(spikes, int(a["channel_shift"]), n_inputs, rng, n_samples=n)
    col = lambda rb, c: rb.column(c).to_numpy()  # noqa: E731
    both = spike_batch(
        np.concatenate([col(orig, "sample"), col(spikes, "sample") + n]),
        np.concatenate([col(orig, "neuron"), col(spikes, "neuron")]),
        np.concatenate([col(orig, "time"), col(spikes, "time")]),
    )
    return Split(SpikeSet(both, 2 * n), np.concatenate([split.labels, labels]))


def load_split(data_dir: Path, split: str) -> tuple[Split, np.ndarray, int]:
    """A split read back from Parquet: the core's SpikeSet, labels, raw features, n_inputs."""
    ds = SpikeDataset(data_dir, split)
    batch = ds.all()
    spikes = SpikeSet(batch.spikes, len(batch.labels))
    return Split(spikes, np.asarray(batch.labels, dtype=np.int64)), ds.features(), ds.n_inputs


def build_network(cfg: dict[str, Any], n_in: int, n_out: int) -> Network:
    n = cfg["network"]
    neuron = Neuron(tau_m=n["tau_m"], tau_s=n["tau_s"], theta=n["theta"])
    return Network.random(
        [n_in, *n["hidden"], n_out],
        neuron,
        delay_kind=n["delay_kind"],
        weight_mean=n["weight_mean"],
        weight_std=n["weight_std"],
        delay_range=tuple(n["delay_range"]),
        seed=int(cfg["train"].get("seed", 0)),
    )


def n_classes(cfg: dict[str, Any]) -> int:
    d = cfg["data"]
    if d["dataset"] == "temporal":
        import math

        return int(d.get("n_classes") or math.factorial(int(d.get("n_channels", 3))))
    return {"yinyang": 3, "digits": 10, "shd": 20, "ssc": 35}[d["dataset"]]


def run(
    config_path: str | Path,
    overrides: list[str] = (),
    out: str | Path | None = None,
    progress: bool = True,
    forward=None,
) -> Path:
    """Runs a pipeline; returns the run directory. Resumes an interrupted run in ``out``."""
    cfg = load_config(config_path, overrides)
    if cfg.get("hardware"):  # --- hardware hook: a given endpoint is checked before any work
        from delgrad.hardware.session import check_endpoint

        check_endpoint(cfg["hardware"])
    run_dir = Path(out) if out else Path("runs") / f"{cfg['name']}-seed{cfg['train'].get('seed', 0)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(_dump_toml(cfg))

    data_dir = encode(cfg, run_dir)
    train, _, n_in = load_split(data_dir, "train")
    val, _, _ = load_split(data_dir, "validation")
    test, _, _ = load_split(data_dir, "test")
    if cfg.get("augment"):
        train = augmented(cfg, train, n_in)
    if cfg["network"].get("mode", "ttfs") == "multi":
        from delgrad import pipeline_multi

        return pipeline_multi.run(cfg, run_dir, {"train": train, "validation": val, "test": test}, n_in, progress)

    net = build_network(cfg, n_in, n_classes(cfg))
    tcfg = TrainConfig.from_dict(cfg["train"])
    splits = {"train": train, "validation": val, "test": test}

    with hardware_loop(cfg, run_dir) as loop:
        trainer = Trainer(net, tcfg, forward=forward or loop)
        t0 = time.perf_counter()
        with _progress(progress, tcfg.epochs) as on_epoch:
            history = trainer.fit(train, {"validation": val, "test": test}, run_dir=run_dir, on_epoch=on_epoch)
        wall = time.perf_counter() - t0
        if loop is not None:
            _write_hardware_record(run_dir, loop, net, splits, tcfg, cfg)
    pl.DataFrame(history).write_parquet(run_dir / "metrics.parquet")

    model = Model(net, encoder_of(cfg), cfg["data"]["dataset"], int(_raw_dim(data_dir)))
    model.save(run_dir)
    evaluate_run(run_dir, train_seconds=wall)
    return run_dir


@contextmanager
def hardware_loop(cfg: dict[str, Any], run_dir: Path) -> Iterator[Any]:
    """The pipeline's ``[hardware]`` table as a :class:`HardwareLoop` (None without one).

    --- hardware hook: everything is in :mod:`delgrad.hardware.session` (endpoint check, the
    pipeline's own daemon and its restarts, the keys of ``[hardware]``). ---
    """
    hw = cfg.get("hardware")
    if not hw or not hw.get("enabled", True):
        yield None
        return
    from delgrad.hardware.session import hardware_session

    with hardware_session(hw, run_dir, seed=int(cfg["train"].get("seed", 0))) as loop:
        yield loop


def _write_hardware_record(
    run_dir: Path, loop: Any, net: Network, splits: dict[str, Split], tcfg: TrainConfig, cfg: dict[str, Any]
) -> None:
    """--- hardware hook: :func:`delgrad.hardware.session.write_hardware_record` writes
    ``hardware.json`` and ``spikes_test_hw.parquet``. ---"""
    from delgrad.hardware.session import write_hardware_record

    write_hardware_record(run_dir, loop, net, splits, tcfg.loss, cfg["hardware"])


def _raw_dim(data_dir: Path) -> int:
    return SpikeDataset(data_dir, "test").features().shape[1]


def evaluate_run(run_dir: str | Path, train_seconds: float | None = None) -> dict[str, float]:
    """Stage 3: re-evaluates the saved model on every split, writes the test spikes of every
    layer and the report. Usable on any finished run directory (``delgrad evaluate``)."""
    from delgrad.report import write_report

    run_dir = Path(run_dir)
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    if cfg.get("network", {}).get("mode", "ttfs") == "multi":
        from delgrad import pipeline_multi

        return pipeline_multi.evaluate_run(run_dir, cfg, train_seconds)
    model = Model.load(run_dir)
    tcfg = TrainConfig.from_dict(cfg.get("train", {}))
    results: dict[str, float] = {}
    test_eval = None
    for split in ("train", "validation", "test"):
        s, _, _ = load_split(run_dir / "data", split)
        r = evaluate(model.network, s, tcfg.loss)
        results[f"{split}_acc"] = r.accuracy
        results[f"{split}_loss"] = r.loss
        if split == "test":
            test_eval = (s, r)
    assert test_eval is not None
    s, r = test_eval
    tables = [r.trace.spikes(l, with_layer=True) for l in range(r.trace.n_layers)]
    pq.write_table(pa.Table.from_batches(tables), run_dir / "spikes_test.parquet", compression="zstd")
    write_report(run_dir, cfg, model, results, s, r, train_seconds)
    return results


class _progress:
    """A rich progress bar showing epoch, loss and accuracy (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=self.total, info="")

        def on_epoch(row: dict[str, Any]) -> None:
            info = (
                f"loss {row['train_loss']:.4f}  train {row['train_acc']:.3f}  "
                f"val {row.get('validation_acc', float('nan')):.3f}  "
                f"test {row.get('test_acc', float('nan')):.3f}"
            )
            self.bar.update(self.task, completed=row["epoch"], info=info)

        return on_epoch

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
