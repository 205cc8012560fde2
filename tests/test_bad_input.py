"""Malformed input: each problem raises the right exception class, with a message that names it.
Columns of other integer widths and float32 time are accepted and give the same results."""

from __future__ import annotations

import re

import delgrad
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from helpers import batch, rows_to_batch

N = delgrad.Neuron(2.0, 1.0, 1.0)
W = np.array([[1.5, 1.0, 0.8], [2.0, -0.5, 1.0]])  # (n_out=2, n_in=3)
ROWS = [(0, 0, 0.0), (0, 1, 0.2), (1, 2, 0.1), (1, 0, 0.4), (2, 1, 0.3), (2, 2, 0.5)]
N_SAMPLES = 3


def good_batch():
    return rows_to_batch(ROWS)


def forward(spikes, w=W, d=None, n_samples=N_SAMPLES, **kw):
    return delgrad.layer_forward(spikes, w, d, N, n_samples=n_samples, **kw)


def with_column(rb: pa.RecordBatch, name: str, arr) -> pa.RecordBatch:
    cols = {n: rb.column(n) for n in rb.schema.names}
    cols[name] = arr
    return pa.record_batch(cols)


def test_exception_classes_are_value_errors():
    for cls in (delgrad.SpikeError, delgrad.ShapeError, delgrad.ParameterError):
        assert issubclass(cls, ValueError)
    assert len({delgrad.SpikeError, delgrad.ShapeError, delgrad.ParameterError}) == 3


def test_good_input_works():
    out = forward(good_batch())
    assert out.num_rows > 0


# --- spike tables: values ---------------------------------------------------------------------


