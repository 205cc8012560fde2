"""Chip profiles: the parameters of an emulated BrainScaleS-2 chip, by name or as a JSON file.

A profile is a JSON object whose keys are :class:`~hw_daemon.backends.emulator.EmulatorParams`
fields, plus optionally ``"base"`` (the named profile it starts from, default
:data:`DEFAULT_PROFILE`), ``"layers"`` (``[{"theta_factor": [...]}, ...]``: calibrated
per-neuron threshold factors, one list per network layer, replacing the chip seed's drawn
mismatch) and ``"time_offset"`` (added to every recorded spike time). Unknown keys are errors,
so a typo never silently falls back to a default.

Named profiles:

``delgrad``  (the default) DelGrad's published chip configuration
             (``fastAndDeep/experiment_pretrained/yin_yang_hwAware_WA/config.yaml``, and the
             authors' on-chip runs): weights clipped at 63 / 30 = 2.1 (weight scale 30 on 63
             levels), axonal delays realised within [2.0, 3.5] tau (DelGrad's
             ``2 + 1.5 sigmoid(p)``), threshold mismatch mean 0.13 / std 0.08 and trial noise
             0.04 on theta = 2.6, delay jitter 0.01 tau.
``legacy``   what delgrad's emulator did before profiles existed: weight scale 10 (+-6.3) and
             axonal delays within [0, 2] tau; otherwise the same chip.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

DEFAULT_PROFILE = "delgrad"

PROFILES: dict[str, dict[str, Any]] = {
    "delgrad": {"weight_scale": 30.0, "delay_min": 2.0, "delay_max": 3.5},
    "legacy": {"weight_scale": 10.0, "delay_min": 0.0, "delay_max": 2.0},
}

# Bounds that keep every derived quantity finite (weight_max / weight_scale, chip time).
_POSITIVE_BOUNDED = {"weight_scale": (1e-6, 1e6), "theta_ref": (1e-6, 1e6), "duration": (1e-9, 1e6)}


class ProfileError(ValueError):
    """A chip profile that cannot be used; the message names the file and the key."""


def profile_names() -> list[str]:
    return sorted(PROFILES)


def load_profile(spec: str | Path | dict[str, Any], **overrides: Any) -> Any:
    """The :class:`EmulatorParams` of a profile: a name from :data:`PROFILES`, a path to a JSON
    file, or an already parsed dict. ``overrides`` (command-line flags) win over the profile."""
    from hw_daemon.backends.emulator import EmulatorParams

    where = "chip profile"
    if isinstance(spec, dict):
        data = dict(spec)
    elif str(spec) in PROFILES:
        data = {"base": str(spec)}
        where = f"chip profile {spec!r}"
    else:
        path = Path(spec)
        where = f"chip profile {path}"
        if not path.is_file():
            raise ProfileError(f"{where}: no such file, and not a profile name (names: {', '.join(profile_names())})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProfileError(f"{where}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{where}: must hold a JSON object, got {type(data).__name__}")
    data.pop("calibration", None)  # what `delgrad calibrate` notes about its fit: informational
    base = data.pop("base", DEFAULT_PROFILE)
    if base not in PROFILES:
        raise ProfileError(f"{where}: base {base!r} is not a profile name (names: {', '.join(profile_names())})")
    fields = EmulatorParams.__dataclass_fields__
    values: dict[str, Any] = {k: f.default for k, f in fields.items()}
    values["profile"] = data.pop("name", base if len(data) == 0 else f"{base}+custom")
    values.update(PROFILES[base])
    layers = data.pop("layers", None)
    unknown = sorted(set(data) - set(fields) - {"theta_factor"})
    if unknown:
        raise ProfileError(f"{where}: unknown keys {unknown} (known: base, name, layers, {', '.join(sorted(fields))})")
    values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if layers is not None:
        values["theta_factor"] = _theta_factors(layers, where)
    for key, value in values.items():
        if key in ("profile", "theta_factor"):
            continue
        kind = fields[key].type
        if kind in ("int", int) and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ProfileError(f"{where}: {key} must be an integer, got {value!r}")
        if kind in ("float", float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProfileError(f"{where}: {key} must be a finite number, got {value!r}")
            values[key] = float(value)
    for key, (lo, hi) in _POSITIVE_BOUNDED.items():
        if not lo <= values[key] <= hi:
            raise ProfileError(f"{where}: {key} = {values[key]} is outside [{lo:g}, {hi:g}]")
    if not 0.0 <= values["delay_min"] <= values["delay_max"] <= 1e3:
        raise ProfileError(
            f"{where}: the delay range [{values['delay_min']}, {values['delay_max']}] must satisfy "
            "0 <= delay_min <= delay_max <= 1000"
        )
    if not 0.0 <= values["event_loss"] < 1.0:
        raise ProfileError(f"{where}: event_loss = {values['event_loss']} is outside [0, 1)")
    if abs(values["time_offset"]) > values["duration"]:
        raise ProfileError(f"{where}: |time_offset| = {abs(values['time_offset'])} exceeds the duration")
    for key in ("neurons", "weight_bits", "neurons_per_delay", "max_input_replication"):
        if not 1 <= values[key] <= 1 << 20:
            raise ProfileError(f"{where}: {key} = {values[key]} is outside [1, {1 << 20}]")
    if values["weight_bits"] > 16:
        raise ProfileError(f"{where}: weight_bits = {values['weight_bits']} (at most 16)")
    for key in ("threshold_offset_std", "threshold_noise_std", "delay_jitter_std", "time_quantum"):
        if values[key] < 0:
            raise ProfileError(f"{where}: {key} must be >= 0, got {values[key]}")
    return EmulatorParams(**values)


def _theta_factors(layers: Any, where: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(layers, list) or not layers:
        raise ProfileError(f"{where}: 'layers' must be a non-empty list of {{\"theta_factor\": [...]}} objects")
    out = []
    for layer, spec in enumerate(layers):
        if not isinstance(spec, dict) or set(spec) != {"theta_factor"}:
            raise ProfileError(f"{where}: layers[{layer}] must be an object with exactly the key 'theta_factor'")
        f = spec["theta_factor"]
        if not isinstance(f, list) or not f or len(f) > 1 << 20:
            raise ProfileError(f"{where}: layers[{layer}].theta_factor must be a non-empty list of numbers")
        for j, v in enumerate(f):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.05 <= v <= 20.0):
                raise ProfileError(f"{where}: layers[{layer}].theta_factor[{j}] = {v!r} is not a number in [0.05, 20]")
        out.append(tuple(float(v) for v in f))
    return tuple(out)


def profile_json(params: Any) -> dict[str, Any]:
    """A profile (JSON object) that :func:`load_profile` turns back into ``params``."""
    from dataclasses import asdict

    d = asdict(params)
    d["name"] = d.pop("profile")
    factors = d.pop("theta_factor")
    if factors is not None:
        d["layers"] = [{"theta_factor": list(f)} for f in factors]
    d["base"] = DEFAULT_PROFILE
    return d
