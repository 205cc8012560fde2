"""Sweep specifications: a base pipeline plus grid and random axes over dotted pipeline keys.

A sweep file (TOML) looks like::

    name = "yinyang_delays"
    pipeline = "../yinyang_synaptic.toml"   # base pipeline, relative to this file
    out = "sweeps/yinyang_delays"           # sweep directory, relative to the working directory
    cpus_per_trial = 1

    [set]                                   # fixed overrides for every trial (like --set)
    "train.lr_gamma" = 0.95

    [grid]                                  # every combination of these values
    "network.hidden" = [[5], [10]]
    "network.delay_kind" = ["none", "synaptic"]
    "train.seed" = [0, 1]

    [random]                                # n seeded draws, each crossed with the whole grid
    n = 4
    seed = 0
    [random.axes]
    "train.lr" = { loguniform = [1e-3, 1e-2] }
    "train.batch_size" = { choice = [50, 150] }

    [[when]]                                # extra overrides for the trials that match
    match = { "network.delay_kind" = "synaptic" }
    set = { "train.lr_gamma" = 0.9 }

    [report]                                # what the figure plots (these are the defaults)
    y = "test_acc_best_val"
    x = "n_params"
    curve = "network.delay_kind"
    over = "train.seed"

Keys are exactly those of ``delgrad run --set`` and are checked against the pipeline's
configuration before anything runs. A trial's name is built from its axis values plus a short
hash of its fully resolved configuration, so the same trial always gets the same directory
(that is what makes resume work) and a changed base pipeline never reuses stale results.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from delgrad import config as pipeline_config
from delgrad.config import toml_value

__all__ = ["SweepSpec", "SweepSpecError", "Trial", "load_spec", "toml_value"]

_TOP_KEYS = {"name", "pipeline", "out", "cpus_per_trial", "set", "grid", "random", "when", "report"}
_RANDOM_KEYS = {"n", "seed", "axes"}
_DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
_REPORT_KEYS = {"x", "y", "curve", "over"}


class SweepSpecError(ValueError):
    """A sweep file that cannot be run; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Trial:
    """One pipeline run of a sweep: its axis values and the ``--set`` overrides that make it."""

    name: str
    params: dict[str, Any]  # axis key -> value (grid and random axes, in spec order)
    overrides: tuple[str, ...]  # every override, in the order they are applied


