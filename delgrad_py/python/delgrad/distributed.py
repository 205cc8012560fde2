"""Data-parallel training on Ray: a batch's shards computed by worker processes.

The trainer cuts every batch into a fixed number of shards and adds their gradients in shard
order (:mod:`delgrad.shards`); this module only decides *where* shards are computed, so
``[distributed] workers = N`` gives the same bits as one process. :class:`RayShards` holds N
Ray actors (:class:`ShardWorker`), each with the whole training split in memory. Per step the
trainer's current parameters go to the object store once (one ``ray.put``), each worker gets
the sample indices of a contiguous run of shards (:func:`delgrad.shards.assign`) and returns
one :class:`delgrad.train.ShardPass` (per-shard losses, counts and gradients); the trainer
combines them in shard order.

Where a worker gets the training split (``[distributed] data``):

* ``files``: it reads the run directory's Parquet data set (the split's row groups) and makes
  the same augmented copy the trainer made: for a file system every node sees;
* ``object_store``: the trainer puts the split into Ray's object store once and every worker
  (a replacement too) reads it from there: for clusters without a shared file system;
* ``auto`` (default): files where a worker sees the very same data (sample and spike counts and
  labels checked), else the object store.

A worker that dies (its process killed, its node lost) is replaced by a new actor and the
shards it was computing are computed again (``max_restarts`` replacements per step). Ray is an
optional extra and is imported only here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from delgrad.config import DistributedConfig, TrainConfig
from delgrad.data.split import Split
from delgrad.multi import MultiNetwork
from delgrad.network import Layer, Network
from delgrad.ray_cluster import MissingRayError, RayConnectionError, check_reachable
from delgrad.ray_cluster import import_ray as _import_ray
from delgrad.shards import assign
from delgrad.train import MultiTask, ShardPass, TTFSTask

__all__ = [
    "MissingRayError",
    "RayConnectionError",
    "RayShards",
    "ShardWorker",
    "WorkerError",
    "import_ray",
    "network_arrays",
    "set_network_arrays",
]

RAY_HINT = (
    "data-parallel training (distributed.workers > 1 or distributed.address) needs Ray, an optional extra: "
    "pip install 'delgrad[distributed]' (from a checkout: pip install -e '.[distributed]', or make install)"
)
# How long workers may take to start and load their data before the run gives up (a cluster
# without room for them would otherwise leave the actors pending for ever).
READY_TIMEOUT = 300.0


class WorkerError(RuntimeError):
    """Workers could not be started, or kept dying within one step."""


def import_ray():
    """The ``ray`` module, or :class:`MissingRayError` naming the extra to install."""
    return _import_ray(RAY_HINT)


# --- parameters -----------------------------------------------------------------------------


def _layers(net: Network | MultiNetwork) -> list[Layer]:
    if isinstance(net, MultiNetwork):
        return [*net.layers, *(r for r in net.recurrent if r is not None), net.readout.layer]
    return list(net.layers)


def network_arrays(net: Network | MultiNetwork) -> list[NDArray[np.float64]]:
    """Every weight and delay array of ``net`` (what a worker needs each step)."""
    return [array for layer in _layers(net) for array in (layer.weights, layer.delays)]


def set_network_arrays(net: Network | MultiNetwork, arrays: list[NDArray[np.float64]]) -> None:
    """Makes ``net`` use ``arrays`` (from :func:`network_arrays` of a network of the same shape)."""
    layers = _layers(net)
    if len(arrays) != 2 * len(layers):
        raise ValueError(f"set_network_arrays: {len(arrays)} arrays for {len(layers)} layers")
    for layer, weights, delays in zip(layers, arrays[::2], arrays[1::2]):
        layer.weights, layer.delays = weights, delays


# --- data sources -----------------------------------------------------------------------------


def fingerprint(split: Split) -> tuple[int, int, str]:
    """What a worker checks it loaded: sample and spike counts, and a hash of the labels, the
    spike counts per sample, the augmentation and the spikes of up to 64 evenly spaced samples (hashing every
    spike of an SHD-sized split would cost seconds per worker)."""
    digest = hashlib.sha256(split.labels.tobytes())
    digest.update(split.counts.tobytes())
    digest.update(repr(split.augment).encode())
    probe = np.unique(np.linspace(0, max(len(split) - 1, 0), min(64, len(split))).astype(np.uint32))
    spikes = split.spikes.select(probe)
    for column in ("sample", "neuron", "time"):
        digest.update(spikes.column(column).to_numpy().tobytes())
    return len(split), int(split.spikes.n_spikes), digest.hexdigest()[:16]


@dataclass(frozen=True)
class DataSource:
    """Where a worker gets the training split: ``files`` (``read``, a picklable function that
    reads it, e.g. :func:`delgrad.pipeline.training_split` bound to a run's data directory) or
    ``object_store`` (``ref`` to ``(spikes, n_samples, labels, augment)``)."""

    kind: str
    expected: tuple[int, int, str]
    read: Callable[[], Split] | None = None
    # Inside this object (not a task argument of its own), Ray hands the reference over as it
    # is, so a worker started later (a replacement) reads the same stored split.
    ref: Any = None


def _load(source: DataSource) -> Split:
    from delgrad._core import SpikeSet

    if source.kind == "object_store":
        import ray

        spikes, n_samples, labels, augment = ray.get(source.ref)
        return Split(SpikeSet(spikes, n_samples), np.asarray(labels, dtype=np.int64), augment)
    return source.read()


class ShardWorker:
    """A Ray actor: the training split in memory and a copy of the network; computes shards.

    Made with ``ray.remote(...)(ShardWorker)``; usable without Ray for tests of its logic."""

    def __init__(self, net: Network | MultiNetwork, config: TrainConfig, source: DataSource) -> None:
        self.net = net
        self.task = MultiTask(net, config) if isinstance(net, MultiNetwork) else TTFSTask(net, config)
        self.split: Split | None = None
        self.error: str | None = None
        try:
            self.split = _load(source)
            seen = fingerprint(self.split)
            if seen != source.expected:
                self.error = (
                    f"the training split read from {source.kind} has (samples, spikes, hash) {seen}, "
                    f"the trainer's {source.expected}"
                )
        except (OSError, KeyError, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"

    def ready(self) -> tuple[int, str, str | None]:
        """(process id, host name, why the data could not be loaded or None)."""
        return os.getpid(), os.uname().nodename, self.error

    def shard_pass(
        self,
        arrays: list[NDArray[np.float64]],
        select: NDArray[np.uint32],
        sizes: list[int],
        batch_size: int,
        epoch: int = 0,
    ) -> ShardPass:
        if self.split is None:
            raise WorkerError(f"worker {os.getpid()} has no data: {self.error}")
        set_network_arrays(self.net, arrays)
        return self.task.shard_pass(self.split, select, sizes, batch_size, epoch=epoch)


# --- the executor -----------------------------------------------------------------------------


@dataclass
class StepTimes:
    """Per-step timing sums: ``wall`` from the parameters' put to the last result, ``compute``
    the slowest worker's own time; the difference is communication and scheduling."""

    steps: int = 0
    wall: float = 0.0
    compute: float = 0.0
    put: float = 0.0
    restarts: int = 0
    cpu_max: float = 0.0  # the busiest worker's CPU time
    cpu_sum: float = 0.0  # all workers' CPU time

    def summary(self) -> str:
        if not self.steps:
            return "no steps"
        per = 1e3 / self.steps
        communication = (self.wall - self.compute) * per
        return (
            f"{self.steps} steps, {self.wall * per:.1f} ms per step, of which {communication:.1f} ms "
            f"communication and scheduling ({self.put * per:.2f} ms putting the parameters); "
            f"{self.restarts} worker(s) replaced"
        )


class RayShards:
    """Shards of every batch computed by ``config.workers`` Ray actors; see the module docstring.

    ``split`` is the trainer's training split; ``read_files`` reads the same split from files
    (on a worker; see :class:`DataSource`), None to use the object store. Joins the cluster at
    ``config.address`` or starts a local Ray (stopped again by :meth:`close`); a Ray that is
    already running (a test, a notebook) is used as it is."""

    def __init__(
        self,
        config: DistributedConfig,
        net: Network | MultiNetwork,
        train_config: TrainConfig,
        split: Split,
        read_files: Callable[[], Split] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.ray = ray = import_ray()
        self.cfg, self.net, self.train_config = config, net, train_config
        self.say = say or (lambda text: None)
        self.split = split
        self.times = StepTimes()
        self.in_flight = False  # a step's shards are being computed
        self.started = _init_ray(ray, config, split)
        try:
            cpus = config.cpus_per_worker
            # One core thread per CPU Ray gives the worker, so workers do not oversubscribe.
            env = {"env_vars": {"RAYON_NUM_THREADS": str(cpus)}}
            self.actor = ray.remote(num_cpus=cpus, runtime_env=env, max_restarts=0)(ShardWorker)
            self.expected = fingerprint(split)
            if config.data == "object_store" or read_files is None:
                self.source = self._object_store()
            else:
                self.source = DataSource("files", self.expected, read=read_files)
            self.workers: list[Any] = [None] * config.workers
            self.pids: list[int] = [0] * config.workers
            self.hosts: list[str] = [""] * config.workers
            self._start(range(config.workers))
        except BaseException:
            self.close()
            raise

    def _object_store(self) -> DataSource:
        """The training split put into the object store, once; every worker (a replacement
        too) reads it from there. ``select()`` of a split sorted by sample (a run's mapped
        split) is the SpikeSet's own buffers, so the put reads the mapped file without a copy
        in between."""
        ref = self.ray.put((self.split.spikes.select(), len(self.split), self.split.labels, self.split.augment))
        return DataSource("object_store", self.expected, ref=ref)

    def _start(self, indices: range | list[int]) -> None:
        """Starts workers ``indices`` and waits until they hold their data. With ``data =
        "auto"``, workers that cannot see the data files make every later worker read from the
        object store."""
        indices = list(indices)
        for k in indices:
            self.workers[k] = self.actor.remote(self.net, self.train_config, self.source)
        answers = self._ready(indices)
        failed = [(k, error) for k, (_, _, error) in zip(indices, answers) if error]
        if failed and self.source.kind == "files" and self.cfg.data == "auto":
            k, error = failed[0]
            self.say(f"distributed: worker {k} cannot use the data files ({error}); using the object store")
            self.source = self._object_store()
            for k, _ in failed:
                self.ray.kill(self.workers[k], no_restart=True)
            self._start([k for k, _ in failed])
            return
        if failed:
            k, error = failed[0]
            host = answers[indices.index(k)][1]
            raise WorkerError(f"distributed: worker {k} on {host} has no training data: {error}")
        for k, (pid, host, _) in zip(indices, answers):
            self.pids[k], self.hosts[k] = pid, host

    def _ready(self, indices: list[int]) -> list[tuple[int, str, str | None]]:
        refs = [self.workers[k].ready.remote() for k in indices]
        done, pending = self.ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT)
        if pending:
            raise WorkerError(
                f"distributed: {len(pending)} of {len(refs)} workers did not start within {READY_TIMEOUT:.0f} s "
                f"(each needs {self.cfg.cpus_per_worker} CPU(s); does the Ray cluster have room for them?)"
            )
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as e:
            raise WorkerError(f"distributed: a worker died while starting: {_first_line(e)}") from None

    def run(self, select: NDArray[np.uint32], sizes: list[int], batch_size: int, epoch: int = 0) -> list[ShardPass]:
        """The passes of all shards ``sizes`` of the batch ``select`` of epoch ``epoch``, in shard
        order."""
        ray = self.ray
        t0 = time.perf_counter()
        params = ray.put(network_arrays(self.net))
        t_put = time.perf_counter() - t0
        edges = np.concatenate([[0], np.cumsum(sizes)])
        jobs: dict[int, tuple[NDArray[np.uint32], list[int]]] = {}
        for k, shards in enumerate(assign(len(sizes), len(self.workers))):
            if shards:
                jobs[k] = (select[edges[shards.start] : edges[shards.stop]], sizes[shards.start : shards.stop])
        pending = {self.workers[k].shard_pass.remote(params, *job, batch_size, epoch): k for k, job in jobs.items()}
        results: dict[int, ShardPass] = {}
        restarts = 0
        self.in_flight = True
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                k = pending.pop(ref)
                try:
                    results[k] = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    restarts += 1
                    self.times.restarts += 1
                    if restarts > self.cfg.max_restarts:
                        raise WorkerError(
                            f"distributed: workers died {restarts} times within one step "
                            f"(distributed.max_restarts = {self.cfg.max_restarts}); last: worker {k} "
                            f"(pid {self.pids[k]} on {self.hosts[k]}): {_first_line(e)}"
                        ) from None
                    self.say(
                        f"distributed: worker {k} (pid {self.pids[k]} on {self.hosts[k]}) died; "
                        "replaced, its shards of this step are computed again"
                    )
                    self.ray.kill(self.workers[k], no_restart=True)
                    self._start([k])
                    pending[self.workers[k].shard_pass.remote(params, *jobs[k], batch_size, epoch)] = k
        finally:
            # On Ctrl-C or an error the shards still in flight are left to :meth:`close`, which
            # kills their workers (Ray cannot force-cancel an actor's task).
            self.in_flight = False
        passes = [results[k] for k in sorted(results)]
        wall = time.perf_counter() - t0
        self.times.steps += 1
        self.times.wall += wall
        self.times.put += t_put
        self.times.compute += max(p.seconds for p in passes)
        self.times.cpu_max += max(p.cpu_seconds for p in passes)
        self.times.cpu_sum += sum(p.cpu_seconds for p in passes)
        return passes

    def close(self) -> None:
        """Stops the workers, and the local Ray if this object started it."""
        for worker in getattr(self, "workers", []):
            if worker is not None:
                try:
                    self.ray.kill(worker, no_restart=True)
                except Exception:  # already gone with its node
                    pass
        self.workers = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> RayShards:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _init_ray(ray, config: DistributedConfig, split: Split) -> bool:
    """Connects to (or starts) Ray; True if this call started it and so must shut it down."""
    if ray.is_initialized():
        return False
    if config.address:
        check_reachable(config.address)
        try:
            ray.init(address=config.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayConnectionError(f"cannot join the Ray cluster at {config.address!r}: {e}") from None
        return True
    # A local Ray: as many CPUs as the workers reserve (more than the machine has only
    # oversubscribes it; fewer would leave workers waiting for ever), and an object store for
    # the split (object_store data) plus a few steps' parameters and gradients.
    cpus = max(os.cpu_count() or 1, config.workers * config.cpus_per_worker)
    data_bytes = split.spikes.n_spikes * 16 + 8 * len(split) if config.data != "files" else 0
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=int(256 * 2**20 + 1.5 * data_bytes),
    )
    return True
