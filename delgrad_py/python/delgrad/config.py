"""Pipeline files, parsed once: TOML (plus ``--set`` overrides) into frozen, typed dataclasses.

Every table of a pipeline file is a dataclass below; its fields are the only keys the table
accepts. Parsing checks each value against the field's type and range before any work starts,
and an error is one line naming the key, what was expected and what was given::

    train.lr: expected a number or a list of numbers, got 'fast'
    network.hiden: unknown key (valid keys under [network]: delay_kind, delay_range, hidden, ...)

Conventions (TOML has no null): a number that may be absent is written ``false`` (``bias_time =
false``: no bias input), a text that may be absent ``""`` (``select_on = ""``: keep the last
epoch). Some keys apply to one network kind or data set only; giving them elsewhere is an error
too, so that a setting never silently does nothing.

The sweep files (:mod:`delgrad.sweep_spec`) check their keys through :func:`check_key`, the run
directory (:mod:`delgrad.rundir`) compares configurations through :meth:`PipelineConfig.digest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from delgrad import _core
from delgrad.losses import LossConfig
from delgrad.optim import DelayParam

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DelayParam",
    "DistributedConfig",
    "EncodingConfig",
    "HardwareConfig",
    "LogConfig",
    "LossConfig",
    "NetworkConfig",
    "PipelineConfig",
    "SpikeCountConfig",
    "TrainConfig",
    "check_key",
    "load_config",
    "parse_config",
    "toml_value",
]


class ConfigError(ValueError):
    """A pipeline file or override that cannot be run; the message names the key."""


def _spec(default: Any = dataclasses.MISSING, *, factory: Any = None, doc: str = "", **checks: Any) -> Any:
    """A dataclass field with a docstring and value checks (``ge``, ``gt``, ``le``, ``length``)."""
    meta = {"doc": doc, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- the tables --------------------------------------------------------------------------------

FEATURE_DATASETS = ("yinyang", "digits", "temporal", "features")
SPIKING_AUDIO = ("shd", "ssc")
USER_DATASETS = ("parquet", "tonic", "features")  # a researcher's own files (delgrad.data.user)
DATASETS = ("yinyang", "digits", "temporal", "shd", "ssc", "parquet", "tonic", "features")

# Keys of [data] beyond `dataset` and `seed`, by the data sets that read them.
_DATA_KEYS_FOR: dict[str, tuple[str, ...]] = {
    "temporal": ("n_channels", "n_classes", "gap", "jitter", "onset_max", "span"),
    "shd": (
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
    ),
}
_DATA_KEYS_FOR["ssc"] = _DATA_KEYS_FOR["shd"]
_DATA_KEYS_FOR["parquet"] = ("path", "n_inputs", "validation_fraction", "test_fraction", "chunk_size", "time_unit")
_DATA_KEYS_FOR["tonic"] = (*_DATA_KEYS_FOR["parquet"], "sensor_size")
_DATA_KEYS_FOR["features"] = ("path", "validation_fraction", "test_fraction")
_DATA_KEYS_FOR["arrays"] = ("fingerprint", "time_unit")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which data set, and the options of that data set."""

    dataset: Literal["yinyang", "digits", "temporal", "shd", "ssc", "parquet", "tonic", "features", "arrays"] = _spec(
        "yinyang",
        doc="a built-in data set, or your own: parquet (directory), tonic or features (.npz); "
        "arrays: given from Python to delgrad.fit",
    )
    seed: int = _spec(0, doc="seed of generated or split data")
    # temporal (delgrad.data.temporal); None: that function's default
    n_channels: int | None = _spec(None, ge=2)
    n_classes: int | None = _spec(None, ge=2)
    gap: float | None = _spec(None, gt=0.0)
    jitter: float | None = _spec(None, ge=0.0)
    onset_max: float | None = _spec(None, ge=0.0)
    span: float | None = _spec(None, gt=0.0)
    # shd / ssc (delgrad.data.shd)
    path: str = _spec(
        "",
        doc="shd/ssc: directory of the HDF5 files (empty: $DELGRAD_DATA or ~/.cache/delgrad); "
        "parquet: the data set directory; tonic, features: the .npz file",
    )
    synthetic: bool = _spec(False, doc="the generated stand-in instead of the real files")
    validation_fraction: float = _spec(0.1, gt=0.0, lt=1.0, doc="without a split column: share of validation")
    test_fraction: float = _spec(0.1, gt=0.0, lt=1.0, doc="without a split column: share of test")
    n_inputs: int | None = _spec(None, ge=1, doc="declared input channels; default: largest neuron id + 1")
    sensor_size: list[int] | None = _spec(None, ge=1, doc="tonic events with y: [width, height(, polarities)]")
    time_unit: str = _spec("", doc="unit of your spike times, for plot axes (e.g. ms); default: tau_s (tonic: ms)")
    fingerprint: str = _spec("", doc="arrays: hash of the data and initial network given to delgrad.fit")
    chunk_size: int = _spec(512, ge=1)
    n_train: int | None = _spec(None, ge=1)
    n_validation: int | None = _spec(None, ge=1)
    n_test: int | None = _spec(None, ge=1)
    spikes_per_sample: int | None = _spec(None, ge=1)
    noise_fraction: float | None = _spec(None, ge=0.0, le=1.0)
    band_width: float | None = _spec(None, gt=0.0)
    duration: float | None = _spec(None, gt=0.0)

    def options(self, *names: str) -> dict[str, Any]:
        """The given (not None) values of ``names``, as keyword arguments."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class EncodingConfig:
    """``[encoding]``: latency code of feature data sets (:class:`delgrad.data.encoding.LatencyEncoder`)."""

    t_early: float = 0.15
    t_late: float = 2.0
    bias_time: float | None = _spec(0.9, doc="time of the bias input spike; false: no bias input")
    replicate: int = _spec(1, ge=1)
    invert: bool = False
    silent_value: float | None = None


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: the network's shape, neuron model and initialisation."""

    mode: Literal["ttfs", "multi"] = _spec("ttfs", doc="time-to-first-spike (DelGrad) or multi-spike (EventProp)")
    hidden: list[int] = _spec(factory=lambda: [30], ge=1, doc="hidden widths; multi-spike networks need one")
    delay_kind: Literal[_core.DELAY_KINDS] = _spec("synaptic", doc="the core's delay kinds (_core.DELAY_KINDS)")
    tau_m: float = _spec(2.0, gt=0.0)
    tau_s: float = _spec(1.0, gt=0.0)
    theta: float = _spec(1.0, gt=0.0)
    weight_mean: float | list[float] = _spec(factory=lambda: [1.5, 0.5], doc="per layer, or (hidden, output)")
    weight_std: float | list[float] = _spec(factory=lambda: [0.8, 0.8], ge=0.0)
    delay_range: list[float] = _spec(factory=lambda: [0.0, 0.1], length=2, ge=0.0)
    # multi-spike only
    t_ref: float = _spec(0.0, ge=0.0)
    t_end: float = _spec(60.0, gt=0.0)
    recurrent: bool = False
    recurrent_std: float = _spec(0.1, ge=0.0)
    recurrent_delay_range: list[float] | None = _spec(
        None, length=2, ge=0.0, doc="initial recurrent delays; default: delay_range"
    )
    readout: Literal["max", "exp_mean"] = "max"
    readout_tau_m: float | None = _spec(None, gt=0.0, doc="default: tau_m")
    readout_tau_s: float | None = _spec(None, gt=0.0, doc="default: tau_s")
    tau_w: float | None = _spec(None, gt=0.0, doc="exp_mean weighting; default: t_end")


