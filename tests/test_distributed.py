"""Data-parallel training: fixed shards summed in shard order (the same bits for any number of
workers), Ray workers reading the run's Parquet files or the object store, a killed worker
replaced, checkpoints and resume with workers, the [distributed] table, progress in events/s.

Ray runs locally with 2 CPUs (one module-wide instance, shut down at the end)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from delgrad import _core, cli, pipeline
from delgrad.config import ConfigError, DistributedConfig, load_config
from delgrad.multi import MultiNetwork
from delgrad.network import Network
from delgrad.rundir import RunDir
from delgrad.shards import assign, fold, shard_sizes
from delgrad.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SYN = ROOT / "pipelines" / "yinyang_synaptic.toml"
TEMPORAL = ROOT / "pipelines" / "temporal.toml"
ONE_EPOCH = ["train.epochs=1"]
# Weak initial weights: the first batches wake silent neurons by weight bumping, so the
# whole-batch silent statistics combined from the workers' shards decide steps too.
BUMPING = ["train.epochs=1", "network.weight_mean=[0.1, 0.1]"]


def metrics(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "metrics.parquet").drop("seconds")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """The one-process runs the distributed ones must equal, bit for bit."""
    d = tmp_path_factory.mktemp("reference")
    return {
        "multi": pipeline.run(TEMPORAL, ONE_EPOCH, d / "multi", progress=False),
        "ttfs": pipeline.run(SYN, BUMPING, d / "ttfs", progress=False),
    }


# --- shards in the core (no Ray) ---------------------------------------------------------------


def test_shard_sizes_and_runs_of_shards() -> None:
    assert shard_sizes(10, 4) == [3, 3, 2, 2]
    assert shard_sizes(3, 8) == [1, 1, 1]
    assert assign(8, 3) == [range(0, 3), range(3, 6), range(6, 8)]
    assert assign(2, 3) == [range(0, 1), range(1, 2), range(2, 2)]
    a, b, c = np.array([1e16]), np.array([1.0]), np.array([1.0])
    assert fold([a, b, c])[0] == (1e16 + 1.0) + 1.0 != 1e16 + (1.0 + 1.0), "left to right, never reassociated"
    with pytest.raises(ValueError, match="shards >= 1"):
        shard_sizes(4, 0)


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


def test_network_backward_per_shard_is_each_shard_alone() -> None:
    """One core call with shards= gives, per shard, the bits of that shard as its own batch."""
    rng = np.random.default_rng(1)
    n = 80  # above the TTFS serial threshold: the shards' chunks run in parallel
    x = rng.uniform(0, 2, (n, 5))
    rows = [(s, j, x[s, j]) for s in range(n) for j in range(5)]
    spikes = _core.SpikeSet(
        pl.DataFrame(rows, schema={"sample": pl.UInt32, "neuron": pl.UInt32, "time": pl.Float64}, orient="row"), n
    )
    net = Network.random([5, 12, 3], _core.Neuron(), seed=3)
    select = rng.permutation(n).astype(np.uint32)
    trace = net.forward(spikes, select=select)
    grad = rng.normal(size=(n, 3))
    sizes = [30, 25, 25]
    together = net.backward(spikes, trace, grad, select=select, shards=sizes)
    start = 0
    for k, size in enumerate(sizes):
        part = select[start : start + size]
        alone = net.backward(spikes, net.forward(spikes, select=part), grad[start : start + size], select=part)
        for (gw, gd), (aw, ad) in zip(together.layers, alone.layers):
            assert _bits(gw[k]) == _bits(aw) and _bits(gd[k]) == _bits(ad), k
        start += size
    whole = net.backward(spikes, trace, grad, select=select)
    np.testing.assert_array_equal(together.inputs, whole.inputs)
    with pytest.raises(_core.ShapeError, match="add up to the batch's 80 samples"):
        net.backward(spikes, trace, grad, select=select, shards=[30, 30])


def test_multi_network_backward_per_shard_is_each_shard_alone() -> None:
    """Recurrent layers and the readout too; shards of 9 samples span several core chunks."""
    from delgrad.data.encoding import encode_latency
    from delgrad.data.temporal import temporal_patterns

    x, labels = temporal_patterns(24, seed=0)
    spikes, n_in = encode_latency(x, t_early=0.0, t_late=30.0)
    spike_set = _core.SpikeSet(spikes, 24)
    neuron = _core.Neuron(tau_m=1.0, tau_s=1.0, mode="multi", t_end=60.0)
    net = MultiNetwork.random([n_in, 20, 6], neuron, neuron, delay_range=(0.0, 25.0), recurrent=True, seed=2)
    select = np.arange(24, dtype=np.uint32)[::-1].copy()
    out = net.forward(spike_set, select=select)
    sizes = [9, 8, 7]
    _, dy, _ = _core.readout_cross_entropy(out.values, labels[select])
    together = net.flat_grads(net.backward(spike_set, out, dy, select=select, shards=sizes))
    start = 0
    for k, size in enumerate(sizes):
        part = select[start : start + size]
        alone_out = net.forward(spike_set, select=part)
        alone = net.flat_grads(net.backward(spike_set, alone_out, dy[start : start + size], select=part))
        assert all(_bits(g[k]) == _bits(a) for g, a in zip(together, alone)), k
        start += size


def test_a_shards_loss_gradient_is_scaled_by_the_whole_batch() -> None:
    values = np.random.default_rng(0).normal(size=(6, 4))
    labels = np.array([0, 1, 2, 3, 0, 1])
    loss, dy, _ = _core.readout_cross_entropy(values, labels)
    head = _core.readout_cross_entropy(values[:4], labels[:4], batch_size=6)
    tail = _core.readout_cross_entropy(values[4:], labels[4:], batch_size=6)
    assert _bits(np.concatenate([head[1], tail[1]])) == _bits(dy)
    assert head[0] + tail[0] == pytest.approx(loss, rel=1e-14)
    with pytest.raises(_core.ShapeError, match="batch_size 3 is smaller than the 4 rows"):
        _core.readout_cross_entropy(values[:4], labels[:4], batch_size=3)


# --- the [distributed] table -------------------------------------------------------------------


def test_distributed_table_is_checked_like_the_others() -> None:
    cfg = load_config(TEMPORAL, ["distributed.workers=2", "distributed.address=auto"])
    assert cfg.distributed == DistributedConfig(workers=2, address="auto")
    bad = {
        "distributed.worker=2": "distributed.worker: unknown key (valid keys under [distributed]: address, ",
        "distributed.workers=two": "--set distributed.workers: expected an integer, got 'two'",
        "distributed.workers=0": "distributed.workers: must be >= 1, got 0",
        "distributed.data=nfs": "distributed.data: expected one of 'auto', 'files', 'object_store', got 'nfs'",
        "distributed.address=nowhere": "distributed.address: expected 'auto', 'ray://HOST:PORT' or 'HOST:PORT'",
    }
    for item, message in bad.items():
        with pytest.raises(ConfigError) as e:
            load_config(TEMPORAL, [item])
        assert message in str(e.value) and "\n" not in str(e.value), item
    with pytest.raises(ConfigError, match="9 workers for 8 shards per batch"):
        load_config(TEMPORAL, ["distributed.workers=9"])
    with pytest.raises(ConfigError, match="training in the loop .* runs in one process"):
        load_config(ROOT / "pipelines" / "yinyang_hw.toml", ["distributed.workers=2"])


def test_only_the_shard_count_is_part_of_a_runs_hash(tmp_path: Path) -> None:
    """Workers, address and data source decide where shards are computed, never what they
    are: a run directory resumes under other values; another shard count is another run."""
    base = load_config(TEMPORAL, ONE_EPOCH)
    moved = load_config(TEMPORAL, [*ONE_EPOCH, "distributed.workers=4", "distributed.address=ray://head:10001"])
    assert moved.digest() == base.digest()
    assert load_config(TEMPORAL, [*ONE_EPOCH, "distributed.shards=4"]).digest() != base.digest()
    with RunDir.open(tmp_path / "r", base):
        pass
    with RunDir.open(tmp_path / "r", moved) as again:
        assert again.resumed


def test_missing_ray_is_one_line_and_one_worker_needs_none(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "two"
    assert cli.main(["run", str(TEMPORAL), "--set", "train.epochs=1", "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'delgrad[distributed]'" in err, err
    one = tmp_path / "one"
    assert (
        cli.main(["run", str(TEMPORAL), "--set", "train.epochs=1", "--workers", "1", "--quiet", "--out", str(one)]) == 0
    )
    assert (one / "metrics.parquet").exists()


# --- workers on a local Ray --------------------------------------------------------------------


@pytest.mark.parametrize("data", ["files", "object_store"])
def test_two_workers_give_the_bits_of_one_multi_spike(ray_local, references, tmp_path: Path, data: str) -> None:
    said: list[str] = []
    cfg = load_config(TEMPORAL, [*ONE_EPOCH, "distributed.workers=2", f"distributed.data={data}"])
    run = pipeline.run_config(cfg, tmp_path / "run", progress=False, say=said.append)
    assert metrics(run).equals(metrics(references["multi"]))
    assert any(f"2 worker(s) on a local Ray, 8 shards per batch, data from {data}" in s for s in said), said
    assert any("0 worker(s) replaced" in s for s in said), said


def test_two_workers_give_the_bits_of_one_ttfs_with_weight_bumping(ray_local, references, tmp_path: Path) -> None:
    cfg = load_config(SYN, [*BUMPING, "distributed.workers=2"])
    # The configuration bumps weights on its first batch (whole-batch silent statistics).
    train, _, n_in = pipeline.load_split(references["ttfs"] / "data", "train")
    probe = Trainer(pipeline.build_network(cfg, n_in, 3), cfg.train)
    assert probe.task.step(train, np.arange(150, dtype=np.uint32))[2] is None
    run = pipeline.run_config(cfg, tmp_path / "run", progress=False, say=lambda text: None)
    assert metrics(run).equals(metrics(references["ttfs"]))


# Two epochs, so that each trains on its own augmented copy.
AUGMENTED = ["train.epochs=2", "augment.enabled=true", "augment.channel_shift=1", "augment.blend=true"]


@pytest.fixture(scope="module")
def augmented_reference(tmp_path_factory) -> Path:
    return pipeline.run(TEMPORAL, AUGMENTED, tmp_path_factory.mktemp("augmented") / "run", progress=False)


@pytest.mark.parametrize("data", ["files", "object_store"])
def test_two_workers_make_the_augmented_samples_of_one(ray_local, augmented_reference, tmp_path: Path, data: str):
    """Every worker makes the augmented samples of its own shards, new each epoch: the bits of
    one process, whether the workers read the files or the object store."""
    cfg = load_config(TEMPORAL, [*AUGMENTED, "distributed.workers=2", f"distributed.data={data}"])
    run = pipeline.run_config(cfg, tmp_path / "run", progress=False, say=lambda text: None)
    assert metrics(run).equals(metrics(augmented_reference))


def _trainer_and_data(references: dict[str, Path], **train: object):
    cfg = load_config(TEMPORAL, ONE_EPOCH)
    data = references["multi"] / "data"
    split, _, n_in = pipeline.load_split(data, "train")
    evals = {name: pipeline.load_split(data, name)[0] for name in ("validation", "test")}
    return cfg, split, evals, lambda: pipeline.build_network(cfg, n_in, pipeline.n_classes(cfg))


def test_a_killed_worker_is_replaced_and_its_shards_recomputed(ray_local, references) -> None:
    """SIGKILL to a worker's process while it computes a step: a new worker takes its place,
    the step's shards are computed again, and the run ends bit-identical to one process."""
    from delgrad.distributed import RayShards

    cfg, split, evals, build = _trainer_and_data(references)
    said: list[str] = []
    net = build()
    read = partial(pipeline.training_split, references["multi"] / "data", cfg)
    with RayShards(DistributedConfig(workers=2), net, cfg.train, split, read, said.append) as workers:
        victim = workers.pids[1]
        killed = threading.Event()

        def kill_mid_step() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if workers.times.steps >= 3 and workers.in_flight:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.0005)

        killer = threading.Thread(target=kill_mid_step)
        killer.start()
        history = Trainer(net, cfg.train, shards=8, executor=workers).fit(split, evals)
        killer.join()
        assert killed.is_set()
        assert workers.times.restarts == 1 and workers.pids[1] != victim
        assert any(f"worker 1 (pid {victim} on" in s and "died; replaced" in s for s in said), said
    reference = metrics(references["multi"])
    got = pl.DataFrame(history).drop("seconds")
    assert got.equals(reference.select(got.columns))
    expected = MultiNetwork.load(references["multi"] / "model" / "multi_network.npz")
    for mine, theirs in zip(net.params(), expected.params()):
        assert _bits(mine) == _bits(theirs)


