"""Pipelines: a TOML file (:mod:`delgrad.config`) names the data set, encoding, network and
training; :func:`run` chains encode -> train -> evaluate -> report into one run directory, for
every network kind.

Run directory (owned through its manifest, :mod:`delgrad.rundir`)::

    run.json             manifest: delgrad version, config hash, status, times
    config.toml          the resolved configuration (after --set overrides)
    data/                spikes.parquet + samples.parquet (encoded data set); train.arrow,
                         validation.arrow, test.arrow: each split's spikes as one uncompressed
                         Arrow record batch, written on first load and memory-mapped
    checkpoint/          state.npz: the resumable training state (one atomic file)
    metrics.parquet      one row per epoch, rewritten atomically after every epoch
    model/               model.json + network.npz (TTFS) or multi_network.npz (multi-spike)
    spikes_test.parquet  test-set spikes of every network layer (sample, neuron, time, layer)
    report.md, plots/    the report
    hardware.json        in-the-loop runs only: backend, realised configuration, counters and
                         the trained model's accuracy measured on the hardware
    spikes_test_hw.parquet  in-the-loop runs only: the test set's spikes recorded on the hardware
    hw_daemon.log        the log of the daemon the pipeline started (if it started one)
"""

from __future__ import annotations

import functools
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from delgrad._core import Neuron, Trace
from delgrad.config import FEATURE_DATASETS, SPIKING_AUDIO, ConfigError, PipelineConfig, load_config
from delgrad.data.encoding import LatencyEncoder
from delgrad.data.mapped import mapped_spikes
from delgrad.data.parquet import SpikeDataset, write_dataset
from delgrad.data.split import Split
from delgrad.model import Model
from delgrad.multi import MultiNetwork
from delgrad.network import Network
from delgrad.rundir import RunDir, RunDirError, atomic_path, atomic_write_parquet, read_config
from delgrad.train import EvalResult, Trainer, evaluate_any

__all__ = [
    "ConfigError",
    "RunDirError",
    "build_network",
    "encode",
    "encoder_of",
    "evaluate_run",
    "load_config",
    "load_split",
    "n_classes",
    "run",
]

SPLITS = ("train", "validation", "test")


# --- stage 1: data -----------------------------------------------------------------------------


