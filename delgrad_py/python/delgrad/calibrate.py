"""Calibration of a chip profile from recorded spikes (``delgrad calibrate``).

Given a trained network, the input spikes played into it and the output layer's spikes a chip
recorded, this fits what a chip profile can express (:mod:`hw_daemon.profiles`): one threshold
factor per neuron (``theta_j = theta * factor_j``) in every layer, and one time offset
(``simulated + offset ~ recorded``).

The fit is maximum a posteriori with exact gradients from the core. With current-based
synapses and no reset the membrane is linear in the weights, so a neuron with threshold
``theta * f_j`` spikes exactly when the same neuron with threshold ``theta`` and incoming
weights ``w_ji / f_j`` does. The simulated network is therefore the trained one with row ``j``
of every weight matrix divided by ``f_j``, and with ``w'_ji = w_ji / f_j``::

    dL/df_j = sum_i dL/dw'_ji * dw'_ji/df_j = -(1 / f_j) sum_i w'_ji dL/dw'_ji

where ``dL/dw'`` is the network's exact weight gradient (``Network.backward``, through the
hidden layers' spike times). The loss is ``sum 0.5 ((T_sim + offset - T_rec) / time_std)^2``
over (sample, neuron) pairs where both spiked, plus the priors
``0.5 ((f - 1) / factor_std)^2`` per neuron and ``0.5 (offset / offset_std)^2``. The offset has a
closed-form optimum for given factors; the reduced loss is minimised over ``log f`` by Adam.
Per step: one forward and one backward pass in the core; the host works only on per-neuron
arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from delgrad._core import SpikeSet, Trace
from delgrad.network import Layer, Network


@dataclass(frozen=True)
class CalibrationConfig:
    """Priors and optimiser settings."""

    factor_std: float = 0.1  # prior std of a threshold factor around 1
    offset_std: float = 1.0  # prior std of the time offset around 0 (tau_s)
    time_std: float = 0.05  # spike-time noise of the recordings (tau_s)
    steps: int = 400
    lr: float = 0.05


@dataclass
class Calibration:
    """The fitted profile values and how well they predict the recording."""

    theta_factor: list[NDArray[np.float64]]
    time_offset: float
    rmse_before: float  # output spike times, uncalibrated network, no offset
    rmse_after: float
    pairs: int  # (sample, neuron) pairs where both the recording and the simulation spiked
    spike_mismatch: int  # pairs where exactly one of them spiked
    history: list[float] = field(default_factory=list)

    def profile(self, base: str = "delgrad", name: str = "calibrated") -> dict[str, Any]:
        """The chip profile JSON object (``hw_daemon.profiles.load_profile`` reads it)."""
        return {
            "base": base,
            "name": name,
            "layers": [{"theta_factor": [float(v) for v in f]} for f in self.theta_factor],
            "time_offset": float(self.time_offset),
        }


def scaled(net: Network, factors: list[NDArray[np.float64]]) -> Network:
    """``net`` with thresholds ``theta * factors[l]``, as the weight scaling that is exactly
    equivalent (module docstring)."""
    layers = [
        Layer(layer.weights / f[:, None], layer.delays.copy(), layer.delay_kind)
        for layer, f in zip(net.layers, factors)
    ]
    return Network(layers, net.neuron)


def recorded_times(recorded: Any, n_samples: int, n_out: int) -> NDArray[np.float64]:
    """First spike time per (sample, output neuron) of a recorded spike table; inf if none."""
    trace = Trace.from_tables([recorded], [n_out], n_samples)
    return trace.first_times(0)


def calibrate(
    net: Network,
    inputs: Any,
    recorded: Any,
    n_samples: int,
    config: CalibrationConfig | None = None,
    *,
    fit: NDArray[np.uint32] | None = None,
) -> Calibration:
    """Fits threshold factors and a time offset (module docstring).

    ``inputs``: spikes addressing the network's input rows; ``recorded``: the output layer's
    recorded spikes; both Arrow spike tables over samples ``0..n_samples``. ``fit`` selects the
    samples used (all by default), e.g. to keep some for validation.
    """
    cfg = config or CalibrationConfig()
    spikes = SpikeSet(inputs, int(n_samples))
    n_out = net.layers[-1].shape[0]
    rec_all = recorded_times(recorded, int(n_samples), n_out)
    sel = np.arange(n_samples, dtype=np.uint32) if fit is None else np.ascontiguousarray(fit, dtype=np.uint32)
    rec = rec_all[sel]

    log_f = [np.zeros(layer.shape[0]) for layer in net.layers]
    m = [np.zeros_like(u) for u in log_f]
    v = [np.zeros_like(u) for u in log_f]
    beta1, beta2, eps = 0.9, 0.999, 1e-12
    history: list[float] = []

    def evaluate(log_f: list[NDArray[np.float64]], with_grad: bool) -> tuple[float, list, float]:
        factors = [np.exp(u) for u in log_f]
        sim_net = scaled(net, factors)
        trace = sim_net.forward(spikes, select=sel)
        sim = trace.first_times(trace.n_layers - 1)
        both = np.isfinite(sim) & np.isfinite(rec)
        gap = np.where(both, np.where(both, rec, 0.0) - sim, 0.0)
        # The offset at its optimum for these factors (closed form: the loss is quadratic in
        # it); Adam then descends the reduced loss, whose gradient in log f is the partial one
        # at that offset. Eliminating the offset removes the valley along which factor and
        # offset trade against each other.
        offset = float(np.sum(gap)) / (int(both.sum()) + (cfg.time_std / cfg.offset_std) ** 2)
        resid = np.where(both, offset - gap, 0.0)
        loss = 0.5 * float(np.sum((resid / cfg.time_std) ** 2))
        loss += sum(0.5 * float(np.sum(((f - 1.0) / cfg.factor_std) ** 2)) for f in factors)
        loss += 0.5 * (offset / cfg.offset_std) ** 2
        if not with_grad:
            return loss, [], offset
        grad_t = resid / cfg.time_std**2
        g = sim_net.backward(spikes, trace, grad_t, select=sel)
        grads = []
        for (gw, _), layer, f in zip(g.layers, sim_net.layers, factors):
            dl_df = -np.sum(layer.weights * gw, axis=1) / f + (f - 1.0) / cfg.factor_std**2
            grads.append(dl_df * f)  # d/d log f
        return loss, grads, offset

    for step in range(1, cfg.steps + 1):
        loss, grads, offset = evaluate(log_f, True)
        history.append(loss)
        lr = cfg.lr * (0.1 ** (step / cfg.steps))  # decays to a tenth: settles without a schedule search
        for p, gr, mm, vv in zip(log_f, grads, m, v):
            mm *= beta1
            mm += (1 - beta1) * gr
            vv *= beta2
            vv += (1 - beta2) * gr * gr
            p -= lr * (mm / (1 - beta1**step)) / (np.sqrt(vv / (1 - beta2**step)) + eps)
    loss, _, offset = evaluate(log_f, False)
    history.append(loss)
    factors = [np.exp(u) for u in log_f]
    before = _rmse(net, spikes, rec_all, 0.0)
    after = _rmse(scaled(net, factors), spikes, rec_all, offset)
    sim_final = scaled(net, factors).forward(spikes).first_times(len(net.layers) - 1)
    return Calibration(
        theta_factor=factors,
        time_offset=offset,
        rmse_before=before[0],
        rmse_after=after[0],
        pairs=after[1],
        spike_mismatch=int(np.sum(np.isfinite(sim_final) != np.isfinite(rec_all))),
        history=history,
    )


def _rmse(net: Network, spikes: SpikeSet, rec: NDArray[np.float64], offset: float, select: Any = None) -> tuple:
    sim = net.forward(spikes, select=select).first_times(len(net.layers) - 1)
    both = np.isfinite(sim) & np.isfinite(rec)
    if not both.any():
        return float("nan"), 0
    return float(np.sqrt(np.mean((sim[both] + offset - rec[both]) ** 2))), int(both.sum())


def prediction_rmse(
    net: Network, inputs: Any, recorded: Any, n_samples: int, calibration: Calibration | None = None
) -> float:
    """RMSE of the output spike times ``net`` predicts for a recording (both spiking), with a
    calibration's factors and offset or without."""
    spikes = SpikeSet(inputs, int(n_samples))
    rec = recorded_times(recorded, int(n_samples), net.layers[-1].shape[0])
    if calibration is None:
        return _rmse(net, spikes, rec, 0.0)[0]
    return _rmse(scaled(net, calibration.theta_factor), spikes, rec, calibration.time_offset)[0]