@dataclass(frozen=True)
class SpikeCountConfig:
    """``[train.spike_count]``: mlGeNN's spike-count regulariser (multi-spike networks; the
    core's ``spike_count`` module): a pull on the time of every hidden spike towards ``target``
    spikes per neuron and sample, as mlGeNN's EventProp compiler applies it. A count has no
    gradient, so this is not the gradient of a loss; off while every strength is 0. Strengths
    are one number for every hidden layer or a list with one per hidden layer."""

    target: float = _spec(14.0, ge=0.0, doc="spikes per hidden neuron and sample (mlGeNN's reg_nu_upper)")
    strength_above: float | list[float] = _spec(
        0.0, ge=0.0, doc="pull while a neuron fires more than target (mlGeNN's reg_lambda_upper)"
    )
    strength_below: float | list[float] = _spec(0.0, ge=0.0, doc="pull while it fires less (mlGeNN's reg_lambda_lower)")

    def per_layer(self, n_layers: int) -> list[tuple[float, float]]:
        """``(strength_above, strength_below)`` of each of ``n_layers`` hidden layers."""
        values = []
        for name in ("strength_above", "strength_below"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                values.append([float(value)] * n_layers)
            elif len(value) == n_layers:
                values.append([float(x) for x in value])
            else:
                raise ConfigError(
                    f"train.spike_count.{name}: {len(value)} values for {n_layers} hidden layers "
                    "(give one per hidden layer or one number)"
                )
        return list(zip(*values))

    def as_args(self, n_layers: int) -> list[tuple[float, float, float]] | None:
        """The core's ``spike_count`` argument, one ``(target, above, below)`` per hidden layer;
        None when every strength is 0."""
        layers = self.per_layer(n_layers)
        if not any(above or below for above, below in layers):
            return None
        return [(self.target, above, below) for above, below in layers]


_MULTI_NETWORK_KEYS = ("t_ref", "t_end", "recurrent", "recurrent_std", "readout", "readout_tau_m", "readout_tau_s")
_MULTI_NETWORK_KEYS += ("tau_w", "recurrent_delay_range")


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the trainer (:class:`delgrad.train.Trainer`), the same for every network kind.

    Per-layer values take one number for every layer or a list with one entry per layer
    (TTFS: hidden layers and output; multi-spike: hidden layers and readout, a recurrent
    connection sharing its layer's rate). A two-entry list means (hidden layers, last layer).
    """

    epochs: int = _spec(300, ge=0)
    batch_size: int = _spec(150, ge=1)
    lr: float | list[float] = _spec(factory=lambda: [0.005, 0.005], gt=0.0)
    lr_delay: float | list[float] = _spec(factory=lambda: [0.005, 0.005], ge=0.0)
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_step: int = _spec(20, ge=0, doc="step schedule: epochs per decay (0: constant)")
    lr_gamma: float = _spec(0.95, gt=0.0, le=1.0, doc="step schedule: decay factor")
    lr_min: float = _spec(0.0, ge=0.0, le=1.0, doc="cosine schedule: final rate as a fraction of the base")
    max_grad_norm: float | None = _spec(None, gt=0.0, doc="clip the global gradient norm; false: no clipping")
    delay: DelayParam = field(default_factory=DelayParam)
    seed: int = 0
    select_on: Literal["validation", "test", "train"] | None = _spec(
        "validation", doc="restore the best epoch on this split's accuracy; '': keep the last epoch"
    )
    patience: int = _spec(0, ge=0, doc="stop after this many epochs without a better select_on accuracy (0: off)")
    warmup_batches: int = _spec(
        0, ge=0, doc="ease-in: the rates grow exponentially from 1/1000 to 1 over this many updates (0: off)"
    )
    checkpoint_every: int = _spec(1, ge=1, doc="epochs between checkpoints")
    checkpoint_every_batches: int = _spec(0, ge=0, doc="also checkpoint within epochs (0: off)")
    # multi-spike only
    spike_count: SpikeCountConfig = field(default_factory=SpikeCountConfig)
    # TTFS only
    loss: LossConfig = field(default_factory=LossConfig)
    min_slope: float | None = _spec(None, gt=0.0, doc="floor on V'(T) in the gradients; false: exact")
    max_silent: float | list[float] = _spec(factory=lambda: [0.3, 0.0], ge=0.0, le=1.0)
    bump: float = _spec(0.0005, ge=0.0)
    bump_exponential: bool = True


_TTFS_TRAIN_KEYS = ("loss", "min_slope", "max_silent", "bump", "bump_exponential")
_MULTI_TRAIN_KEYS = ("spike_count",)


@dataclass(frozen=True)
class AugmentConfig:
    """``[augment]``: every epoch also trains on a new augmented copy of the training split
    (:class:`delgrad.data.augment.EpochAugmentation`)."""

    enabled: bool = True
    channel_shift: int = _spec(0, ge=0)
    blend: bool = False
    blend_p: float = _spec(0.5, ge=0.0, le=1.0)
    seed: int | None = _spec(None, doc="default: train.seed")


@dataclass(frozen=True)
class HardwareConfig:
    """``[hardware]``: training in the loop through ``hw_daemon`` (TTFS networks)."""

    enabled: bool = True
    endpoint: str = _spec("", doc="a running daemon; empty: start an emulator daemon for this run")
    backend: str = "emulator"
    chip_profile: str = _spec(
        "delgrad", doc="profile of the daemon the pipeline starts: delgrad, legacy or a JSON file"
    )
    chip_seed: int = _spec(0, doc="identity of the emulated chip (its fixed mismatch)")
    ideal: bool = False
    weight_scale: float | list[float] | None = _spec(
        None, gt=0.0, doc="hardware units per weight unit; none: the profile's"
    )
    input_replication: int = _spec(1, ge=1)
    max_batch: int = _spec(1000, ge=1)
    timeout: float = _spec(30.0, gt=0.0)
    retries: int = _spec(5, ge=0)
    seed: int | None = _spec(None, doc="default: train.seed")
    daemon_cpus: list[int] | None = _spec(None, ge=0)
    keep_awake: bool = False
    max_restarts: int = _spec(3, ge=0, doc="restarts of the pipeline's own daemon when it dies, before giving up")
    project_weights: bool = _spec(True, doc="clip shadow weights to the realisable range before configuring")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: where metrics go besides ``metrics.parquet`` (rewritten after every epoch)."""

    tensorboard: bool = _spec(False, doc="TensorBoard event files in RUN/tensorboard (pip install 'delgrad[log]')")


@dataclass(frozen=True)
class DistributedConfig:
    """``[distributed]``: data-parallel training on Ray (:mod:`delgrad.distributed`).

    Every batch is cut into ``shards`` contiguous shards whatever the worker count; each
    shard's gradient is the core's for that shard as a batch of its own, and the trainer adds
    them in shard order. So ``shards`` is part of the numerics (it is in the run's hash), while
    the worker count, the address and where workers read their data only decide who computes
    which shard: a run gives the same bits with any of them, and a run directory resumes under
    other values of them.
    """

    workers: int = _spec(1, ge=1, doc="Ray workers (actors) sharing each batch; 1: no Ray, this process")
    address: str = _spec(
        "", doc="Ray cluster to join: 'auto', 'ray://HOST:PORT' or 'HOST:PORT'; empty: a local Ray when workers > 1"
    )
    shards: int = _spec(8, ge=1, doc="shards per batch (clipped to the batch size); at most this many workers help")
    data: Literal["auto", "files", "object_store"] = _spec(
        "auto",
        doc="where workers get the training split: the run directory's Parquet files (a shared file system), "
        "Ray's object store (put once), or auto: files where a worker sees them, else the object store",
    )
    cpus_per_worker: int = _spec(1, ge=1, doc="CPUs Ray reserves per worker, and the core's threads in it")
    max_restarts: int = _spec(3, ge=0, doc="workers replaced within one step before the run gives up")

    @property
    def enabled(self) -> bool:
        """Whether training goes through Ray (more than one worker, or a cluster address)."""
        return self.workers > 1 or bool(self.address)


# Keys of [distributed] that decide where shards are computed, never what they are: left out of
# the run's hash, so that a run started on one worker resumes on four (and the other way round).
_EXECUTION_KEYS = ("workers", "address", "data", "cpus_per_worker", "max_restarts")


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline file. ``augment`` and ``hardware`` are None when their table is absent."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig | None = None
    hardware: HardwareConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def multi(self) -> bool:
        return self.network.mode == "multi"

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (None where a value is absent)."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """TOML that :func:`parse_config` reads back to an equal configuration."""
        return _dump_toml(self)

    def digest(self) -> str:
        """A hash of the resolved configuration: equal exactly when the results are. The keys
        of ``[distributed]`` that only say where shards are computed (workers, address, ...)
        are left out: results do not depend on them (:class:`DistributedConfig`)."""
        resolved = self.to_dict()
        for key in _EXECUTION_KEYS:
            del resolved["distributed"][key]
        text = json.dumps(resolved, sort_keys=True, allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> PipelineConfig:
        return dataclasses.replace(self, **changes)


# --- parsing -----------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Reads a pipeline TOML, applies ``key.sub=value`` overrides, parses and checks it."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    set_keys = apply_overrides(raw, overrides)
    try:
        return parse_config(raw)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        from_set = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in set_keys)
        where = "--set " if from_set else f"{path}: "
        raise ConfigError(f"{where}{e}") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Applies ``key.sub=value`` items to the raw TOML dict in place; returns the keys."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        if not key or not all(parts):
            raise ConfigError(f"--set {item}: {key!r} is not a dotted key like train.epochs")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {'.'.join(parts[: depth + 1])} is a value, not a table")
        node[parts[-1]] = _parse_value(value)
        keys.append(key)
    return keys


def _parse_value(text: str) -> Any:
    """A --set value as TOML reads it (numbers, booleans, lists, quoted strings); a bare word
    is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_config(raw: dict[str, Any]) -> PipelineConfig:
    """A raw TOML dict as a checked :class:`PipelineConfig` (raises :class:`ConfigError`)."""
    cfg = _parse_table(raw, PipelineConfig, "")
    _check_applicability(cfg, raw)
    return cfg


def _check_applicability(cfg: PipelineConfig, raw: dict[str, Any]) -> None:
    """Keys that exist but do not apply to this network kind or data set."""
    data = raw.get("data", {})
    allowed = {"dataset", "seed", *_DATA_KEYS_FOR.get(cfg.data.dataset, ())}
    defaults = DataConfig()
    for key in data:
        # A key of another data set at its default value does nothing either way: accepted, so
        # that any pipeline can be pointed at another data set with --set data.dataset=...
        if key not in allowed and getattr(cfg.data, key) != getattr(defaults, key):
            users = sorted(d for d, keys in _DATA_KEYS_FOR.items() if key in keys)
            raise ConfigError(
                f"data.{key}: applies to data set {' / '.join(users)} only (data.dataset is {cfg.data.dataset!r})"
            )
    if cfg.data.dataset in USER_DATASETS and not cfg.data.path:
        raise ConfigError(f"data.path: the {cfg.data.dataset!r} data set needs a path (see delgrad.data.user)")
    given_net, given_train = raw.get("network", {}), raw.get("train", {})
    if cfg.multi:
        if not cfg.network.hidden:
            raise ConfigError("network.hidden: a multi-spike network needs at least one hidden layer, got []")
        for key in _TTFS_TRAIN_KEYS:
            if key in given_train:
                raise ConfigError(f"train.{key}: applies to TTFS networks only (network.mode is 'multi')")
        if cfg.hardware is not None and cfg.hardware.enabled:
            raise ConfigError("hardware: training in the loop applies to TTFS networks only (network.mode is 'multi')")
    else:
        for key in _MULTI_NETWORK_KEYS:
            if key in given_net:
                raise ConfigError(f"network.{key}: applies to multi-spike networks only (network.mode is 'ttfs')")
        for key in _MULTI_TRAIN_KEYS:
            if key in given_train:
                raise ConfigError(f"train.{key}: applies to multi-spike networks only (network.mode is 'ttfs')")
    stages = len(cfg.network.hidden) + 1
    for key in ("weight_mean", "weight_std"):
        value = getattr(cfg.network, key)
        if isinstance(value, list) and len(value) not in (2, stages):
            raise ConfigError(
                f"network.{key}: {len(value)} values for {stages} weight layers (hidden {cfg.network.hidden} "
                f"and the output); give one per layer, 2 (hidden layers, output) or one number"
            )
    for key in ("delay_range", "recurrent_delay_range"):
        bounds = getattr(cfg.network, key)
        if bounds is not None and bounds[0] > bounds[1]:
            raise ConfigError(f"network.{key}: needs [low, high] with low <= high, got {list(bounds)}")
    if cfg.network.recurrent_delay_range is not None and not cfg.network.recurrent and "network" in raw:
        if "recurrent_delay_range" in raw["network"]:
            raise ConfigError(
                "network.recurrent_delay_range: applies to recurrent networks only (network.recurrent is false)"
            )
    if cfg.multi:
        cfg.train.spike_count.per_layer(len(cfg.network.hidden))  # one strength per hidden layer
    if cfg.train.patience and not cfg.train.select_on:
        raise ConfigError("train.patience: early stopping needs train.select_on (the split whose accuracy it watches)")
    d = cfg.train.delay  # the sigmoid's own range is checked by DelayParam
    if d.high is not None and d.high < d.low:
        raise ConfigError(f"train.delay.high: must be >= train.delay.low ({d.low}), got {d.high}")
    dist = cfg.distributed
    if dist.address and dist.address != "auto" and not dist.address.startswith("ray://"):
        host, _, port = dist.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"distributed.address: expected 'auto', 'ray://HOST:PORT' or 'HOST:PORT', got {dist.address!r}"
            )
    if dist.workers > dist.shards:
        raise ConfigError(
            f"distributed.workers: {dist.workers} workers for {dist.shards} shards per batch "
            "(a worker computes whole shards: raise distributed.shards, which changes the numerics, "
            "or use fewer workers)"
        )
    if dist.enabled and cfg.hardware is not None and cfg.hardware.enabled:
        what = f"workers = {dist.workers}" if dist.workers > 1 else f"address = {dist.address!r}"
        raise ConfigError(
            f"distributed.{what.split(' ')[0]}: training in the loop ([hardware]) runs in one process; "
            f"{what} does not apply (use workers = 1)"
        )


def _parse_table(raw: Any, cls: type, prefix: str) -> Any:
    where = f"[{prefix}]" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{_join(prefix, key)}: unknown key (valid keys under {where}: {', '.join(sorted(fields))})"
                if prefix
                else f"{key}: unknown key (valid keys at {where}: {', '.join(sorted(fields))})"
            )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(value, hints[name], _join(prefix, name), fields[name])
    try:
        return cls(**values)
    except ValueError as e:  # a dataclass's own consistency check
        raise ConfigError(f"{prefix}: {e}") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(value: Any, tp: Any, key: str, spec: dataclasses.Field | None) -> Any:
    """``value`` as type ``tp``, checked against the field's metadata."""
    if dataclasses.is_dataclass(tp):
        return _parse_table(value, tp, key)
    options = [tp]
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and _is_absent(value, options):
            return None
        tables = [a for a in options if dataclasses.is_dataclass(a)]
        if tables:
            return _parse_table(value, tables[0], key)
    expected = []
    for option in options:
        try:
            out = _coerce_plain(value, option, typing.get_origin(option), typing.get_args(option), key)
            break
        except _TypeMismatch as e:
            expected.append(e.expected)
    else:
        text = " or ".join(expected)
        if type(None) in typing.get_args(tp):
            text += " (or " + ('""' if _text_options(options) else "false") + " for none)"
        raise ConfigError(f"{key}: expected {text}, got {value!r}")
    if spec is not None:
        _check_range(out, key, spec.metadata)
    return out