@pytest.mark.parametrize("bad, word", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_time(bad, word):
    t = np.array([r[2] for r in ROWS])
    t[3] = bad
    rb = with_column(good_batch(), "time", pa.array(t))
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    msg = str(e.value).lower()
    assert "row 3" in msg and word in msg and "time" in msg


def test_non_finite_time_in_network_and_backward():
    t = np.array([r[2] for r in ROWS])
    t[4] = np.nan
    rb = with_column(good_batch(), "time", pa.array(t))
    net = delgrad.Network(layers=[delgrad.Layer(W)], neuron=N)
    with pytest.raises(delgrad.SpikeError, match="row 4"):
        net.forward(rb, n_samples=N_SAMPLES)
    out = forward(good_batch())
    with pytest.raises(delgrad.SpikeError, match="row 4"):
        delgrad.layer_backward(rb, W, None, N, out, np.ones(out.num_rows), n_samples=N_SAMPLES)
    # A non-finite time in `out` (recorded spikes) is caught as well.
    bad_out = with_column(out, "time", pa.array(np.r_[np.inf, out.column("time").to_numpy()[1:]]))
    with pytest.raises(delgrad.SpikeError, match="row 0"):
        delgrad.layer_backward(good_batch(), W, None, N, bad_out, np.ones(out.num_rows), n_samples=N_SAMPLES)


def test_neuron_id_out_of_range():
    n = np.array([r[1] for r in ROWS], dtype=np.uint32)
    n[2] = 3  # the layer has n_in = 3 inputs: ids 0..2
    rb = with_column(good_batch(), "neuron", pa.array(n))
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    msg = str(e.value)
    assert "neuron id" in msg and "row 2" in msg and "3" in msg


def test_sample_id_out_of_range():
    s = np.array([r[0] for r in ROWS], dtype=np.uint32)
    s[5] = N_SAMPLES
    rb = with_column(good_batch(), "sample", pa.array(s))
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    msg = str(e.value)
    assert "sample id" in msg and "row 5" in msg and "n_samples" in msg


def test_sample_id_out_of_range_in_out_table():
    out = forward(good_batch())
    s = out.column("sample").to_numpy().copy()
    s[-1] = 7
    bad_out = with_column(out, "sample", pa.array(s))
    with pytest.raises(delgrad.SpikeError, match=f"row {out.num_rows - 1}"):
        delgrad.layer_backward(good_batch(), W, None, N, bad_out, np.ones(out.num_rows), n_samples=N_SAMPLES)


def test_negative_id_in_signed_column():
    rb = good_batch()
    s = pa.array(np.array([0, 0, 1, -1, 2, 2], dtype=np.int64))
    with pytest.raises(delgrad.SpikeError, match="sample"):
        forward(with_column(rb, "sample", s))


@pytest.mark.parametrize("column", ["sample", "neuron", "time"])
def test_missing_column(column):
    rb = good_batch()
    rb = rb.drop_columns([column])
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    assert "missing column" in str(e.value) and repr(column) in str(e.value)


@pytest.mark.parametrize("column", ["sample", "neuron", "time"])
def test_string_column(column):
    rb = with_column(good_batch(), column, pa.array([str(r) for r in range(len(ROWS))]))
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    msg = str(e.value)
    assert f"'{column}'" in msg and ("Utf8" in msg or "string" in msg.lower())


def test_float_id_column_rejected():
    rb = with_column(good_batch(), "neuron", pa.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    with pytest.raises(delgrad.SpikeError, match="neuron"):
        forward(rb)


@pytest.mark.parametrize("column, row", [("sample", 2), ("neuron", 4), ("time", 1)])
def test_null_values(column, row):
    rb = good_batch()
    vals = rb.column(column).to_pylist()
    vals[row] = None
    rb = with_column(rb, column, pa.array(vals, type=rb.schema.field(column).type))
    assert rb.column(column).null_count == 1
    with pytest.raises(delgrad.SpikeError) as e:
        forward(rb)
    msg = str(e.value)
    assert "null" in msg and f"row {row}" in msg and f"'{column}'" in msg


def test_null_in_second_chunk_reports_table_row():
    rb = good_batch()
    vals = rb.column("time").to_pylist()
    vals[4] = None
    bad = with_column(rb, "time", pa.array(vals))
    table = pa.Table.from_batches([bad.slice(0, 3), bad.slice(3)])
    with pytest.raises(delgrad.SpikeError, match="row 4"):
        forward(table)


def test_polars_nan_and_nulls():
    df = pl.DataFrame(
        {
            "sample": pl.Series([0, 0, 1], dtype=pl.UInt32),
            "neuron": pl.Series([0, 1, 2], dtype=pl.UInt32),
            "time": pl.Series([0.0, float("nan"), 0.2], dtype=pl.Float64),
        }
    )
    with pytest.raises(delgrad.SpikeError, match="row 1"):
        forward(df)
    df = df.with_columns(pl.Series("time", [0.0, None, 0.2], dtype=pl.Float64))
    with pytest.raises(delgrad.SpikeError, match="null"):
        forward(df)


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight(bad):
    w = W.copy()
    w[1, 2] = bad
    with pytest.raises(delgrad.ParameterError) as e:
        forward(good_batch(), w=w)
    msg = str(e.value)
    assert "weight" in msg and "[1, 2]" in msg
    with pytest.raises(delgrad.ParameterError, match="weight"):
        delgrad.Network(layers=[delgrad.Layer(w)], neuron=N).forward(good_batch(), N_SAMPLES)


@pytest.mark.parametrize(
    "kind, d",
    [
        ("synaptic", np.array([[0.1, 0.2, 0.3], [0.1, -0.2, 0.3]])),
        ("axonal", np.array([0.1, -1e-12, 0.3])),
        ("dendritic", np.array([-0.5, 0.2])),
    ],
)
def test_negative_delay(kind, d):
    with pytest.raises(delgrad.ParameterError) as e:
        forward(good_batch(), d=d, delay_kind=kind)
    msg = str(e.value)
    assert "delay" in msg and ">= 0" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_delay(bad):
    d = np.array([0.1, bad, 0.3])
    with pytest.raises(delgrad.ParameterError, match="delay"):
        forward(good_batch(), d=d, delay_kind="axonal")


@pytest.mark.parametrize(
    "tau_m, tau_s, theta, name",
    [
        (0.0, 1.0, 1.0, "tau_m"),
        (-2.0, 1.0, 1.0, "tau_m"),
        (np.nan, 1.0, 1.0, "tau_m"),
        (2.0, 0.0, 1.0, "tau_s"),
        (2.0, np.inf, 1.0, "tau_s"),
        (2.0, 1.0, 0.0, "theta"),
        (2.0, 1.0, -1.0, "theta"),
    ],
)
def test_bad_neuron(tau_m, tau_s, theta, name):
    with pytest.raises(delgrad.ParameterError, match=name):
        delgrad.Neuron(tau_m=tau_m, tau_s=tau_s, theta=theta)


def test_unknown_delay_kind():
    with pytest.raises(delgrad.ParameterError, match="delay_kind"):
        forward(good_batch(), d=np.zeros(3), delay_kind="somatic")


# --- shapes -----------------------------------------------------------------------------------


def test_weights_not_2d():
    with pytest.raises(delgrad.ShapeError, match="weights"):
        forward(good_batch(), w=np.ones(3))
    with pytest.raises(delgrad.ShapeError, match="weights"):
        forward(good_batch(), w=np.ones((2, 3, 1)))


def test_weights_too_narrow_for_input_ids():
    # ids up to 2 with a 2-input layer: the id is out of range for this layer.
    with pytest.raises(delgrad.SpikeError, match="neuron id 2"):
        forward(good_batch(), w=np.ones((2, 2)))


@pytest.mark.parametrize(
    "kind, d",
    [
        ("synaptic", np.zeros((3, 2))),
        ("synaptic", np.zeros((2, 4))),
        ("axonal", np.zeros(2)),
        ("dendritic", np.zeros(3)),
        ("axonal", np.zeros((2, 3))),
    ],
)
def test_wrong_delay_shape_explicit_kind(kind, d):
    with pytest.raises(delgrad.ShapeError, match="delays"):
        forward(good_batch(), d=d, delay_kind=kind)


@pytest.mark.parametrize("d", [np.zeros(4), np.zeros((3, 2)), np.zeros((2, 3, 1))])
def test_wrong_delay_shape_inferred(d):
    with pytest.raises(delgrad.ShapeError, match="delays"):
        forward(good_batch(), d=d)


def test_ambiguous_square_layer_delays():
    w = np.full((3, 3), 2.5)
    with pytest.raises(delgrad.ShapeError, match="ambiguous"):
        forward(good_batch(), w=w, d=np.zeros(3))
    # ...and it works when the kind is given; axonal and dendritic then differ.
    d = np.array([0.0, 0.5, 1.0])
    a = forward(good_batch(), w=w, d=d, delay_kind="axonal")
    b = forward(good_batch(), w=w, d=d, delay_kind="dendritic")
    assert not a.equals(b)


def test_grad_wrong_length():
    out = forward(good_batch())
    assert out.num_rows >= 2
    with pytest.raises(delgrad.ShapeError) as e:
        delgrad.layer_backward(good_batch(), W, None, N, out, np.ones(out.num_rows + 1), n_samples=N_SAMPLES)
    assert "grad" in str(e.value) and str(out.num_rows + 1) in str(e.value)


def test_grad_wrong_ndim():
    out = forward(good_batch())
    with pytest.raises(delgrad.ShapeError, match="grad"):
        delgrad.layer_backward(good_batch(), W, None, N, out, np.ones((out.num_rows, 1)), n_samples=N_SAMPLES)


def test_grad_non_finite_names_the_users_row():
    """A NaN in grad is rejected, and the message points at the row of `out` the user passed
    (here `out` is in reverse order, as recorded spikes may be)."""
    out = forward(good_batch())
    n = out.num_rows
    assert n >= 3
    rev = out.take(np.arange(n)[::-1])
    grad = np.ones(n)
    grad[0] = np.nan  # row 0 of `rev` is row n-1 of the sorted table
    with pytest.raises(ValueError) as e:
        delgrad.layer_backward(good_batch(), W, None, N, rev, grad, n_samples=N_SAMPLES)
    assert isinstance(e.value, (delgrad.SpikeError, delgrad.ShapeError, delgrad.ParameterError))
    msg = str(e.value)
    assert "grad" in msg and "nan" in msg.lower()
    # Names the user's entry/row 0, not the library's internal (sorted) index n-1.
    assert re.search(r"\b(entry|row) 0\b", msg), msg


def test_grad_times_wrong_shape():
    net = delgrad.Network(layers=[delgrad.Layer(W), delgrad.Layer(np.ones((4, 2)))], neuron=N)
    trace = net.forward(good_batch(), n_samples=N_SAMPLES)
    for shape in [(N_SAMPLES, 3), (N_SAMPLES + 1, 4), (4,), (N_SAMPLES * 4,)]:
        with pytest.raises(delgrad.ShapeError, match="grad_times"):
            net.backward(good_batch(), trace, np.zeros(shape))


def test_network_layer_mismatch():
    with pytest.raises(delgrad.ShapeError, match="n_in"):
        delgrad.Network(layers=[delgrad.Layer(W), delgrad.Layer(np.ones((4, 3)))], neuron=N)


def test_duplicate_output_spike_rejected_in_backward():
    out = forward(good_batch())
    dup = pa.Table.from_batches([out, out.slice(0, 1)]).combine_chunks().to_batches()[0]
    with pytest.raises(delgrad.SpikeError, match="more than once"):
        delgrad.layer_backward(good_batch(), W, None, N, dup, np.ones(dup.num_rows), n_samples=N_SAMPLES)


# --- accepted column types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample_type, neuron_type, time_type",
    [
        (pa.int64(), pa.uint32(), pa.float64()),
        (pa.uint32(), pa.int64(), pa.float64()),
        (pa.uint16(), pa.uint16(), pa.float64()),
        (pa.int32(), pa.uint8(), pa.float64()),
        (pa.uint64(), pa.int16(), pa.float64()),
        (pa.uint32(), pa.uint32(), pa.float32()),
        (pa.int64(), pa.int64(), pa.float32()),
    ],
)
def test_other_column_types_accepted(sample_type, neuron_type, time_type):
    # Times exactly representable in float32, so both tables describe the same spikes.
    rows = [(s, i, float(np.float32(t))) for s, i, t in ROWS]
    s, n, t = (np.array(c) for c in zip(*rows))
    want = forward(batch(s.astype(np.uint32), n.astype(np.uint32), t))
    rb = batch(s, n, t, sample_type=sample_type, neuron_type=neuron_type, time_type=time_type)
    got = forward(rb)
    assert got.equals(want)
    gw = delgrad.layer_backward(
        batch(s.astype(np.uint32), n.astype(np.uint32), t),
        W,
        None,
        N,
        want,
        np.ones(want.num_rows),
        n_samples=N_SAMPLES,
    )
    gg = delgrad.layer_backward(rb, W, None, N, want, np.ones(want.num_rows), n_samples=N_SAMPLES)
    np.testing.assert_array_equal(gg.weights, gw.weights)
    np.testing.assert_array_equal(gg.inputs, gw.inputs)


def test_polars_default_integer_types_accepted():
    """polars builds Int64 columns by default."""
    df = pl.DataFrame({"sample": [r[0] for r in ROWS], "neuron": [r[1] for r in ROWS], "time": [r[2] for r in ROWS]})
    assert df.schema["sample"] == pl.Int64
    assert forward(df).equals(forward(good_batch()))


def test_too_large_id_for_uint32():
    s = pa.array(np.array([0, 0, 1, 1, 2, 2**33], dtype=np.int64))
    with pytest.raises(delgrad.SpikeError, match="sample"):
        forward(with_column(good_batch(), "sample", s))


# --- sizes that cannot fit, sample selections out of range ---------------------------------------
# Sample ids are uint32: a batch has at most 2**32 samples. Larger counts used to abort the
# interpreter (an allocation of n_samples offsets) or raise PanicException.

HUGE_COUNTS = [10**10, 2**62, 2**32 + 1, 2**64, -1]


@pytest.mark.parametrize("n", HUGE_COUNTS)
def test_n_samples_that_cannot_fit_is_a_shape_error(n):
    with pytest.raises(delgrad.ShapeError, match=re.escape(f"n_samples = {n}")):
        forward(good_batch(), n_samples=n)


@pytest.mark.parametrize("n", HUGE_COUNTS)
def test_n_samples_that_cannot_fit_everywhere(n):
    multi = delgrad.Neuron(1.0, 1.0, 1.0, mode="multi", t_end=10.0)
    calls = [
        lambda: delgrad.SpikeSet(good_batch(), n),
        lambda: delgrad.layer_forward(good_batch(), W, None, multi, n_samples=n),
        lambda: delgrad._core.readout_forward(good_batch(), W, None, "none", multi, n, "max", 10.0),
        lambda: delgrad.Trace.from_tables([good_batch()], [3], n),
    ]
    for call in calls:
        with pytest.raises(delgrad.ShapeError, match=re.escape(f"n_samples = {n}")):
            call()


def select_set():
    return delgrad.SpikeSet(good_batch(), N_SAMPLES)


@pytest.mark.parametrize(
    "select, id_, pos",
    [([0, 2**32], 2**32, 1), ([1, 2, 2**40], 2**40, 2), ([3], 3, 0), ([0, -1], -1, 1), ([2**63], 2**63, 0)],
)
def test_select_out_of_range_names_id_and_position(select, id_, pos):
    net = delgrad.Network.random([3, 4, 2], N, seed=0)
    sel = np.array(select, dtype=np.uint64 if id_ >= 2**63 else np.int64)
    pattern = re.escape(f"sample {id_} at position {pos}")
    with pytest.raises(delgrad.ShapeError, match=pattern):
        net.forward(select_set(), select=sel)
    with pytest.raises(delgrad.ShapeError, match=pattern):
        select_set().select(sel)
    trace = net.forward(select_set(), select=np.array([0], np.uint32))
    with pytest.raises(delgrad.ShapeError, match=pattern):
        net.backward(select_set(), trace, np.zeros((1, 2)), select=sel)


def test_select_out_of_range_in_multi_network():
    from delgrad.multi import MultiNetwork

    neuron = delgrad.Neuron(1.0, 1.0, 1.0, mode="multi", t_end=10.0)
    net = MultiNetwork.random([3, 4, 2], neuron, neuron, delay_kind="synaptic", t_end=10.0)
    with pytest.raises(delgrad.ShapeError, match=re.escape(f"sample {2**32} at position 0")):
        net.forward(select_set(), select=np.array([2**32, 0]))


def test_select_in_range_gives_the_same_result_for_every_integer_type():
    net = delgrad.Network.random([3, 4, 2], N, seed=0)
    ref = net.forward(select_set(), select=np.array([2, 0], np.uint32)).first_times(-1)
    for dtype in (np.int64, np.uint64, np.int32, np.uint16):
        got = net.forward(select_set(), select=np.array([2, 0], dtype)).first_times(-1)
        np.testing.assert_array_equal(got, ref)