def _raw_splits(cfg: PipelineConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = cfg.data
    if data.dataset == "features":
        from delgrad.data import user

        return user.feature_splits(
            Path(data.path),
            validation_fraction=data.validation_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
        )
    if data.dataset == "yinyang":
        from delgrad.data.yinyang import yinyang_splits

        return yinyang_splits()
    if data.dataset == "digits":
        from delgrad.data.digits import digits_splits

        return digits_splits(seed=data.seed)
    from delgrad.data.temporal import temporal_splits

    return temporal_splits(
        seed=data.seed, **data.options("n_channels", "n_classes", "gap", "jitter", "onset_max", "span")
    )


def encoder_of(cfg: PipelineConfig) -> LatencyEncoder:
    e = cfg.encoding
    return LatencyEncoder(e.t_early, e.t_late, e.bias_time, e.replicate, e.invert, e.silent_value)


def _write_spiking_audio(cfg: PipelineConfig, data_dir: Path) -> None:
    """SHD / SSC: stream the real HDF5 files into Parquet, or write the synthetic stand-in
    (``[data] synthetic = true``). Times in milliseconds (:mod:`delgrad.data.shd`)."""
    from delgrad.data import shd

    d = cfg.data
    if d.synthetic:
        sizes = {s: getattr(d, f"n_{s}") for s in SPLITS if getattr(d, f"n_{s}") is not None}
        options = d.options("spikes_per_sample", "noise_fraction", "band_width", "jitter", "duration")
        shd.write_synthetic_dataset(data_dir, d.dataset, seed=d.seed, sizes=sizes, **options)
    else:
        shd.write_h5_dataset(
            data_dir,
            d.dataset,
            d.path or None,
            validation_fraction=d.validation_fraction,
            seed=d.seed,
            chunk_size=d.chunk_size,
        )


def _write_user_spikes(cfg: PipelineConfig, data_dir: Path) -> None:
    """A researcher's own spikes (:mod:`delgrad.data.user`), checked, in the usual layout."""
    from delgrad.data import user
    from delgrad.data.parquet import write_spike_dataset

    d = cfg.data
    common = dict(
        n_inputs=d.n_inputs,
        validation_fraction=d.validation_fraction,
        test_fraction=d.test_fraction,
        seed=d.seed,
        chunk_size=d.chunk_size,
    )
    if d.dataset == "parquet":
        splits, n_inputs, _ = user.parquet_splits(Path(d.path), **common)
    else:
        splits, n_inputs, _ = user.tonic_splits(Path(d.path), sensor_size=d.sensor_size, **common)
    write_spike_dataset(data_dir, splits, n_inputs, metadata={"dataset": d.dataset, "path": str(d.path)})


def encode(cfg: PipelineConfig, run_dir: Path) -> Path:
    """Stage 1: the data set, encoded, as Parquet in ``run_dir/data`` (kept if present). Written
    beside and renamed into place, so an interrupted encoding is never taken for a finished one."""
    data_dir = Path(run_dir) / "data"
    if data_dir.exists():
        return data_dir
    partial = Path(run_dir) / "data.partial"
    if partial.exists():
        shutil.rmtree(partial)
    if cfg.data.dataset in SPIKING_AUDIO:
        _write_spiking_audio(cfg, partial)
    elif cfg.data.dataset in ("parquet", "tonic"):
        _write_user_spikes(cfg, partial)
    elif cfg.data.dataset == "arrays":
        raise ConfigError("data.dataset: 'arrays' are given from Python (delgrad.fit); this run has no data/")
    else:
        write_dataset(partial, _raw_splits(cfg), encoder_of(cfg))
    partial.rename(data_dir)
    return data_dir


def load_split(data_dir: Path, split: str) -> tuple[Split, np.ndarray, int]:
    """A split of the data set in ``data_dir``: the core's SpikeSet, labels, raw features,
    n_inputs. The spikes are memory-mapped from ``data_dir/<split>.arrow``, written from the
    Parquet data set on first use and reused after (:mod:`delgrad.data.mapped`): the split is
    file-backed memory the kernel can page out, not an anonymous copy."""
    ds = SpikeDataset(data_dir, split)
    spikes = mapped_spikes(ds)
    return Split(spikes, ds.labels.copy()), ds.features(), ds.n_inputs


def training_split(data_dir: Path, cfg: PipelineConfig) -> Split:
    """The training split as the trainer sees it: read from ``data_dir``, with its ``[augment]``
    (what a data-parallel worker reads from a shared file system)."""
    train, _, n_inputs = load_split(data_dir, "train")
    return augmented(cfg, train, n_inputs)


def augmented(cfg: PipelineConfig, split: Split, n_inputs: int) -> Split:
    """The training split with ``[augment]``: every epoch also trains on a new augmented copy of
    it, made batch by batch (:class:`delgrad.data.augment.EpochAugmentation`):
    ``channel_shift = k`` shifts each copy's channels by up to ±k, ``blend = true`` mixes
    same-class pairs, seeded by ``[augment] seed`` (default ``train.seed``)."""
    from delgrad.data.augment import EpochAugmentation

    a = cfg.augment
    if a is None or not a.enabled or not (a.channel_shift or a.blend):
        return split
    seed = a.seed if a.seed is not None else cfg.train.seed
    augment = EpochAugmentation(seed, n_inputs, a.channel_shift, a.blend, a.blend_p)
    return Split(split.spikes, split.labels, augment)


# --- stage 2: the network and training ---------------------------------------------------------


def n_classes(cfg: PipelineConfig, data_dir: Path | None = None) -> int:
    """The class count: fixed by a built-in data set, else the largest label in the data + 1."""
    d = cfg.data
    if d.dataset == "temporal":
        return d.n_classes or math.factorial(d.n_channels or 3)
    known = {"yinyang": 3, "digits": 10, "shd": 20, "ssc": 35}
    if d.dataset in known:
        return known[d.dataset]
    if data_dir is None:
        raise ValueError(f"the class count of a {d.dataset!r} data set comes from its data: pass data_dir")
    largest = pl.scan_parquet(Path(data_dir) / "samples.parquet").select(pl.col("label").max()).collect().item()
    return int(largest) + 1


def build_network(cfg: PipelineConfig, n_in: int, n_out: int) -> Network | MultiNetwork:
    """The configured network, initialised from ``train.seed``."""
    n = cfg.network
    sizes = [n_in, *n.hidden, n_out]
    if not cfg.multi:
        return Network.random(
            sizes,
            Neuron(tau_m=n.tau_m, tau_s=n.tau_s, theta=n.theta),
            delay_kind=n.delay_kind,
            weight_mean=n.weight_mean,
            weight_std=n.weight_std,
            delay_range=tuple(n.delay_range),
            seed=cfg.train.seed,
        )
    neuron = Neuron(tau_m=n.tau_m, tau_s=n.tau_s, theta=n.theta, mode="multi", t_ref=n.t_ref, t_end=n.t_end)
    readout_neuron = Neuron(
        tau_m=n.readout_tau_m or n.tau_m, tau_s=n.readout_tau_s or n.tau_s, theta=1.0, mode="multi", t_end=n.t_end
    )
    return MultiNetwork.random(
        sizes,
        neuron,
        readout_neuron,
        delay_kind=n.delay_kind,
        weight_mean=n.weight_mean,
        weight_std=n.weight_std,
        delay_range=tuple(n.delay_range),
        readout_kind=n.readout,
        t_end=n.t_end,
        tau_w=n.tau_w,
        recurrent=n.recurrent,
        recurrent_std=n.recurrent_std,
        recurrent_delay_range=None if n.recurrent_delay_range is None else tuple(n.recurrent_delay_range),
        seed=cfg.train.seed,
    )


def run(
    config_path: str | Path,
    overrides: list[str] = (),
    out: str | Path | None = None,
    progress: bool = True,
    forward: Any = None,
    restart: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Runs a pipeline file; returns the run directory. See :func:`run_config`."""
    cfg = load_config(config_path, overrides)
    return run_config(cfg, out, progress=progress, forward=forward, restart=restart, say=say)


def default_run_dir(cfg: PipelineConfig) -> Path:
    return Path("runs") / f"{cfg.name}-seed{cfg.train.seed}"


def run_config(
    cfg: PipelineConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    forward: Any = None,
    restart: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Runs a parsed pipeline into ``out`` (default ``runs/<name>-seed<seed>``).

    An interrupted run there resumes from its last checkpoint and ends exactly where an
    uninterrupted one would; a finished one is left as it is; a directory holding another
    configuration, or anything that is not a delgrad run, is refused (:mod:`delgrad.rundir`).
    """
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    run_dir = Path(out) if out else default_run_dir(cfg)
    if cfg.hardware is not None:  # a given endpoint answers a short hello before any work
        from delgrad.hardware.session import check_endpoint

        check_endpoint(cfg.hardware)
    with RunDir.open(run_dir, cfg, restart=restart) as owned:
        if owned.status == "finished":
            say(f"{run_dir}: already finished with this configuration; nothing to do (--restart runs it again)")
            return run_dir
        owned.set_status("running", error=None)
        try:
            seconds = _train_and_evaluate(cfg, run_dir, progress, forward, say)
        except BaseException as e:
            owned.set_status("failed", error=f"{type(e).__name__}: {e}")
            raise
        owned.set_status("finished", train_seconds=seconds)
    return run_dir


def _train_and_evaluate(
    cfg: PipelineConfig, run_dir: Path, progress: bool, forward: Any, say, net: Network | MultiNetwork | None = None
) -> float:
    data_dir = encode(cfg, run_dir)
    train, _, n_in = load_split(data_dir, "train")
    val, _, _ = load_split(data_dir, "validation")
    test, _, _ = load_split(data_dir, "test")
    train = augmented(cfg, train, n_in)
    if net is None:
        net = build_network(cfg, n_in, n_classes(cfg, data_dir))

    with hardware_loop(cfg, run_dir) as loop, shard_workers(cfg, net, train, data_dir, say) as executor:
        trainer = Trainer(net, cfg.train, forward=forward or loop, shards=cfg.distributed.shards, executor=executor)
        with _progress(progress, cfg.train.epochs, lambda: trainer.last_step) as (on_epoch, on_batch):
            if trainer.resume(run_dir):
                where = f" (batch position {trainer.position} of the epoch)" if trainer.position else ""
                say(f"{run_dir}: resuming after epoch {trainer.epoch} of {cfg.train.epochs}{where}")
            board = _tensorboard(cfg, run_dir, first_step=trainer.epoch + 1)

            def epoch_done(row: dict[str, Any]) -> None:
                _write_metrics(run_dir, trainer.history)
                if board is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)):
                            board.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
                    board.flush()
                on_epoch(row)

            try:
                history = trainer.fit(train, {"validation": val, "test": test}, run_dir, epoch_done, on_batch)
            finally:
                if board is not None:
                    board.close()
        _write_metrics(run_dir, history)
        if trainer.patience_exhausted() and trainer.epoch < cfg.train.epochs:
            say(
                f"{run_dir}: stopped early after epoch {trainer.epoch}: no better {cfg.train.select_on} accuracy "
                f"for {cfg.train.patience} epochs (best: epoch {trainer.best_epoch})"
            )
        if loop is not None:
            _write_hardware_record(run_dir, loop, net, {"train": train, "validation": val, "test": test}, cfg)

    encoder = encoder_of(cfg) if cfg.data.dataset in FEATURE_DATASETS else None
    Model(net, encoder, cfg.data.dataset, _raw_dim(data_dir)).save(run_dir)
    seconds = float(sum(row["seconds"] for row in history))
    evaluate_run(run_dir, train_seconds=seconds, _owned=True)
    return seconds