def _text_options(options: list[Any]) -> bool:
    return all(o is str or typing.get_origin(o) is Literal for o in options)


def _is_absent(value: Any, options: list[Any]) -> bool:
    if _text_options(options):
        return value == ""
    return value is False and bool not in options


class _TypeMismatch(Exception):
    def __init__(self, expected: str) -> None:
        self.expected = expected


def _coerce_plain(value: Any, tp: Any, origin: Any, args: tuple, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _TypeMismatch("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _TypeMismatch("a finite number")
            return float(value)
        raise _TypeMismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch("a string")
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        raise _TypeMismatch("one of " + ", ".join(repr(a) for a in args))
    if origin is list:
        (item,) = args
        if not isinstance(value, list):
            raise _TypeMismatch(f"a list of {_plural(item)}")
        try:
            return [_coerce_plain(v, item, typing.get_origin(item), typing.get_args(item), key) for v in value]
        except _TypeMismatch:
            raise _TypeMismatch(f"a list of {_plural(item)}") from None
    raise TypeError(f"config field {key}: unsupported type {tp!r}")  # a bug in this module, not in the file


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, str(tp))


def _check_range(value: Any, key: str, meta: typing.Mapping[str, Any]) -> None:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(f"{key}: expected {meta['length']} values, got {len(value)}")
        if len(value) < meta.get("min_length", 0):
            raise ConfigError(f"{key}: expected at least {meta['min_length']} value(s), got {value!r}")
    bounds: list[tuple[str, Callable[[Any, Any], bool], str]] = [
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        for name, ok, sign in bounds:
            if name in meta and not ok(v, meta[name]):
                raise ConfigError(f"{key}: must be {sign} {meta[name]}, got {value!r}")


# --- writing -----------------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    """``v`` as the TOML text ``--set`` parses back to the same value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) as a pipeline value")


def _inapplicable_keys(cfg: PipelineConfig) -> set[str]:
    """Dotted keys that exist in the schema but do not apply to this configuration."""
    allowed = {"dataset", "seed", *_DATA_KEYS_FOR.get(cfg.data.dataset, ())}
    out = {f"data.{f.name}" for f in dataclasses.fields(DataConfig) if f.name not in allowed}
    if cfg.multi:
        out |= {f"train.{key}" for key in _TTFS_TRAIN_KEYS}
    else:
        out |= {f"network.{key}" for key in _MULTI_NETWORK_KEYS}
        out |= {f"train.{key}" for key in _MULTI_TRAIN_KEYS}
    return out


def _dump_toml(cfg: PipelineConfig) -> str:
    lines: list[str] = []
    skip = _inapplicable_keys(cfg)

    def table(prefix: str, obj: Any) -> None:
        scalars, subtables = [], []
        for f in dataclasses.fields(obj):
            if _join(prefix, f.name) in skip:
                continue
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                subtables.append((f.name, v))
            elif v is None:
                if f.default is not None:  # absent where the default is a value: the "none" spelling
                    options = typing.get_args(typing.get_type_hints(type(obj))[f.name])
                    scalars.append(
                        f'{f.name} = ""'
                        if _text_options([o for o in options if o is not type(None)])
                        else f"{f.name} = false"
                    )
            else:
                scalars.append(f"{f.name} = {toml_value(v)}")
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(scalars)
        for name, sub in subtables:
            table(_join(prefix, name), sub)

    table("", cfg)
    return "\n".join(lines).lstrip() + "\n"


# --- keys, for sweep files ---------------------------------------------------------------------


def check_key(key: str) -> None:
    """Raises :class:`ConfigError` unless ``key`` (dotted, as for ``--set``) names a setting."""
    parts = key.split(".")
    if not key or not all(parts):
        raise ConfigError(f"{key!r} is not a dotted pipeline key like 'train.epochs'")
    cls: Any = PipelineConfig
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names:
            where = f"under [{prefix}]" if prefix else "at the top level"
            raise ConfigError(f"unknown pipeline key {key!r} (valid keys {where}: {', '.join(sorted(names))})")
        hint = typing.get_type_hints(cls)[part]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)] or [hint]
        cls = inner[0]
        if depth < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            raise ConfigError(f"pipeline key {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a table")