@dataclass
class SweepSpec:
    """A parsed sweep file; :meth:`trials` expands it."""

    path: Path
    name: str
    pipeline: Path
    out: Path
    cpus_per_trial: float = 1.0
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random_n: int = 0
    random_seed: int = 0
    random_axes: dict[str, dict[str, Any]] = field(default_factory=dict)
    when: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    report: dict[str, str] = field(default_factory=dict)

    @property
    def axes(self) -> list[str]:
        """Every axis key, grid axes first, in the order the file lists them."""
        return [*self.grid, *self.random_axes]

    def trials(self) -> list[Trial]:
        """All trials: the grid's product, crossed with ``random.n`` seeded draws (if any)."""
        grid_points = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        draws = self._random_draws() if self.random_axes else [{}]
        base_cfg = pipeline_config.load_config(self.pipeline).to_dict()
        out: list[Trial] = []
        seen: dict[str, Trial] = {}
        for draw in draws:
            for point in grid_points:
                params = {**point, **draw}
                overrides = dict(self.fixed)
                overrides.update(params)
                # Rules match the trial's values before any rule applies, so their order in the
                # file does not change which rules fire.
                before = dict(overrides)
                for match, extra in self.when:
                    if all(_same(_lookup(base_cfg, k, before), v) for k, v in match.items()):
                        overrides.update(extra)
                sets = tuple(f"{k}={toml_value(v)}" for k, v in overrides.items())
                name = _trial_name(params, sets, self.pipeline)
                if name in seen:
                    raise SweepSpecError(
                        f"{self.path}: two trials resolve to the same configuration "
                        f"({name}); check the grid for repeated values"
                    )
                seen[name] = trial = Trial(name, params, sets)
                out.append(trial)
        return out

    def _random_draws(self) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.random_seed)
        draws = []
        for _ in range(self.random_n):
            draw = {}
            for key, dist in self.random_axes.items():
                ((kind, arg),) = dist.items()
                if kind == "uniform":
                    draw[key] = float(rng.uniform(arg[0], arg[1]))
                elif kind == "loguniform":
                    draw[key] = float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
                elif kind == "randint":  # inclusive on both ends, like the values a user types
                    draw[key] = int(rng.integers(arg[0], arg[1] + 1))
                else:  # choice
                    draw[key] = arg[int(rng.integers(len(arg)))]
            draws.append(draw)
        return draws


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _lookup(cfg: dict[str, Any], key: str, overrides: dict[str, Any]) -> Any:
    """The value a dotted key has for a trial before ``when`` rules apply."""
    if key in overrides:
        return overrides[key]
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def value_label(v: Any) -> str:
    """A short, readable text for an axis value (``[5]`` -> ``5``, ``[5, 3]`` -> ``5-3``)."""
    if isinstance(v, (list, tuple)):
        return "-".join(value_label(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last component of each dotted key, or the whole key where that is ambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _trial_name(params: dict[str, Any], sets: tuple[str, ...], base: Path) -> str:
    # The hash covers the resolved configuration, not just the overrides: an edited base
    # pipeline gives new trials instead of silently reusing results of the old one.
    digest = pipeline_config.load_config(base, list(sets)).digest()[:8]
    short = short_keys(list(params))
    slug = ",".join(f"{short[k]}={value_label(v)}" for k, v in params.items())
    slug = re.sub(r"[^A-Za-z0-9=,.+_-]", "_", slug)[:120]
    return f"{slug}__{digest}" if slug else digest


# --- parsing --------------------------------------------------------------------------------


def check_key(key: str, where: str) -> None:
    """Raises :class:`SweepSpecError` unless ``key`` names a pipeline setting (the pipeline
    schema's own check, :func:`delgrad.config.check_key`)."""
    try:
        pipeline_config.check_key(key)
    except pipeline_config.ConfigError as e:
        raise SweepSpecError(f"{where}: {e}") from None


def _table(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    v = raw.get(name, {})
    if not isinstance(v, dict):
        raise SweepSpecError(f"{path}: [{name}] must be a table of dotted keys, got {type(v).__name__}")
    return v


def load_spec(path: str | Path) -> SweepSpec:
    """Parses and checks a sweep file; every error names the file and the offending entry."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepSpecError(f"sweep file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepSpecError(f"{path}: not valid TOML: {e}") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SweepSpecError(f"{path}: unknown entries {sorted(unknown)} (allowed: {sorted(_TOP_KEYS)})")
    if "pipeline" not in raw:
        raise SweepSpecError(f"{path}: 'pipeline' (the base pipeline TOML) is missing")
    base = (path.parent / str(raw["pipeline"])).resolve()
    if not base.exists():
        raise SweepSpecError(f"{path}: base pipeline {base} does not exist")
    try:
        pipeline_config.load_config(base)
    except ValueError as e:
        raise SweepSpecError(f"{path}: base pipeline {e}") from None
    name = str(raw.get("name", path.stem))
    cpus = raw.get("cpus_per_trial", 1)
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus <= 0:
        raise SweepSpecError(f"{path}: cpus_per_trial must be a positive number, got {cpus!r}")

    fixed = _table(raw, "set", path)
    for k in fixed:
        check_key(k, f"{path} [set]")

    grid = _table(raw, "grid", path)
    for k, values in grid.items():
        check_key(k, f"{path} [grid]")
        if not isinstance(values, list) or not values:
            raise SweepSpecError(f"{path} [grid]: {k!r} needs a non-empty list of values, got {values!r}")

    rnd = _table(raw, "random", path)
    if set(rnd) - _RANDOM_KEYS:
        raise SweepSpecError(
            f"{path} [random]: unknown entries {sorted(set(rnd) - _RANDOM_KEYS)} (allowed: n, seed, axes)"
        )
    random_axes = rnd.get("axes", {})
    if rnd and not random_axes:
        raise SweepSpecError(
            f'{path} [random]: no axes; add [random.axes] with e.g. "train.lr" = {{ loguniform = [1e-3, 1e-2] }}'
        )
    n = rnd.get("n", 0)
    if random_axes and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise SweepSpecError(f"{path} [random]: n (number of draws) must be a positive integer, got {n!r}")
    for k, dist in random_axes.items():
        check_key(k, f"{path} [random.axes]")
        _check_distribution(dist, f"{path} [random.axes] {k!r}")
        if k in grid:
            raise SweepSpecError(f"{path}: {k!r} is both a grid and a random axis")

    if not grid and not random_axes:
        raise SweepSpecError(f"{path}: nothing to sweep; add a [grid] (or [random.axes]) with at least one key")

    when = []
    for i, rule in enumerate(raw.get("when", [])):
        where = f"{path} [[when]] #{i + 1}"
        if not isinstance(rule, dict) or set(rule) != {"match", "set"}:
            raise SweepSpecError(f"{where}: needs exactly 'match' and 'set' tables")
        for k in [*rule["match"], *rule["set"]]:
            check_key(k, where)
        clash = set(rule["set"]) & (set(grid) | set(random_axes))
        if clash:
            raise SweepSpecError(f"{where}: sets the axis key(s) {sorted(clash)}; a rule may not override an axis")
        when.append((dict(rule["match"]), dict(rule["set"])))

    report = _table(raw, "report", path)
    if set(report) - _REPORT_KEYS:
        raise SweepSpecError(
            f"{path} [report]: unknown entries {sorted(set(report) - _REPORT_KEYS)} (allowed: {sorted(_REPORT_KEYS)})"
        )
    axes = [*grid, *random_axes]
    rep = {
        "y": "test_acc_best_val",
        "x": "n_params",
        "curve": "network.delay_kind" if "network.delay_kind" in axes else "",
        "over": "train.seed" if "train.seed" in axes else "",
        **{k: str(v) for k, v in report.items()},
    }
    for role in ("curve", "over"):
        if rep[role] and rep[role] not in axes:
            raise SweepSpecError(
                f"{path} [report]: {role} = {rep[role]!r} is not an axis of the sweep (axes: {', '.join(axes)})"
            )

    spec = SweepSpec(
        path=path,
        name=name,
        pipeline=base,
        out=Path(str(raw.get("out", f"sweeps/{name}"))),
        cpus_per_trial=float(cpus),
        fixed=dict(fixed),
        grid={k: list(v) for k, v in grid.items()},
        random_n=int(n) if random_axes else 0,
        random_seed=int(rnd.get("seed", 0)),
        random_axes=dict(random_axes),
        when=when,
        report=rep,
    )
    try:
        spec.trials()
    except ValueError as e:  # e.g. a value that makes a --set path run through a scalar
        if isinstance(e, SweepSpecError):
            raise
        raise SweepSpecError(f"{path}: {e}") from None
    return spec


def _check_distribution(dist: Any, where: str) -> None:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in _DISTRIBUTIONS:
        raise SweepSpecError(
            f"{where}: needs exactly one of {', '.join(_DISTRIBUTIONS)}, "
            f"e.g. {{ loguniform = [1e-3, 1e-2] }}; got {dist!r}"
        )
    ((kind, arg),) = dist.items()
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SweepSpecError(f"{where}: choice needs a non-empty list, got {arg!r}")
        return
    ok = (
        isinstance(arg, list)
        and len(arg) == 2
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arg)
        and arg[0] <= arg[1]
    )
    if not ok:
        raise SweepSpecError(f"{where}: {kind} needs [low, high] with low <= high, got {arg!r}")
    if kind == "loguniform" and arg[0] <= 0:
        raise SweepSpecError(f"{where}: loguniform needs low > 0, got {arg!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in arg):
        raise SweepSpecError(f"{where}: randint needs integer bounds, got {arg!r}")
