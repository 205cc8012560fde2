"""Dense time-stepped surrogate-gradient BPTT baseline for the SHD-sized step (issue 14).

    python benchmarks/dense_bptt.py [--batch 32] [--spikes 1000 4000 8000 16000] [--repeat 3]

What the event-based core is compared against: the same 700-256-20 network and loss as
``rust_core/examples/shd_step.rs`` (LIF hidden layer, tau_m 20 ms, tau_s 5 ms, theta 1, reset to
0, feed-forward or all-to-all recurrent; a leaky-integrator readout with the exponentially
weighted mean voltage, tau_w = 1 s; softmax cross-entropy), simulated on a grid of dt = 1 ms
over the 1 s trial, *without* delays (a dense time-stepped model cannot hold per-synapse
delays without a ring buffer per synapse), trained by backpropagation through time with a
fast-sigmoid surrogate derivative. One step = forward + loss + backward for all weights.

Written in numpy (float32, the usual precision of such baselines): the plain-PyPI torch wheel
for Linux pulls the CUDA runtime packages (several GB), which this benchmark-only comparison
does not justify; numpy is already a delgrad dependency. The dense cost does not depend on the
number of input spikes (only on steps x batch x synapses); it is printed per input rate anyway.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

N_IN, N_HIDDEN, N_OUT, T_STEPS, DT = 700, 256, 20, 1000, 1.0
TAU_M, TAU_S, THETA, TAU_W = 20.0, 5.0, 1.0, 1000.0


def inputs(batch: int, per_sample: int, rng: np.random.Generator) -> np.ndarray:
    """Binned input spikes, (T, batch, 700) float32 (counts per 1 ms bin)."""
    x = np.zeros((T_STEPS, batch, N_IN), dtype=np.float32)
    for b in range(batch):
        t = rng.integers(0, T_STEPS, per_sample)
        ch = rng.integers(0, N_IN, per_sample)
        np.add.at(x, (t, b, ch), 1.0)
    return x


def step(
    x: np.ndarray, w_in: np.ndarray, w_rec: np.ndarray | None, w_out: np.ndarray, labels: np.ndarray
) -> tuple[float, list[np.ndarray], float]:
    """Forward, loss and BPTT backward; returns the loss, the gradients, hidden spikes/sample."""
    am, as_ = np.float32(np.exp(-DT / TAU_M)), np.float32(np.exp(-DT / TAU_S))
    t_steps, batch, _ = x.shape
    ff = (x.reshape(t_steps * batch, N_IN) @ w_in.T).reshape(t_steps, batch, N_HIDDEN)
    v = np.zeros((batch, N_HIDDEN), np.float32)
    cur = np.zeros_like(v)
    s = np.zeros_like(v)
    vs = np.empty((t_steps, batch, N_HIDDEN), np.float32)  # V before the reset (surrogate input)
    spikes = np.empty_like(vs)
    for t in range(t_steps):
        cur = cur * as_ + ff[t]
        if w_rec is not None:
            cur += s @ w_rec.T
        v = v * am + DT * cur
        vs[t] = v
        s = (v >= THETA).astype(np.float32)
        spikes[t] = s
        v = v * (1.0 - s)
    # Leaky-integrator readout (no spikes) and its exp-weighted mean voltage.
    ro_in = (spikes.reshape(t_steps * batch, N_HIDDEN) @ w_out.T).reshape(t_steps, batch, N_OUT)
    vo = np.zeros((batch, N_OUT), np.float32)
    co = np.zeros_like(vo)
    vos = np.empty((t_steps, batch, N_OUT), np.float32)
    for t in range(t_steps):
        co = co * as_ + ro_in[t]
        vo = vo * am + DT * co
        vos[t] = vo
    weight = np.exp((np.arange(t_steps, dtype=np.float32) - t_steps) / TAU_W).astype(np.float32)
    weight /= weight.sum()
    y = np.einsum("t,tbo->bo", weight, vos)
    y -= y.max(axis=1, keepdims=True)
    p = np.exp(y)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(batch), labels] + 1e-30).mean())
    dy = p
    dy[np.arange(batch), labels] -= 1.0
    dy /= batch
    # Backward through the readout (linear recursions run in reverse).
    dvo = np.zeros((batch, N_OUT), np.float32)
    dco = np.zeros_like(dvo)
    d_ro_in = np.empty_like(vos)
    for t in range(t_steps - 1, -1, -1):
        dvo = dvo * am + weight[t] * dy
        dco = dco * as_ + DT * dvo
        d_ro_in[t] = dco
    g_out = d_ro_in.reshape(t_steps * batch, N_OUT).T @ spikes.reshape(t_steps * batch, N_HIDDEN)
    d_spikes = (d_ro_in.reshape(t_steps * batch, N_OUT) @ w_out).reshape(t_steps, batch, N_HIDDEN)
    # Backward through the hidden layer: surrogate d s / d v = 1 / (1 + 10 |v - theta|)^2,
    # the reset treated as a constant (detached), as is customary.
    dv = np.zeros((batch, N_HIDDEN), np.float32)
    dc = np.zeros_like(dv)
    d_cur_all = np.empty_like(vs)
    g_rec = np.zeros((N_HIDDEN, N_HIDDEN), np.float32) if w_rec is not None else None
    ds_next = np.zeros((batch, N_HIDDEN), np.float32)
    for t in range(t_steps - 1, -1, -1):
        ds = d_spikes[t] + ds_next
        surrogate = 1.0 / (1.0 + 10.0 * np.abs(vs[t] - THETA)) ** 2
        dv_now = dv * (1.0 - spikes[t]) + ds * surrogate
        dc = dc * as_ + DT * dv_now
        d_cur_all[t] = dc
        dv = dv_now * am
        if w_rec is not None:
            # cur[t] += s[t-1] @ w_rec.T
            ds_next = dc @ w_rec
            if t > 0:
                g_rec += dc.T @ spikes[t - 1]
    g_in = d_cur_all.reshape(t_steps * batch, N_HIDDEN).T @ x.reshape(t_steps * batch, N_IN)
    grads = [g_in, g_out] + ([g_rec] if g_rec is not None else [])
    return loss, grads, float(spikes.sum() / batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--spikes", type=int, nargs="+", default=[1000, 4000, 8000, 16000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--recurrent", choices=["no", "yes", "both"], default="both")
    args = ap.parse_args()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"numpy {np.__version__}, load {os.getloadavg()}"
    )
    rng = np.random.default_rng(0)
    half = np.sqrt(3.0) * 0.02
    w_in = rng.uniform(0.0015 - half, 0.0015 + half, (N_HIDDEN, N_IN)).astype(np.float32)
    w_rec = rng.uniform(-np.sqrt(3.0) * 0.01, np.sqrt(3.0) * 0.01, (N_HIDDEN, N_HIDDEN)).astype(np.float32)
    w_out = rng.uniform(-0.05, 0.05, (N_OUT, N_HIDDEN)).astype(np.float32)
    labels = np.arange(args.batch) % N_OUT
    kinds = {"no": [False], "yes": [True], "both": [False, True]}[args.recurrent]
    for recurrent in kinds:
        for per_sample in args.spikes:
            x = inputs(args.batch, per_sample, rng)
            walls, cpus = [], []
            for _ in range(args.repeat):
                c0, t0 = time.process_time(), time.perf_counter()
                loss, _, hidden = step(x, w_in, w_rec if recurrent else None, w_out, labels)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            print(
                f"dense BPTT {'recurrent' if recurrent else 'feed-forward'}, {per_sample} input spikes/sample, "
                f"batch {args.batch}: median {1e3 * np.median(walls) / args.batch:.2f} ms/sample wall, "
                f"CPU {1e3 * np.median(cpus) / args.batch:.2f} ms/sample; hidden spikes/sample {hidden:.0f}, "
                f"loss {loss:.4f}"
            )


if __name__ == "__main__":
    main()