def test_checkpoint_within_an_epoch_on_workers_resumes_on_one(ray_local, references, tmp_path: Path) -> None:
    """Stopped mid-epoch while workers trained (their data from the object store: the files
    they were pointed at hold another data set, which they notice): the run resumes in one
    process, from the checkpoint within the epoch, and ends with the reference's metrics."""
    from delgrad.distributed import RayShards

    cfg = load_config(TEMPORAL, [*ONE_EPOCH, "train.checkpoint_every_batches=5", "distributed.workers=2"])
    _, split, evals, build = _trainer_and_data(references)
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    said: list[str] = []
    with RunDir.open(out, cfg):
        shutil.copytree(references["multi"] / "data", out / "data")
        net = build()
        other = partial(pipeline.training_split, references["ttfs"] / "data", cfg)
        with RayShards(cfg.distributed, net, cfg.train, split, other, said.append) as workers:
            assert workers.source.kind == "object_store"
            trainer = Trainer(net, cfg.train, shards=cfg.distributed.shards, executor=workers)

            def on_batch(done: int, total: int, loss: float) -> None:
                if done >= 12 * 64:
                    raise Stop

            with pytest.raises(Stop):
                trainer.fit(split, evals, out, on_batch=on_batch)
    assert any("cannot use the data files (the training split read from files has" in s for s in said), said
    resumed = pipeline.run_config(cfg.replace(distributed=DistributedConfig()), out, progress=False, say=said.append)
    assert any("resuming after epoch 0 of 1 (batch position 640 of the epoch)" in s for s in said), said
    assert metrics(resumed).equals(metrics(references["multi"]))


