"""A BrainScaleS-2 emulator: delgrad's exact forward pass plus the chip's non-idealities.

The model follows DelGrad's hardware-aware simulation (DESIGN.md, "The hardware loop"):

* 6-bit weights with a sign: ``q = clip(round(w * scale), -63, 63)``, realised weight
  ``q / scale``. On the chip a synapse stores a 6-bit magnitude and the sign comes from its row
  (excitatory or inhibitory); with every source on one row of each kind, any signed value in
  ``[-63, 63]`` is available.
* per-neuron threshold offsets fixed by the chip seed (mean 0.13, std 0.08 on a threshold of
  2.6, applied relative to the configured threshold) plus per-run threshold noise (std 0.04 on
  2.6); "run" means one ``run`` request, so all samples of a batch share one noise draw.
* axonal delays only, realised within ``[0, delay_max]`` (clipped, and the clipped values are
  reported); each delayed source costs ``neurons_per_delay`` neurons (the delay is realised by a
  neuron pair); per-run delay jitter (std 0.01 tau) per source.
* 8 ns time quantisation at 1000x speed-up with 1 tau = 6 us on chip: input spikes are played on
  that clock and recorded spikes are time-stamped on it.
* 512 neurons per chip; a network that needs more is refused.
* input replication: channel ``c`` drives input rows ``c + k * n_channels``.
* a recording window: inputs outside ``[0, duration]`` are dropped (counted), recorded spikes
  after it are lost (counted); an optional random event-loss probability models lost events
  (each spike recorded within the window is lost with that probability).

Everything else is exact. The spike side of a run (window, event clock, replication, the
forward pass on the realised and per-run perturbed parameters, recording) is one call into the
Rust core (``delgrad._core.chip_run``, ``rust_core/src/chip.rs``); this module draws the chip's
randomness and owns its parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import delgrad
import numpy as np
import pyarrow as pa
from delgrad import _core
from delgrad.hardware import protocol as P

from hw_daemon.backends.base import Backend, BackendError, Configuration, FramedRun, RunOutput

TAU_CHIP_S = 6e-6  # 1 tau on chip
CLOCK_S = 8e-9  # FPGA / event clock
SPEEDUP = 1000
TIME_QUANTUM = CLOCK_S / TAU_CHIP_S  # in units of tau_s


@dataclass(frozen=True)
class EmulatorParams:
    """The emulated chip. Offsets and noise are given in threshold units at ``theta_ref`` and
    applied relative to the configured threshold."""

    neurons: int = 512
    weight_bits: int = 6
    weight_scale: float = 10.0
    delay_max: float = 2.0
    neurons_per_delay: int = 2
    theta_ref: float = 2.6
    threshold_offset_mean: float = 0.13
    threshold_offset_std: float = 0.08
    threshold_noise_std: float = 0.04
    delay_jitter_std: float = 0.01
    time_quantum: float = TIME_QUANTUM
    duration: float = 20.0
    event_loss: float = 0.0
    max_input_replication: int = 64

    @property
    def weight_max(self) -> int:
        # 6 bits of magnitude; the sign is not a bit but the row's type (excitatory/inhibitory).
        return 2**self.weight_bits - 1

    @classmethod
    def ideal(cls, **overrides: Any) -> EmulatorParams:
        """No threshold offsets, noise, jitter, time quantisation or event loss; weights are
        still quantised (so the realised network alone reproduces every run exactly)."""
        base = cls(
            threshold_offset_mean=0.0,
            threshold_offset_std=0.0,
            threshold_noise_std=0.0,
            delay_jitter_std=0.0,
            time_quantum=0.0,
            event_loss=0.0,
        )
        return replace(base, **overrides)


class EmulatorBackend(Backend):
    """One emulated BrainScaleS-2 chip, identified by ``chip_seed``."""

    name = "emulator"

    def __init__(self, chip_seed: int = 0, params: EmulatorParams | None = None) -> None:
        if not isinstance(chip_seed, int) or chip_seed < 0:
            raise ValueError(f"chip_seed must be a non-negative int, got {chip_seed!r}")
        self.chip_seed = chip_seed
        self.params = params or EmulatorParams()
        p = self.params
        rng = np.random.default_rng(chip_seed)
        # Relative offsets, so the chip's mismatch means the same for any configured theta.
        self._theta_offset = rng.normal(p.threshold_offset_mean, p.threshold_offset_std, p.neurons) / p.theta_ref
        self._fingerprint = hashlib.blake2b(
            json.dumps({"backend": self.name, "chip_seed": chip_seed, "params": asdict(p)}, sort_keys=True).encode(),
            digest_size=16,
        ).digest()

    def fingerprint(self) -> bytes:
        return self._fingerprint

    def capabilities(self) -> dict[str, Any]:
        p = self.params
        return {
            "model": "BrainScaleS-2 (emulated: delgrad exact forward + modelled non-idealities)",
            "chip_seed": self.chip_seed,
            "neurons": p.neurons,
            "neurons_per_delay": p.neurons_per_delay,
            "weight_bits": p.weight_bits,
            "weight_max_int": p.weight_max,
            "default_weight_scale": p.weight_scale,
            "delay_kinds": ["none", "axonal"],
            "delay_range": [0.0, p.delay_max],
            "time_quantum": p.time_quantum,
            "time_quantum_s": CLOCK_S if p.time_quantum > 0 else 0.0,
            "tau_chip_s": TAU_CHIP_S,
            "speedup": SPEEDUP,
            "duration": p.duration,
            "max_input_replication": p.max_input_replication,
            "neuron_modes": ["ttfs"],
            "nonidealities": {
                "threshold_offset_mean": p.threshold_offset_mean,
                "threshold_offset_std": p.threshold_offset_std,
                "threshold_noise_std": p.threshold_noise_std,
                "theta_ref": p.theta_ref,
                "delay_jitter_std": p.delay_jitter_std,
                "event_loss": p.event_loss,
            },
        }

    # --- configure --------------------------------------------------------------------------

    def neurons_needed(self, layers: list[tuple[int, int, str]]) -> tuple[int, int]:
        """(computing neurons, delay neurons) for layers given as ``(n_in, n_out, kind)``."""
        compute = sum(n_out for _, n_out, _ in layers)
        delayed = sum(n_in for n_in, _, kind in layers if kind == "axonal")
        return compute, delayed * self.params.neurons_per_delay

    def configure(
        self, network: Any, *, weight_scale: float | list[float] | None = None, input_replication: int = 1
    ) -> Configuration:
        p = self.params
        shapes = [(l.shape[1], l.shape[0], l.delay_kind) for l in network.layers]
        for l, (_, _, kind) in enumerate(shapes):
            if kind not in ("none", "axonal"):
                raise BackendError(
                    P.UNSUPPORTED,
                    f"layer {l} has {kind!r} delays; BrainScaleS-2 realises only axonal delays "
                    "(one per source neuron) or none",
                )
        if network.neuron.mode != "ttfs":
            raise BackendError(P.UNSUPPORTED, f"neuron mode {network.neuron.mode!r}: the emulator runs 'ttfs'")
        compute, delay_neurons = self.neurons_needed(shapes)
        if compute + delay_neurons > p.neurons:
            raise BackendError(
                P.DOES_NOT_FIT,
                f"the network needs {compute + delay_neurons} neurons ({compute} computing + "
                f"{delay_neurons} for axonal delays at {p.neurons_per_delay} per delayed source); "
                f"a BrainScaleS-2 chip has {p.neurons}",
            )
        if not 1 <= input_replication <= p.max_input_replication:
            raise BackendError(
                P.BAD_FIELD, f"input_replication = {input_replication} is outside [1, {p.max_input_replication}]"
            )
        n_in0 = shapes[0][0]
        if n_in0 % input_replication:
            raise BackendError(
                P.BAD_PARAMETERS,
                f"layer 0 has n_in = {n_in0}, not a multiple of input_replication = {input_replication}",
            )
        scales = self._scales(weight_scale, len(shapes))

        layers, report_layers, factors, base = [], [], [], 0
        for l, layer in enumerate(network.layers):
            n_out = layer.shape[0]
            raw = np.rint(layer.weights * scales[l])
            q = np.clip(raw, -p.weight_max, p.weight_max)
            w = q / scales[l]
            rl: dict[str, Any] = {
                "weight_scale": scales[l],
                "weight_max": p.weight_max / scales[l],
                "weights_clipped": int(np.count_nonzero(raw != q)),
                "max_weight_change": float(np.max(np.abs(w - layer.weights), initial=0.0)),
                "delays_clipped": 0,
            }
            d = layer.delays
            if layer.delay_kind == "axonal":
                dc = np.clip(d, 0.0, p.delay_max)
                rl["delays_clipped"] = int(np.count_nonzero(dc != d))
                rl["max_delay_change"] = float(np.max(np.abs(dc - d), initial=0.0))
                d = dc
            layers.append(delgrad.Layer(w, d, layer.delay_kind))
            report_layers.append(rl)
            # Network neurons sit on consecutive chip neurons, layer after layer; the chip's fixed
            # threshold offsets follow the placement.
            factors.append(1.0 + self._theta_offset[base : base + n_out])
            base += n_out
        realised = delgrad.Network(layers, network.neuron)
        report = {
            "layers": report_layers,
            "neurons_used": compute + delay_neurons,
            "neurons_computing": compute,
            "neurons_delay": delay_neurons,
            "delay_range": [0.0, p.delay_max],
        }
        return Configuration(
            network=realised,
            input_replication=input_replication,
            report=report,
            fingerprint=self._fingerprint,
            state={"theta_factor": factors},
        )

    def _scales(self, weight_scale: float | list[float] | None, n_layers: int) -> list[float]:
        if weight_scale is None:
            scales = [self.params.weight_scale] * n_layers
        elif isinstance(weight_scale, (int, float)) and not isinstance(weight_scale, bool):
            scales = [float(weight_scale)] * n_layers
        else:
            scales = [float(s) for s in weight_scale]
            if len(scales) != n_layers:
                raise BackendError(P.BAD_FIELD, f"weight_scale: {len(scales)} values for {n_layers} layers")
        for s in scales:
            if not (np.isfinite(s) and s > 0):
                raise BackendError(P.BAD_FIELD, f"weight_scale must be finite and > 0, got {s}")
        return scales

    # --- run --------------------------------------------------------------------------------

    def _perturbed(self, config: Configuration, rng: np.random.Generator) -> list[tuple]:
        """The realised network as this run sees it: per-run threshold noise on top of the
        chip's offsets, and delay jitter; as ``_core`` layer arguments."""
        p = self.params
        args = []
        for l, layer in enumerate(config.network.layers):
            # Per-neuron thresholds theta_j = theta * factor_j, emulated exactly with the core's
            # single theta: with current-based synapses and no reset, V_j(t) is linear in the
            # incoming weights, so V_j(t; w) = theta_j  <=>  V_j(t; w * theta / theta_j) = theta.
            # Dividing row j of W by factor_j therefore gives the same spike times as a neuron
            # with threshold theta_j.
            factor = config.state["theta_factor"][l] + rng.normal(
                0.0, p.threshold_noise_std / p.theta_ref, layer.shape[0]
            )
            factor = np.maximum(factor, 0.05)  # a threshold never reaches zero on a chip
            w = layer.weights / factor[:, None]
            d = layer.delays
            if layer.delay_kind == "axonal" and p.delay_jitter_std > 0:
                d = np.maximum(d + rng.normal(0.0, p.delay_jitter_std, d.shape), 0.0)
            args.append((w, layer.delay_kind, None if layer.delay_kind == "none" else d))
        return args

    def _io(self, config: Configuration, duration: float) -> _core.ChipIo:
        return _core.ChipIo(
            time_quantum=self.params.time_quantum,
            duration=duration,
            replication=config.input_replication,
            n_channels=config.n_channels,
        )

    def _health(self, counts: dict[str, Any], n_samples: int, duration: float, t_start: float) -> dict[str, Any]:
        lost = counts["lost_per_layer"]
        return {
            **counts,
            "lost_events": sum(lost),
            "duration": duration,
            "chip_time_s": n_samples * duration * TAU_CHIP_S,
            "wall_time_s": time.perf_counter() - t_start,
        }

    def run(
        self, config: Configuration, spikes: pa.RecordBatch, n_samples: int, *, seed: int, duration: float | None = None
    ) -> RunOutput:
        t_start = time.perf_counter()
        p = self.params
        dur = float(duration) if duration is not None else p.duration
        rng = np.random.default_rng([seed, self.chip_seed])
        # The spike side (window, event clock, replication, forward, recording) is the core's.
        layers, counts = _core.chip_run(
            spikes, n_samples, self._perturbed(config, rng), config.network.neuron, self._io(config, dur)
        )
        if p.event_loss > 0:
            lost = counts["lost_per_layer"]
            for l, rb in enumerate(layers):
                keep = rng.random(rb.num_rows) >= p.event_loss
                lost[l] += rb.num_rows - int(np.count_nonzero(keep))
                layers[l] = rb.filter(pa.array(keep))
            counts["recorded_events"] = [rb.num_rows for rb in layers]
        return RunOutput(layers=layers, health=self._health(counts, n_samples, dur, t_start), seed=seed)

    def run_frames(
        self,
        config: Configuration,
        frame: Any,
        n_samples: int,
        *,
        seed: int,
        duration: float | None = None,
        max_events: int,
    ) -> FramedRun:
        p = self.params
        if p.event_loss > 0:  # drawn here, on tables
            return super().run_frames(config, frame, n_samples, seed=seed, duration=duration, max_events=max_events)
        t_start = time.perf_counter()
        dur = float(duration) if duration is not None else p.duration
        rng = np.random.default_rng([seed, self.chip_seed])
        with P.reading_frames():
            frames, counts = _core.chip_run_frames(
                frame, n_samples, self._perturbed(config, rng), config.network.neuron, self._io(config, dur), max_events
            )
        return FramedRun(frames, self._health(counts, n_samples, dur, t_start), seed)