@contextmanager
def shard_workers(
    cfg: PipelineConfig, net: Network | MultiNetwork, train: Split, data_dir: Path, say: Callable[[str], None]
) -> Iterator[Any]:
    """The Ray workers of ``[distributed]`` (:class:`delgrad.distributed.RayShards`; None for
    one process), stopped on the way out. Says at the end what a step cost in communication."""
    dist = cfg.distributed
    if not dist.enabled:
        yield None
        return
    from delgrad.distributed import RayShards

    read_files = functools.partial(training_split, Path(data_dir).resolve(), cfg)
    with RayShards(dist, net, cfg.train, train, read_files, say) as workers:
        where = dist.address or "a local Ray"
        say(
            f"distributed: {dist.workers} worker(s) on {where}, {dist.shards} shards per batch, "
            f"data from {workers.source.kind}"
        )
        try:
            yield workers
        finally:
            say(f"distributed: {workers.times.summary()}")


def _tensorboard(cfg: PipelineConfig, run_dir: Path, first_step: int) -> Any:
    """A TensorBoard writer (``[log] tensorboard = true``); a resumed run purges the steps it
    will write again, so the event files hold each epoch once."""
    if not cfg.log.tensorboard:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError("log.tensorboard: needs the tensorboardX package (pip install 'delgrad[log]')") from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_parquet(run_dir / "metrics.parquet", pl.DataFrame(history))


