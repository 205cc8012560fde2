"""Import of Fast&Deep / DelGrad experiments (github.com/JulianGoeltz/fastAndDeep).

An experiment directory holds ``config.yaml`` (``network_layout.layers``,
``default_neuron_params``, ``training_params``, ``dataset_params``) and
``<dataset>_parameters_training.npy`` (a pickled dict: layer index -> ``{"name", "params"}``,
``params`` the layer's parameters over training, the last entry the final network).
:func:`import_experiment` turns it into a delgrad run directory whose
``delgrad.Model.load(out).predict(features)`` classifies raw features as the original network
does.

How Fast&Deep's layers map onto delgrad's (read from its ``src/utils.py`` / ``src/networks.py``):

* ``NeuronLayer``: weights ``(n_in, n_out)`` -> delgrad ``(n_out, n_in)``. With
  ``training_params.clip_weights_max`` the weights are clamped, with ``rounding_precision``
  every forward pass rounds them to multiples of it (half to even): both are applied here, so
  the saved weights are the ones the original forward pass uses.
* ``DelayAxonal`` / ``DelaySynaptic`` / ``DelayDendritic`` before a ``NeuronLayer`` give that
  layer's delays. The stored parameters are the *effective* delays (positivity applied,
  sharing factors expanded): axonal ``(n_in, 1)``, synaptic ``(n_in, n_out)``, dendritic
  ``(1, n_out)``. ``positivity`` and the sharing factors are recorded, for retraining.
* ``Multiplex`` (factor k) repeats every input row k times *consecutively*
  (``repeat_interleave``); ``dataset_params.multiply_input_layer`` tiles the whole input vector
  (``repeat``); ``Biases`` appends inputs spiking at fixed times. delgrad's encoder orders its
  rows as replica blocks (copy r of feature c is row ``r * n_features + c``) followed by one bias
  row, so the first layer's columns (and delays) are permuted into that order; rows that
  spike at the same time and share their delays (a multiplexed bias) merge into one column by
  summing weights, which is exact because the membrane is linear in the weights.
* Yin-Yang inputs: ``[x, y, 1 - x, 1 - y]`` at ``early + v (late - early)`` (0.15 and 2.0
  unless ``dataset_params`` says otherwise).

Hardware-aware training (DelGrad's ``hwAware`` experiments) draws threshold noise (a fixed
pattern of mean ``threshold_noise_fp_mean``, plus trial-to-trial noise) and delay jitter from
torch's generator. A delgrad model is deterministic: it takes the *expected* threshold,
``threshold + threshold_noise_fp_mean``, and no jitter (recorded in ``fastanddeep.json``). The
stored test spike times of such an experiment hold one noise draw, so they are matched only
statistically; noise-free experiments reproduce to floating-point agreement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delgrad._core import Neuron
from delgrad.data.encoding import LatencyEncoder
from delgrad.model import Model
from delgrad.network import Layer, Network

DELAY_LAYERS = {"DelayAxonal": "axonal", "DelaySynaptic": "synaptic", "DelayDendritic": "dendritic"}
KNOWN_LAYERS = ("NeuronLayer", "Multiplex", "Biases", "BroadcastLayer", *DELAY_LAYERS)
DATASETS = {"yin_yang": ("yinyang", 4)}
# Noise settings of hardware-aware training that a deterministic import leaves out.
NOISE_KEYS = ("threshold_noise_fp_mean", "threshold_noise_fp_std", "threshold_noise_b2b_std", "threshold_noise_s2s_std")


class FastAndDeepError(ValueError):
    """An experiment that cannot be imported; the message names the file and the entry."""


@dataclass(frozen=True)
class _Row:
    """One input row of the original network: a feature channel or a bias, and its time."""

    feature: int | None  # None for a bias row
    bias_time: float | None = None


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise FastAndDeepError(f"{path}: not a readable YAML file ({e})") from None
    if not isinstance(data, dict):
        raise FastAndDeepError(f"{path}: expected a mapping at the top level")
    return data


def _params(path: Path) -> dict[int, dict[str, Any]]:
    try:
        # The published format is a pickled dict inside .npy; it is the user's own experiment
        # directory, read as its authors wrote it.
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as e:
        raise FastAndDeepError(f"{path}: not a readable .npy file ({e})") from None
    if obj.dtype != object or obj.shape != ():
        raise FastAndDeepError(f"{path}: expected a pickled dict of layer parameters, got an array {obj.shape}")
    d = obj.item()
    if not isinstance(d, dict):
        raise FastAndDeepError(f"{path}: expected a dict of layer parameters, got {type(d).__name__}")
    return d


def _final(params: dict[int, dict[str, Any]], index: int, path: Path, what: str) -> np.ndarray:
    entry = params.get(index)
    if not isinstance(entry, dict) or len(entry.get("params", ())) == 0:
        raise FastAndDeepError(f"{path}: no parameters for layer {index} ({what})")
    value = np.asarray(entry["params"][-1], dtype=np.float64)
    if not np.isfinite(value).all():
        raise FastAndDeepError(f"{path}: layer {index} ({what}) has non-finite parameters")
    return value


def read_experiment(exp_dir: str | Path) -> tuple[Model, dict[str, Any]]:
    """The experiment in ``exp_dir`` as a :class:`Model`, and what the import recorded."""
    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / "config.yaml"
    if not exp_dir.is_dir():
        raise FastAndDeepError(f"{exp_dir}: not a directory")
    if not cfg_path.is_file():
        raise FastAndDeepError(
            f"{exp_dir}: no config.yaml (a Fast&Deep experiment directory holds config.yaml and "
            "<dataset>_parameters_training.npy, e.g. experiment_pretrained/<name>/epoch_300/)"
        )
    cfg = _yaml(cfg_path)
    ds_params = cfg.get("dataset_params") or {}
    ds_name = ds_params.get("name")
    if ds_name not in DATASETS:
        raise FastAndDeepError(f"{cfg_path}: dataset_params.name = {ds_name!r}; the importer knows {sorted(DATASETS)}")
    dataset, n_features = DATASETS[ds_name]
    params_path = exp_dir / f"{ds_name}_parameters_training.npy"
    if not params_path.is_file():
        raise FastAndDeepError(f"{exp_dir}: no {params_path.name} (the trained parameters)")
    params = _params(params_path)

    layout = cfg.get("network_layout") or {}
    layer_defs = layout.get("layers")
    if not isinstance(layer_defs, list) or not layer_defs:
        raise FastAndDeepError(f"{cfg_path}: network_layout.layers must be a non-empty list")
    neuron = _neuron(cfg, layer_defs, cfg_path)
    tp = cfg.get("training_params") or {}
    clip = tp.get("clip_weights_max")
    rounding = tp.get("rounding_precision")

    multiply = int(ds_params.get("multiply_input_layer", 1))
    if multiply < 1:
        raise FastAndDeepError(f"{cfg_path}: dataset_params.multiply_input_layer must be >= 1")
    # The dataset's input vector: the features tiled `multiply` times.
    rows = [_Row(c) for _ in range(multiply) for c in range(n_features)]
    if layout.get("n_inputs") not in (None, len(rows)):
        raise FastAndDeepError(
            f"{cfg_path}: network_layout.n_inputs = {layout['n_inputs']} but the data set gives {len(rows)} inputs"
        )

    layers: list[Layer] = []
    pending: tuple[str, np.ndarray, dict[str, Any]] | None = None
    notes: list[str] = []
    delay_info: list[dict[str, Any]] = []
    # The parameter file numbers only the layers that have parameters (delays, neurons).
    param_index = -1
    for index, ldef in enumerate(layer_defs):
        name = ldef.get("name") if isinstance(ldef, dict) else None
        if name in DELAY_LAYERS or name == "NeuronLayer":
            param_index += 1
        where = f"{cfg_path}: network_layout.layers[{index}] ({name})"
        if name not in KNOWN_LAYERS:
            raise FastAndDeepError(f"{where}: unknown layer type (known: {', '.join(KNOWN_LAYERS)})")
        if name in ("Multiplex", "Biases") and layers:
            raise FastAndDeepError(f"{where}: only supported on the input layer (before the first NeuronLayer)")
        if name == "Multiplex":
            factor = int(ldef.get("factor", 0))
            if factor < 1:
                raise FastAndDeepError(f"{where}: factor must be an integer >= 1")
            rows = [r for r in rows for _ in range(factor)]  # repeat_interleave
        elif name == "Biases":
            times = ldef.get("times")
            if not isinstance(times, list) or not all(isinstance(t, (int, float)) for t in times):
                raise FastAndDeepError(f"{where}: times must be a list of numbers")
            rows = rows + [_Row(None, float(t)) for t in times]
        elif name in DELAY_LAYERS:
            if pending is not None:
                raise FastAndDeepError(f"{where}: two delay layers before one NeuronLayer")
            positivity = (ldef.get("positivity") or {}).get("name")
            if positivity not in ("sigmoid", "clip", "shift"):
                raise FastAndDeepError(f"{where}: positivity {positivity!r} (known: sigmoid, clip, shift)")
            pending = (DELAY_LAYERS[name], _final(params, param_index, params_path, name), ldef)
        elif name == "NeuronLayer":
            w = _final(params, param_index, params_path, name)
            n_in = len(rows) if not layers else layers[-1].shape[0]
            size = int(ldef.get("size", w.shape[1] if w.ndim == 2 else 0))
            if w.shape != (n_in, size):
                raise FastAndDeepError(f"{where}: weights of shape {w.shape}, expected ({n_in}, {size})")
            if clip not in (None, False):
                w = np.clip(w, -float(clip), float(clip))
            if rounding not in (None, False):
                w = np.round(w / float(rounding)) * float(rounding)
            kind, d = "none", np.zeros(0)
            if pending is not None:
                kind, raw, ddef = pending
                d = _delays(kind, raw, n_in, size, where)
                delay_info.append(
                    {
                        "layer": len(layers),
                        "kind": kind,
                        "positivity": ddef.get("positivity"),
                        "presyn_sharing_factor": ddef.get("presyn_sharing_factor", 1),
                        "postsyn_sharing_factor": ddef.get("postsyn_sharing_factor", 1),
                        "jitter": ddef.get("jitter", 0.0),
                    }
                )
                pending = None
            noise = {k: v for k, v in (ldef.get("neuron_params") or {}).items() if k in NOISE_KEYS and v}
            if noise:
                notes.append(
                    f"layer {len(layers)}: threshold noise {noise} of the original training: the mean "
                    f"threshold {neuron.theta} is used, no noise"
                )
            layers.append(Layer(w.T.copy(), d, kind))
        # BroadcastLayer only reshapes (every input to every target): nothing to import.
    if pending is not None:
        raise FastAndDeepError(f"{cfg_path}: the last delay layer is not followed by a NeuronLayer")
    if not layers:
        raise FastAndDeepError(f"{cfg_path}: no NeuronLayer")
    for info in delay_info:
        if info["jitter"]:
            notes.append(f"layer {info['layer']}: delay jitter {info['jitter']} of the original training not applied")

    encoder, first = _encoder_layout(rows, n_features, ds_params, layers[0], cfg_path)
    layers[0] = first
    net = Network(layers, neuron)
    model = Model(net, encoder, dataset, n_features)
    record = {
        "source": str(exp_dir.resolve()),
        "dataset": ds_name,
        "input_rows": [{"feature": r.feature} if r.feature is not None else {"bias_time": r.bias_time} for r in rows],
        "neuron": {"tau_m": neuron.tau_m, "tau_s": neuron.tau_s, "theta": neuron.theta},
        "clip_weights_max": clip,
        "rounding_precision": rounding,
        "delays": delay_info,
        "notes": notes,
    }
    return model, record


def _neuron(cfg: dict[str, Any], layer_defs: list[Any], where: Path) -> Neuron:
    base = cfg.get("default_neuron_params") or {}
    found = set()
    for ldef in layer_defs:
        if isinstance(ldef, dict) and ldef.get("name") == "NeuronLayer":
            p = {**base, **(ldef.get("neuron_params") or {})}
            try:
                found.add(
                    (
                        float(p["tau_mem"]),
                        float(p["tau_syn"]),
                        float(p["threshold"]),
                        float(p["g_leak"]),
                        float(p.get("threshold_noise_fp_mean", 0.0)),
                    )
                )
            except KeyError as e:
                raise FastAndDeepError(f"{where}: neuron parameter {e} missing") from None
    if len(found) != 1:
        raise FastAndDeepError(
            f"{where}: the NeuronLayers differ in tau_mem/tau_syn/threshold/g_leak/threshold_noise_fp_mean: "
            f"{sorted(found)}; a delgrad network has one neuron model"
        )
    tau_m, tau_s, theta, g_leak, fp_mean = found.pop()
    theta += fp_mean  # the expected threshold of hardware-aware training (module docstring)
    # Unit capacitance (C = g_leak tau_mem = 1), the convention of both codes.
    if not math.isclose(g_leak * tau_m, 1.0, rel_tol=1e-9):
        raise FastAndDeepError(
            f"{where}: g_leak * tau_mem = {g_leak * tau_m}; delgrad's neuron has unit capacitance (needs 1)"
        )
    return Neuron(tau_m=tau_m, tau_s=tau_s, theta=theta)


def _delays(kind: str, raw: np.ndarray, n_in: int, n_out: int, where: str) -> np.ndarray:
    want = {"axonal": (n_in, 1), "synaptic": (n_in, n_out), "dendritic": (1, n_out)}[kind]
    if raw.shape != want:
        raise FastAndDeepError(f"{where}: {kind} delays of shape {raw.shape}, expected {want}")
    if (raw < 0).any():
        raise FastAndDeepError(f"{where}: negative effective delays")
    if kind == "synaptic":
        return raw.T.copy()
    return raw.ravel().copy()


def _encoder_layout(
    rows: list[_Row], n_features: int, ds_params: dict[str, Any], first: Layer, where: Path
) -> tuple[LatencyEncoder, Layer]:
    """delgrad's encoder for the original input rows, and the first layer with its columns
    (and input-side delays) in the encoder's row order."""
    counts = [sum(r.feature == c for r in rows) for c in range(n_features)]
    if len(set(counts)) != 1 or counts[0] == 0:
        raise FastAndDeepError(f"{where}: the input features appear {counts} times; delgrad replicates all equally")
    replicate = counts[0]
    bias_times = sorted({r.bias_time for r in rows if r.feature is None})
    if len(bias_times) > 1:
        raise FastAndDeepError(f"{where}: bias inputs at {bias_times}; delgrad's encoder has one bias time")
    early = float(ds_params.get("early", 0.15))
    late = float(ds_params.get("late", 2.0))
    encoder = LatencyEncoder(
        t_early=early, t_late=late, bias_time=bias_times[0] if bias_times else None, replicate=replicate
    )
    n_rows = n_features * replicate + len(bias_times)
    target = np.empty(len(rows), np.int64)  # original row -> encoder row
    seen = [0] * n_features
    for k, r in enumerate(rows):
        if r.feature is None:
            target[k] = n_features * replicate
        else:
            target[k] = seen[r.feature] * n_features + r.feature
            seen[r.feature] += 1
    w = np.zeros((first.shape[0], n_rows))
    np.add.at(w.T, target, first.weights.T)
    kind = first.delay_kind
    if kind in ("axonal", "synaptic"):
        src = first.delays if kind == "axonal" else first.delays.T
        d = np.full((n_rows, *src.shape[1:]), np.nan)
        for k, t in enumerate(target):
            if not np.isnan(d[t]).all() and not np.array_equal(d[t], src[k]):
                raise FastAndDeepError(
                    f"{where}: the bias rows merged into one input have different delays; delgrad cannot merge them"
                )
            d[t] = src[k]
        d = d if kind == "axonal" else d.T.copy()
        return encoder, Layer(w, d, kind)
    return encoder, Layer(w, first.delays, kind)


def import_experiment(exp_dir: str | Path, out: str | Path) -> Path:
    """Writes the experiment in ``exp_dir`` as a delgrad run directory ``out`` (which must not
    exist or be empty): ``model/`` (``delgrad.Model.load(out)``) and ``fastanddeep.json`` (what
    was imported from where). Returns ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastAndDeepError(f"{out}: exists and is not an empty directory; choose a new output directory")
    model, record = read_experiment(exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    (out / "fastanddeep.json").write_text(json.dumps(record, indent=1))
    return out