def _read_spikes(path: str | Path, what: str) -> pa.Table:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    table = pq.read_table(path)
    missing = [c for c in ("sample", "neuron", "time") if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} {path}: missing columns {missing} (the spike schema: sample, neuron, time)")
    return table.select(["sample", "neuron", "time"]).cast(
        pa.schema([("sample", pa.uint32()), ("neuron", pa.uint32()), ("time", pa.float64())])
    )


def calibrate_run(
    run_dir: str | Path,
    inputs: str | Path,
    recorded: str | Path,
    out: str | Path,
    *,
    base: str = "delgrad",
    config: CalibrationConfig | None = None,
    n_samples: int | None = None,
) -> Calibration:
    """``delgrad calibrate``: reads the run's model and two Parquet spike files, fits, and writes
    the profile JSON to ``out`` (never over an existing file)."""
    import pyarrow.compute as pc

    from delgrad.model import Model

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose a new file for the calibrated profile")
    model = Model.load(run_dir)
    x = _read_spikes(inputs, "--inputs")
    r = _read_spikes(recorded, "--recorded")
    if n_samples is None:
        highest = [pc.max(t.column("sample")).as_py() for t in (x, r) if t.num_rows]
        n_samples = max(highest) + 1 if highest else 0
    if n_samples == 0:
        raise ValueError("--inputs and --recorded hold no spikes")
    result = calibrate(model.network, x, r, n_samples, config)
    profile = result.profile(base=base)
    profile["calibration"] = {
        "run": str(Path(run_dir).resolve()),
        "samples": int(n_samples),
        "pairs": result.pairs,
        "spike_mismatch": result.spike_mismatch,
        "rmse_before": result.rmse_before,
        "rmse_after": result.rmse_after,
    }
    out.write_text(json.dumps(profile, indent=1))
    return result