@contextmanager
def hardware_loop(cfg: PipelineConfig, run_dir: Path) -> Iterator[Any]:
    """The pipeline's ``[hardware]`` table as a :class:`HardwareLoop` (None without one).

    :mod:`delgrad.hardware.session` holds the endpoint check and the pipeline's own daemon
    (started on a free loopback port, restarted when it dies, stopped by its pid).
    """
    hw = cfg.hardware
    if hw is None or not hw.enabled:
        yield None
        return
    from delgrad.hardware.session import hardware_session

    with hardware_session(hw, run_dir, seed=cfg.train.seed) as loop:
        yield loop


def _write_hardware_record(
    run_dir: Path, loop: Any, net: Network, splits: dict[str, Split], cfg: PipelineConfig
) -> None:
    """Measures the trained (restored best) parameters on the hardware: ``hardware.json`` and
    ``spikes_test_hw.parquet`` (:func:`delgrad.hardware.session.write_hardware_record`)."""
    from delgrad.hardware.session import write_hardware_record

    write_hardware_record(run_dir, loop, net, splits, cfg.train.loss, cfg.hardware)


def _raw_dim(data_dir: Path) -> int:
    return SpikeDataset(data_dir, "test").features().shape[1]


# --- stage 3: evaluation and report ------------------------------------------------------------


def evaluate_run(run_dir: str | Path, train_seconds: float | None = None, *, _owned: bool = False) -> dict[str, float]:
    """Stage 3: re-evaluates the saved model on every split, writes the test spikes of every
    layer and the report. Usable on any finished run directory (``delgrad evaluate``); the
    training wall time comes from the run's manifest."""
    from delgrad.report import write_report

    run_dir = Path(run_dir)
    if not _owned:
        with RunDir.attach(run_dir) as owned:
            if train_seconds is None:
                train_seconds = owned.manifest.get("train_seconds")
            return evaluate_run(run_dir, train_seconds, _owned=True)
    cfg = read_config(run_dir)
    model = Model.load(run_dir)
    results: dict[str, float] = {}
    for split in SPLITS:
        # Only the test split's spikes are written and plotted: the others are evaluated without
        # keeping them (an SHD-sized training split's hidden spikes alone take gigabytes), and
        # each split is released before the next is read.
        s, _, _ = load_split(run_dir / "data", split)
        r = evaluate_any(model.network, s, cfg.train, keep_trace=split == "test")
        results[f"{split}_acc"], results[f"{split}_loss"] = r.accuracy, r.loss
        if split == "test":
            test_split, test_eval = s, r
        del s, r
    _write_predictions(run_dir, test_split, test_eval, cfg)
    _write_layer_spikes(run_dir / "spikes_test.parquet", test_eval.trace)
    write_report(run_dir, cfg, model, results, test_split, test_eval, train_seconds)
    return results


