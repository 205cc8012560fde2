"""A BrainScaleS-2 emulator: delgrad's exact forward pass plus the chip's non-idealities.

The model follows DelGrad's hardware-aware simulation (DESIGN.md, "The hardware loop"):

* 6-bit weights with a sign: ``q = clip(round(w * scale), -63, 63)``, realised weight
  ``q / scale``. On the chip a synapse stores a 6-bit magnitude and the sign comes from its row
  (excitatory or inhibitory); with every source on one row of each kind, any signed value in
  ``[-63, 63]`` is available.
* per-neuron threshold offsets fixed by the chip seed (mean 0.13, std 0.08 on a threshold of
  2.6, applied relative to the configured threshold) plus per-run threshold noise (std 0.04 on
  2.6); "run" means one ``run`` request, so all samples of a batch share one noise draw.
* axonal delays only, realised within ``[delay_min, delay_max]`` (clipped, and the clipped
  values are reported); each delayed source costs ``neurons_per_delay`` neurons (the delay is
  realised by a neuron pair); per-run delay jitter (std 0.01 tau) per source.
* 8 ns time quantisation at 1000x speed-up with 1 tau = 6 us on chip: input spikes are played on
  that clock and recorded spikes are time-stamped on it.
* 512 neurons per chip; a network that needs more is refused.
* input replication: channel ``c`` drives input rows ``c + k * n_channels``.
* a recording window: inputs outside ``[0, duration]`` are dropped (counted), recorded spikes
  after it are lost (counted); an optional random event-loss probability models lost events
  (each spike recorded within the window is lost with that probability).

The parameters form a *chip profile* (:mod:`hw_daemon.profiles`); the default is DelGrad's
published chip configuration (weight scale 30, delays within [2.0, 3.5]). A calibrated profile
replaces the drawn threshold mismatch by measured per-neuron factors and adds a recording time
offset.

Long runs are executed in slices of samples (:meth:`EmulatorBackend.run_steps`) so that the
daemon can serve other clients in between; the noise of a run is drawn once, before the first
slice, so a sliced run records exactly what an unsliced one does.

Everything else is exact. The spike side of a run (window, event clock, replication, the
forward pass on the realised and per-run perturbed parameters, recording) is one call into the
Rust core (``delgrad._core.chip_run``, ``rust_core/src/chip.rs``); this module draws the chip's
randomness and owns its parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, replace
from typing import Any

import delgrad
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from delgrad import _core
from delgrad._core import SpikeSet
from delgrad.hardware import protocol as P

from hw_daemon.backends.base import Backend, BackendError, Configuration, FramedRun, RunOutput

TAU_CHIP_S = 6e-6  # 1 tau on chip
CLOCK_S = 8e-9  # FPGA / event clock
SPEEDUP = 1000
TIME_QUANTUM = CLOCK_S / TAU_CHIP_S  # in units of tau_s
WEIGHT_SCALE_RANGE = (1e-6, 1e6)
# The longest recording window a run may ask for (tau; 1e6 tau = 6 s on the chip).
MAX_DURATION = 1e6
# Played input events per slice of a long run: about 0.1 s of emulation on an idle core (0.3-0.5 s
# on the loaded 2-core development machine), so a run of millions of events lets other clients
# in between slices.
SLICE_EVENTS = 100_000


@dataclass(frozen=True)
class EmulatorParams:
    """The emulated chip. Offsets and noise are given in threshold units at ``theta_ref`` and
    applied relative to the configured threshold."""

    neurons: int = 512
    weight_bits: int = 6
    weight_scale: float = 30.0
    delay_min: float = 2.0
    delay_max: float = 3.5
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
    # Calibration (hw_daemon.profiles): measured threshold factors per network layer (replacing
    # the chip seed's drawn offsets) and a latency added to every recorded spike time.
    theta_factor: tuple[tuple[float, ...], ...] | None = None
    time_offset: float = 0.0
    profile: str = "delgrad"

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
            "delay_range": [p.delay_min, p.delay_max],
            "profile": p.profile,
            "calibrated": p.theta_factor is not None,
            "time_offset": p.time_offset,
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
        shapes = [(layer.shape[1], layer.shape[0], layer.delay_kind) for layer in network.layers]
        for index, (_, _, kind) in enumerate(shapes):
            if kind not in ("none", "axonal"):
                raise BackendError(
                    P.UNSUPPORTED,
                    f"layer {index} has {kind!r} delays; BrainScaleS-2 realises only axonal delays "
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
        if p.theta_factor is not None:
            calibrated = [len(f) for f in p.theta_factor]
            if calibrated != [n_out for _, n_out, _ in shapes]:
                raise BackendError(
                    P.BAD_PARAMETERS,
                    f"the chip profile {p.profile!r} is calibrated for layers of {calibrated} neurons, "
                    f"the network has {[n_out for _, n_out, _ in shapes]}",
                )

        layers, report_layers, factors, base = [], [], [], 0
        for index, layer in enumerate(network.layers):
            n_out = layer.shape[0]
            raw = np.rint(layer.weights * scales[index])
            q = np.clip(raw, -p.weight_max, p.weight_max)
            w = q / scales[index]
            rl: dict[str, Any] = {
                "weight_scale": scales[index],
                "weight_max": p.weight_max / scales[index],
                "weights_clipped": int(np.count_nonzero(raw != q)),
                "max_weight_change": float(np.max(np.abs(w - layer.weights), initial=0.0)),
                "delays_clipped": 0,
            }
            d = layer.delays
            if layer.delay_kind == "axonal":
                dc = np.clip(d, p.delay_min, p.delay_max)
                rl["delays_clipped"] = int(np.count_nonzero(dc != d))
                rl["max_delay_change"] = float(np.max(np.abs(dc - d), initial=0.0))
                d = dc
            layers.append(delgrad.Layer(w, d, layer.delay_kind))
            report_layers.append(rl)
            # Network neurons sit on consecutive chip neurons, layer after layer; the chip's fixed
            # threshold offsets follow the placement, unless the profile holds measured factors.
            if p.theta_factor is not None:
                factors.append(np.asarray(p.theta_factor[index], np.float64))
            else:
                factors.append(1.0 + self._theta_offset[base : base + n_out])
            base += n_out
        realised = delgrad.Network(layers, network.neuron)
        report = {
            "layers": report_layers,
            "neurons_used": compute + delay_neurons,
            "neurons_computing": compute,
            "neurons_delay": delay_neurons,
            "delay_range": [p.delay_min, p.delay_max],
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
            # Bounded so that the realised weight range (weight_max / scale) stays finite.
            if not (np.isfinite(s) and WEIGHT_SCALE_RANGE[0] <= s <= WEIGHT_SCALE_RANGE[1]):
                raise BackendError(
                    P.BAD_FIELD, f"weight_scale = {s} is outside [{WEIGHT_SCALE_RANGE[0]:g}, {WEIGHT_SCALE_RANGE[1]:g}]"
                )
        return scales

    # --- run --------------------------------------------------------------------------------

    def _perturbed(self, config: Configuration, rng: np.random.Generator) -> list[tuple]:
        """The realised network as this run sees it: per-run threshold noise on top of the
        chip's offsets, and delay jitter; as ``_core`` layer arguments."""
        p = self.params
        args = []
        for index, layer in enumerate(config.network.layers):
            # Per-neuron thresholds theta_j = theta * factor_j, emulated exactly with the core's
            # single theta: with current-based synapses and no reset, V_j(t) is linear in the
            # incoming weights, so V_j(t; w) = theta_j  <=>  V_j(t; w * theta / theta_j) = theta.
            # Dividing row j of W by factor_j therefore gives the same spike times as a neuron
            # with threshold theta_j.
            factor = config.state["theta_factor"][index] + rng.normal(
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

    def _duration(self, duration: float | None) -> float:
        dur = float(duration) if duration is not None else self.params.duration
        if not (np.isfinite(dur) and 0.0 < dur <= MAX_DURATION):
            raise BackendError(P.BAD_FIELD, f"duration = {dur} is outside (0, {MAX_DURATION:g}] tau")
        return dur

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
        steps = self._run_tables(config, spikes, n_samples, seed=seed, duration=duration, slice_events=None)
        try:
            while True:
                next(steps)
        except StopIteration as done:
            return done.value

    def _run_tables(
        self,
        config: Configuration,
        spikes: pa.RecordBatch,
        n_samples: int,
        *,
        seed: int,
        duration: float | None,
        slice_events: int | None,
    ) -> Generator[None, None, RunOutput]:
        """A run on tables, yielding between slices of at most ``slice_events`` played events
        (None: one slice). The noise is drawn before the first slice, the event loss after the
        last, both from the run's one generator: slicing changes nothing in the result."""
        t_start = time.perf_counter()
        p = self.params
        dur = self._duration(duration)
        rng = np.random.default_rng([seed, self.chip_seed])
        layer_args = self._perturbed(config, rng)
        io = self._io(config, dur)
        per_sample = max(1, spikes.num_rows * config.input_replication // max(n_samples, 1))
        step = n_samples if slice_events is None else max(1, slice_events // per_sample)
        if step >= n_samples:
            layers, counts = _core.chip_run(spikes, n_samples, layer_args, config.network.neuron, io)
        else:
            # Grouped by sample once in the core; each slice is a gather of whole samples.
            grouped = SpikeSet(spikes, n_samples)
            pieces: list[list[pa.RecordBatch]] = [[] for _ in config.network.layers]
            counts = {}
            for start in range(0, n_samples, step):
                stop = min(start + step, n_samples)
                part = grouped.select(np.arange(start, stop, dtype=np.uint32))
                got, c = _core.chip_run(part, stop - start, layer_args, config.network.neuron, io)
                for layer, rb in enumerate(got):
                    pieces[layer].append(_shift_samples(rb, start))
                counts = _add_counts(counts, c)
                yield
            layers = [pa.Table.from_batches(b).combine_chunks().to_batches()[0] for b in pieces]
            counts["recorded_events"] = [rb.num_rows for rb in layers]
        if p.event_loss > 0:
            lost = counts["lost_per_layer"]
            for layer, rb in enumerate(layers):
                keep = rng.random(rb.num_rows) >= p.event_loss
                lost[layer] += rb.num_rows - int(np.count_nonzero(keep))
                layers[layer] = rb.filter(pa.array(keep))
            counts["recorded_events"] = [rb.num_rows for rb in layers]
        if p.time_offset != 0.0:
            layers = [_shift_times(rb, p.time_offset) for rb in layers]
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
        steps = self.run_steps(config, frame, n_samples, seed=seed, duration=duration, max_events=max_events)
        try:
            while True:
                next(steps)
        except StopIteration as done:
            return done.value

    def run_steps(
        self,
        config: Configuration,
        frame: Any,
        n_samples: int,
        *,
        seed: int,
        duration: float | None = None,
        max_events: int,
        slice_events: int = SLICE_EVENTS,
    ) -> Generator[None, None, FramedRun]:
        """:meth:`run_frames` as the daemon drives it: a generator that yields between slices
        of a long run and returns the :class:`FramedRun`."""
        p = self.params
        dur = self._duration(duration)
        # Rows of the frame, from its size (16 bytes a row): small runs take the one-call path
        # from frame to frames, without tables in between.
        small = len(memoryview(frame)) // 16 * config.input_replication <= slice_events
        if small and p.event_loss == 0 and p.time_offset == 0.0:
            t_start = time.perf_counter()
            rng = np.random.default_rng([seed, self.chip_seed])
            with P.reading_frames():
                frames, counts = _core.chip_run_frames(
                    frame,
                    n_samples,
                    self._perturbed(config, rng),
                    config.network.neuron,
                    self._io(config, dur),
                    max_events,
                )
            return FramedRun(frames, self._health(counts, n_samples, dur, t_start), seed)
        spikes = P.decode_spikes(
            frame, "input spikes", n_samples=n_samples, n_neurons=config.n_channels, max_rows=max_events
        )
        if spikes.num_rows * config.input_replication > max_events:
            raise P.ProtocolError(
                P.TOO_LARGE,
                f"input spikes: {spikes.num_rows} x replication {config.input_replication} exceeds {max_events} events",
            )
        if p.event_loss > 0:  # drawn over whole layers, as an unsliced run draws it
            out = yield from self._run_tables(
                config, spikes, n_samples, seed=seed, duration=dur, slice_events=slice_events
            )
            return FramedRun(P.encode_layers(out.layers), out.health, out.seed)
        return (yield from self._stream_slices(config, spikes, n_samples, seed, dur, slice_events))

    def _stream_slices(
        self, config: Configuration, spikes: pa.RecordBatch, n_samples: int, seed: int, dur: float, slice_events: int
    ) -> Generator[None, None, FramedRun]:
        """A long run slice by slice, each slice's recorded spikes appended to the layer's reply
        frame as one more record batch of its Arrow IPC stream: no step, not even the last,
        handles the whole run's spikes at once."""
        t_start = time.perf_counter()
        yield  # the input frame was decoded: a step of its own
        rng = np.random.default_rng([seed, self.chip_seed])
        layer_args = self._perturbed(config, rng)
        io = self._io(config, dur)
        grouped = SpikeSet(spikes, n_samples)
        per_sample = max(1, spikes.num_rows * config.input_replication // max(n_samples, 1))
        step = max(1, slice_events // per_sample)
        sinks = [pa.BufferOutputStream() for _ in config.network.layers]
        writers = [pa.ipc.new_stream(sink, P.SPIKE_SCHEMA) for sink in sinks]
        counts: dict[str, Any] = {}
        try:
            for start in range(0, n_samples, step):
                yield
                stop = min(start + step, n_samples)
                part = grouped.select(np.arange(start, stop, dtype=np.uint32))
                got, c = _core.chip_run(part, stop - start, layer_args, config.network.neuron, io)
                for writer, rb in zip(writers, got):
                    rb = _shift_samples(rb, start)
                    if self.params.time_offset != 0.0:
                        rb = _shift_times(rb, self.params.time_offset)
                    writer.write_batch(pa.RecordBatch.from_arrays(rb.columns, schema=P.SPIKE_SCHEMA))
                counts = _add_counts(counts, c)
        finally:
            for writer in writers:
                writer.close()
        frames = [sink.getvalue() for sink in sinks]
        return FramedRun(frames, self._health(counts, n_samples, dur, t_start), seed)


def _shift_samples(rb: pa.RecordBatch, start: int) -> pa.RecordBatch:
    if start == 0:
        return rb
    shifted = pc.add(rb.column("sample"), pa.scalar(start, pa.uint32()))
    return pa.RecordBatch.from_arrays([shifted, *rb.columns[1:]], schema=rb.schema)


def _shift_times(rb: pa.RecordBatch, offset: float) -> pa.RecordBatch:
    shifted = pc.add(rb.column("time"), pa.scalar(offset, pa.float64()))
    return pa.RecordBatch.from_arrays([rb.column("sample"), rb.column("neuron"), shifted], schema=rb.schema)


def _add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Health counters of two slices of one run, summed (per-layer lists element-wise)."""
    if not total:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in part.items()}
    for k, v in part.items():
        total[k] = [a + b for a, b in zip(total[k], v)] if isinstance(v, list) else total[k] + v
    return total