# --- progress ----------------------------------------------------------------------------------


def test_progress_lines_give_synaptic_events_per_second(references, tmp_path: Path, capsys, monkeypatch) -> None:
    """Every batch's events are its forward pass's spikes times their fan-out; a piped log gets
    a line at most every EVERY seconds (0 here: every batch)."""
    cfg, split, _, build = _trainer_and_data(references)
    net = build()
    trainer = Trainer(net, cfg.train)
    batch = np.arange(64, dtype=np.uint32)
    trainer.step(split, batch, 1.0)
    out = net.forward(split.spikes, select=batch)  # what the next step's forward pass does
    trainer.step(split, batch, 1.0)
    n_hidden, n_classes = net.layers[0].shape[0], net.readout.layer.shape[0]
    input_spikes = int(split.spikes.spike_counts()[batch].sum())
    size, events, seconds = trainer.last_step
    assert size == 64 and seconds > 0 and out.trace.n_spikes(0) > 0
    assert events == input_spikes * n_hidden + out.trace.n_spikes(0) * n_classes

    monkeypatch.setattr(pipeline._progress, "EVERY", 0.0)
    pipeline.run(TEMPORAL, ONE_EPOCH, tmp_path / "run", progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "synaptic events/s" in line]
    assert len(lines) > 10 and all("samples/s" in line for line in lines), lines[:3]


def test_workers_told_to_read_files_refuse_another_data_set(ray_local, references) -> None:
    from delgrad.distributed import RayShards, WorkerError

    cfg, split, _, build = _trainer_and_data(references)
    other = partial(pipeline.training_split, references["ttfs"] / "data", cfg)
    with pytest.raises(WorkerError, match=r"worker 0 on .* has no training data: the training split read from files"):
        RayShards(DistributedConfig(workers=1, data="files"), build(), cfg.train, split, other)