def _write_layer_spikes(path: Path, trace: Trace) -> None:
    """Every layer's spikes as one Parquet file, converted and written a layer at a time (one
    layer's Arrow copy in memory, not all of them), replaced atomically."""
    import pyarrow.parquet as pq

    schema = trace.spikes(0, with_layer=True).schema
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for index in range(trace.n_layers):
            writer.write_batch(trace.spikes(index, with_layer=True))


def _epoch_line(row: dict[str, Any]) -> str:
    return (
        f"loss {row['train_loss']:.4f}  train {row['train_acc']:.3f}  "
        f"val {row.get('validation_acc', float('nan')):.3f}  "
        f"test {row.get('test_acc', float('nan')):.3f}"
    )


def _write_predictions(run_dir: Path, split: Split, ev: EvalResult, cfg: PipelineConfig) -> None:
    """``predictions.parquet``: one row per test sample with its label, the prediction and the
    network's output (first spike time per output neuron, inf if silent; or readout values)."""
    if ev.values is not None:
        output_name, output = "readout_values", ev.values
    else:
        output_name, output = "output_times", ev.trace.first_times(ev.trace.n_layers - 1)
    n, k = output.shape
    table = pa.table(
        {
            "sample": pa.array(np.arange(n, dtype=np.uint32)),
            "label": pa.array(split.labels),
            "prediction": pa.array(np.asarray(ev.predictions, dtype=np.int64)),
            "correct": pa.array(np.asarray(ev.predictions) == split.labels),
            output_name: pa.FixedSizeListArray.from_arrays(pa.array(output.ravel()), k),
        }
    )
    atomic_write_parquet(run_dir / "predictions.parquet", table)


class _progress:
    """Progress as the output allows: a rich bar on a terminal (epochs, and batches with the
    rate), lines otherwise (a log file, a pipe): one per epoch, and within long epochs one every
    :attr:`EVERY` seconds at most, so a piped log shows a long run is alive without filling up.
    Nothing when disabled. Yields ``(on_epoch, on_batch)``.

    Rates are over the training steps of the current epoch (evaluations and checkpoints left
    out): samples per second, and synaptic events per second, every spike of the forward pass
    (input and hidden) times its fan-out. ``last_step()`` gives the last batch's ``(size,
    events, seconds)`` (:attr:`delgrad.train.Trainer.last_step`)."""

    EVERY = 10.0

    def __init__(self, enabled: bool, total: int, last_step: Callable[[], tuple[int, int, float]]) -> None:
        self.enabled, self.total, self.last_step = enabled, total, last_step
        self.bar = None
        self.sums = {"done": 0, "samples": 0, "events": 0, "seconds": 0.0}

    def _rates(self, done: int) -> tuple[float, float]:
        """Samples and synaptic events per second of this epoch's steps so far."""
        sums = self.sums
        if done <= sums["done"]:  # a new epoch (positions grow within one)
            sums.update(samples=0, events=0, seconds=0.0)
        size, events, seconds = self.last_step()
        sums["done"] = done
        sums["samples"] += size
        sums["events"] += events
        sums["seconds"] += seconds
        elapsed = max(sums["seconds"], 1e-9)
        return sums["samples"] / elapsed, sums["events"] / elapsed

    def __enter__(self):
        if not self.enabled:
            return (lambda row: None), None
        if not sys.stdout.isatty():
            printed = {"at": time.perf_counter()}

            def print_line(row: dict[str, Any]) -> None:
                print(f"epoch {row['epoch']}/{self.total}  {_epoch_line(row)}  {row['seconds']:.1f} s", flush=True)

            def print_batches(done: int, total: int, loss: float) -> None:
                samples, events = self._rates(done)
                now = time.perf_counter()
                if now - printed["at"] >= self.EVERY and done < total:
                    printed["at"] = now
                    print(
                        f"  {done}/{total} samples  loss {loss:.4f}  {samples:.1f} samples/s  "
                        f"{events:,.0f} synaptic events/s",
                        flush=True,
                    )

            return print_line, print_batches
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("epoch", total=self.total, info="")
        batch_task = self.bar.add_task("batch", total=None, info="")

        def on_epoch(row: dict[str, Any]) -> None:
            self.bar.update(self.task, completed=row["epoch"], info=_epoch_line(row))

        def on_batch(done: int, total: int, loss: float) -> None:
            samples, events = self._rates(done)
            info = f"loss {loss:.4f}  {samples:.1f} samples/s  {events:,.0f} synaptic events/s"
            self.bar.update(batch_task, completed=done, total=total, info=info)

        return on_epoch, on_batch

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
