"""Shared helpers for the delgrad test-suite: table construction, conversions, hypothesis
strategies. Nothing here calls delgrad's numerics."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

# DELGRAD_TEST_SCALE=20 multiplies every hypothesis example count (a long bug hunt); 1 keeps the
# suite under a minute on two cores.
SCALE = float(os.environ.get("DELGRAD_TEST_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(round(n * SCALE)))


# (tau_m, tau_s) for the tau_m / tau_s ratios under test; theta = 1 throughout.
RATIOS = {
    "ratio1": (1.0, 1.0),  # Lambert W branch in the library
    "ratio2": (2.0, 1.0),  # quadratic branch
    "ratio1.5": (1.5, 1.0),  # bracketed solver
    "ratio0.7": (0.7, 1.0),  # bracketed solver, tau_m < tau_s
}
GRAD_RATIOS = {k: RATIOS[k] for k in ("ratio1", "ratio2", "ratio1.5")}
DELAY_KINDS = ("none", "synaptic", "axonal", "dendritic")


def batch(
    sample, neuron, time, *, sample_type=pa.uint32(), neuron_type=pa.uint32(), time_type=pa.float64()
) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "sample": pa.array(np.asarray(sample), type=sample_type),
            "neuron": pa.array(np.asarray(neuron), type=neuron_type),
            "time": pa.array(np.asarray(time, dtype=np.float64), type=time_type),
        }
    )


def rows_to_batch(rows) -> pa.RecordBatch:
    """rows: list of (sample, neuron, time)."""
    if not rows:
        return batch(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0))
    s, n, t = zip(*rows)
    return batch(np.array(s, np.uint32), np.array(n, np.uint32), np.array(t, np.float64))


def rows_to_inputs(rows, n_samples):
    """rows (sample, neuron, time) -> per-sample lists of (neuron, time) for the reference."""
    out = [[] for _ in range(n_samples)]
    for s, n, t in rows:
        out[s].append((int(n), float(t)))
    return out


def out_to_matrix(out: pa.RecordBatch, n_samples: int, n_out: int) -> np.ndarray:
    """Output spike table -> (n_samples, n_out) first-spike matrix (inf = silent).

    Also checks the output contract: the schema, sorted by (sample, neuron), one row per neuron.
    """
    assert out.schema.names[:3] == ["sample", "neuron", "time"]
    assert out.schema.field("sample").type == pa.uint32()
    assert out.schema.field("neuron").type == pa.uint32()
    assert out.schema.field("time").type == pa.float64()
    s = out.column("sample").to_numpy(zero_copy_only=False).astype(np.int64)
    n = out.column("neuron").to_numpy(zero_copy_only=False).astype(np.int64)
    t = out.column("time").to_numpy(zero_copy_only=False)
    key = s * (n_out + 1) + n
    assert np.all(np.diff(key) > 0), "output must be sorted by (sample, neuron), one row each"
    assert np.all((s >= 0) & (s < n_samples)) and np.all((n >= 0) & (n < n_out))
    assert np.all(np.isfinite(t))
    m = np.full((n_samples, n_out), np.inf)
    m[s, n] = t
    return m


def assert_times_close(got: np.ndarray, want: np.ndarray, atol: float = 1e-9, what: str = ""):
    got_fin, want_fin = np.isfinite(got), np.isfinite(want)
    bad = np.argwhere(got_fin != want_fin)
    assert bad.size == 0, (
        f"{what} silent/non-silent disagree at (sample, neuron) {bad[:5].tolist()}: "
        f"got {got[tuple(bad[0])]}, reference {want[tuple(bad[0])]}"
    )
    diff = np.abs(np.where(got_fin, got, 0.0) - np.where(want_fin, want, 0.0))
    k = np.unravel_index(np.argmax(diff), diff.shape) if diff.size else None
    assert diff.size == 0 or diff.max() <= atol, (
        f"{what} max |got - reference| = {diff.max():.3e} at {k}: got {got[k]!r}, reference {want[k]!r}"
    )


# --- hypothesis strategies ------------------------------------------------------------------


def finite(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def delay_shape(kind, n_out, n_in):
    return {"none": None, "synaptic": (n_out, n_in), "axonal": (n_in,), "dendritic": (n_out,)}[kind]


@st.composite
def layer_cases(
    draw,
    *,
    kinds=DELAY_KINDS,
    max_in=6,
    max_out=4,
    max_samples=3,
    max_spikes=8,
    w_range=(-1.5, 3.0),
    d_range=(0.0, 2.0),
    t_range=(0.0, 4.0),
    unique_inputs=False,
    min_spikes=0,
):
    """A random layer (weights incl. negative, delays >= 0 of a random kind) and a random
    batch of input spikes."""
    n_in = draw(st.integers(1, max_in))
    n_out = draw(st.integers(1, max_out))
    # A square layer with 1-d delays is ambiguous by shape; delay_kind is always passed.
    kind = draw(st.sampled_from(kinds))
    n_samples = draw(st.integers(1, max_samples))
    w = np.array(draw(st.lists(finite(*w_range), min_size=n_out * n_in, max_size=n_out * n_in)))
    w = w.reshape(n_out, n_in)
    shape = delay_shape(kind, n_out, n_in)
    if shape is None:
        d = None
    else:
        size = int(np.prod(shape))
        d = np.array(draw(st.lists(finite(*d_range), min_size=size, max_size=size))).reshape(shape)
    rows = []
    for s in range(n_samples):
        if unique_inputs:
            ids = draw(
                st.lists(
                    st.integers(0, n_in - 1),
                    unique=True,
                    min_size=min(min_spikes, n_in),
                    max_size=min(max_spikes, n_in),
                )
            )
        else:
            ids = draw(st.lists(st.integers(0, n_in - 1), min_size=min_spikes, max_size=max_spikes))
        for i in ids:
            rows.append((s, i, draw(finite(*t_range))))
    # Rows in random order within the table (the library must not rely on any order).
    perm = draw(st.permutations(range(len(rows))))
    rows = [rows[k] for k in perm]
    return dict(n_in=n_in, n_out=n_out, kind=kind, n_samples=n_samples, weights=w, delays=d, rows=rows)


@st.composite
def network_cases(draw, max_in=5, max_hidden=5, w=(1.4, 1.0), d=(0.0, 1.5), p_spike=0.8, t_max=3.0, with_loss=False):
    """A random 2-layer network (any delay kinds) and a batch of input rows for it."""
    sizes = [draw(st.integers(1, max_in)), draw(st.integers(1, max_hidden)), draw(st.integers(1, 3))]
    kinds = [draw(st.sampled_from(("none", "synaptic", "axonal", "dendritic"))) for _ in range(2)]
    seed = draw(st.integers(0, 2**32 - 1))
    n_samples = draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    layers = []
    for index, kind in enumerate(kinds):
        n_in, n_out = sizes[index], sizes[index + 1]
        # Mostly excitatory, so that the hidden layer spikes and drives the output.
        wts = rng.normal(w[0], w[1], size=(n_out, n_in))
        shape = {"none": None, "synaptic": (n_out, n_in), "axonal": (n_in,), "dendritic": (n_out,)}[kind]
        dl = None if shape is None else rng.uniform(d[0], d[1], size=shape)
        layers.append((wts, dl, kind))
    rows = [
        (s, i, float(rng.uniform(0.0, t_max)))
        for s in range(n_samples)
        for i in range(sizes[0])
        if rng.random() < p_spike
    ]
    rng.shuffle(rows)
    case = dict(sizes=sizes, layers=layers, rows=rows, n_samples=n_samples)
    if with_loss:
        case["c"] = rng.uniform(-1, 1, size=(n_samples, sizes[-1]))
    return case
