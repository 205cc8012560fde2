"""The hardware-loop wire protocol, shared by ``hw_daemon`` and :mod:`delgrad.hardware.client`.

Transport: ZeroMQ. The daemon binds a ROUTER socket, clients connect DEALER sockets (a REQ
socket also works: its empty envelope frame is kept and echoed). Every message is::

    [header, body_0, body_1, ...]

``header`` is one UTF-8 JSON object; every body frame is one Arrow IPC *stream* (schema plus
zero or more record batches). Nothing is pickled.

Request header, common fields:

===========  ========================================================================
``v``        protocol version (int); the daemon answers ``bad_version`` to any other
``op``       ``hello`` | ``configure`` | ``run`` | ``status``
``id``       request id, a non-empty string (<= 128 chars); a retry re-sends the same id
``session``  optional string (<= 128 chars) naming the client across reconnects; replies
             are cached per (session, id), or per (socket identity, id) without one
===========  ========================================================================

Per op (fields beyond the common ones; ``[frames]`` are the body frames):

``hello``      request: nothing. reply: ``backend`` (name), ``capabilities`` (neurons,
               weight_bits, weight_max_int, default_weight_scale, delay_kinds, delay_range,
               time_quantum (tau) and time_quantum_s, tau_chip_s, speedup, duration,
               nonidealities, limits), ``versions``, ``ops``.
``configure``  request: ``neuron`` {tau_m, tau_s, theta, mode}, ``layers`` [{n_in, n_out,
               delay_kind}], optional ``weight_scale`` (number, or one per layer), optional
               ``input_replication`` (int >= 1); [weights, delays].
               reply: ``config_id``, the *realised* ``neuron``/``layers``/``input_replication``,
               ``report`` (per layer: weight_scale, weights_clipped, max_weight_change,
               delays_clipped; neurons_used); [realised weights, realised delays].
``run``        request: ``config_id``, ``n_samples``, optional ``seed`` (int >= 0, the run's
               noise), optional ``duration`` (recording window, tau); [input spikes], whose
               ``neuron`` is the input *channel*, ``< n_in / input_replication``; channel
               ``c`` drives input rows ``c + k * n_channels`` (see :func:`replicate_inputs`).
               reply: ``config_id``, ``n_samples``, ``sizes``, ``seed``, ``health``
               {input_events, dropped_inputs, played_events, recorded_events (per layer),
               lost_events, lost_per_layer, duration, chip_time_s, wall_time_s};
               [spikes of layer 0, spikes of layer 1, ...].
``status``     request: nothing. reply: ``backend``, ``pid``, ``uptime_s``, ``busy_s``,
               ``counters`` {requests, runs, configures, cache_hits, errors, input_events,
               recorded_events, dropped_inputs, lost_events, ...}, ``errors`` (per code),
               ``configs``, ``cache`` {entries, bytes}.

Every reply carries ``v``, ``id`` (``null`` when the request had no readable id), ``op`` and
``ok``. Errors are replies ``{"ok": false, "code": ..., "message": ...}`` with a code from
:data:`ERROR_CODES`.

Body schemas (column order is free, names and types are not, extra columns are refused):

* spikes: ``sample`` uint32, ``neuron`` uint32, ``time`` float64 (DESIGN.md's one schema).
* weights: ``layer`` uint16, ``post`` uint32, ``pre`` uint32, ``weight`` float64; every synapse
  of every layer exactly once.
* delays: ``layer`` uint16, ``index`` uint32, ``delay`` float64; ``index`` is the source for
  axonal delays, the target for dendritic ones, ``post * n_in + pre`` for synaptic ones, and
  layers without delays have no rows.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from delgrad import _core

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
OPS = ("hello", "configure", "run", "status")

MAX_HEADER_BYTES = 1 << 20
MAX_ID_CHARS = 128
MAX_LAYERS = 64
# Guards allocation from a header's declared sizes before a backend can say "does not fit".
MAX_SYNAPSES = 1 << 24
# Bytes of one weights row (u16 layer, u32 post, u32 pre, f64 weight) in an Arrow IPC frame.
WEIGHT_ROW_BYTES = 18

# --- error codes --------------------------------------------------------------------------------

BAD_MESSAGE = "bad_message"
BAD_HEADER = "bad_header"
BAD_VERSION = "bad_version"
UNKNOWN_OP = "unknown_op"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_FRAME = "bad_frame"
BAD_SCHEMA = "bad_schema"
BAD_SPIKES = "bad_spikes"
BAD_PARAMETERS = "bad_parameters"
TOO_LARGE = "too_large"
DOES_NOT_FIT = "does_not_fit"
UNSUPPORTED = "unsupported"
UNKNOWN_CONFIG = "unknown_config"
ID_REUSED = "id_reused"
BACKEND_ERROR = "backend_error"
SLOW_CLIENT = "slow_client"
INTERNAL = "internal"

ERROR_CODES: dict[str, str] = {
    BAD_MESSAGE: "the multipart message has no header frame or too many frames",
    BAD_HEADER: "the header frame is not a UTF-8 JSON object",
    BAD_VERSION: "the protocol version `v` is missing or not supported",
    UNKNOWN_OP: "`op` names no operation",
    MISSING_FIELD: "a required header field is absent",
    BAD_FIELD: "a header field has the wrong type or an invalid value",
    BAD_FRAME: "a body frame is not a readable Arrow IPC stream, or frames are missing/extra",
    BAD_SCHEMA: "an Arrow frame has the wrong columns or column types",
    BAD_SPIKES: "spike rows are invalid (NaN/inf time, nulls, ids out of range)",
    BAD_PARAMETERS: "network parameters are invalid (non-finite, missing, duplicated, shapes)",
    TOO_LARGE: "the request exceeds a size limit of the daemon",
    DOES_NOT_FIT: "the network needs more neurons than the backend has",
    UNSUPPORTED: "the backend cannot realise this (e.g. a delay kind it does not have)",
    UNKNOWN_CONFIG: "`config_id` is not (or no longer) configured on the daemon",
    ID_REUSED: "a request id was reused for a different request",
    BACKEND_ERROR: "the backend failed while executing a valid request",
    SLOW_CLIENT: "replies to this client are piling up unread; the reply was replaced by this error",
    INTERNAL: "an unexpected daemon error (a bug); the daemon keeps serving",
}


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


# --- schemas ------------------------------------------------------------------------------------


def _schema(*cols: tuple[str, pa.DataType]) -> pa.Schema:
    # Non-nullable like the core's own output; incoming frames are checked for nulls instead.
    return pa.schema([pa.field(n, t, nullable=False) for n, t in cols])


SPIKE_SCHEMA = _schema(("sample", pa.uint32()), ("neuron", pa.uint32()), ("time", pa.float64()))
WEIGHT_SCHEMA = _schema(("layer", pa.uint16()), ("post", pa.uint32()), ("pre", pa.uint32()), ("weight", pa.float64()))
DELAY_SCHEMA = _schema(("layer", pa.uint16()), ("index", pa.uint32()), ("delay", pa.float64()))

DELAY_KINDS: tuple[str, ...] = _core.DELAY_KINDS


# --- headers ------------------------------------------------------------------------------------


def new_request_id() -> str:
    """A fresh request id (random, so ids of different clients never collide)."""
    return uuid.uuid4().hex


def encode_header(header: Mapping[str, Any]) -> bytes:
    """Compact JSON; NaN/inf are refused because JSON has no spelling for them."""
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """Parses a header frame; raises :class:`ProtocolError` ``bad_header``."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(BAD_HEADER, f"header is {len(frame)} bytes (limit {MAX_HEADER_BYTES})")
    try:
        text = bytes(frame).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(BAD_HEADER, f"header is not UTF-8 ({e})") from None
    try:
        obj = _HEADER_DECODER.decode(text)
    except ValueError as e:
        raise ProtocolError(BAD_HEADER, f"header is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_HEADER, f"header must be a JSON object, got {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every header (json.loads with options builds a new one per call);
# parse_constant rejects the NaN/Infinity extensions Python's json would accept.
_HEADER_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def request_header(op: str, request_id: str | None = None, session: str | None = None, **fields: Any) -> dict[str, Any]:
    """A request header with the common fields filled in."""
    h: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": op, "id": request_id or new_request_id()}
    if session is not None:
        h["session"] = session
    h.update({k: v for k, v in fields.items() if v is not None})
    return h


def ok_reply(request_id: str | None, op: str | None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "ok": True, **fields}


def error_reply(code: str, message: str, request_id: Any = None, op: Any = None) -> dict[str, Any]:
    """An error reply; ``request_id``/``op`` are echoed only when they are plain strings."""
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id if isinstance(request_id, str) else None,
        "op": op if isinstance(op, str) else None,
        "ok": False,
        "code": code,
        "message": message,
    }


def encode_message(header: Mapping[str, Any], frames: Sequence[Any] = ()) -> list[Any]:
    return [encode_header(header), *frames]


# --- header fields ------------------------------------------------------------------------------


def field(
    header: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None
) -> Any:
    """``header[name]`` checked against ``kind`` (``bool`` never passes for ``int``)."""
    if name not in header or header[name] is None:
        if required:
            raise ProtocolError(MISSING_FIELD, f"header field {name!r} is required")
        return default
    v = header[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(v, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(BAD_FIELD, f"header field {name!r} must be {names}, got {v!r:.80}")
    return v


def int_field(
    header: Mapping[str, Any],
    name: str,
    *,
    lo: int,
    hi: int,
    required: bool = True,
    default: int | None = None,
    limit: bool = False,
) -> int | None:
    """An int in ``[lo, hi]``; with ``limit``, ``hi`` is a size limit and exceeding it is
    ``too_large`` rather than ``bad_field``."""
    v = field(header, name, int, required=required, default=default)
    if v is None:
        return None
    if not lo <= v <= hi:
        code = TOO_LARGE if limit and v > hi else BAD_FIELD
        raise ProtocolError(code, f"header field {name!r} = {v} is outside [{lo}, {hi}]")
    return v


def number_field(
    header: Mapping[str, Any], name: str, *, positive: bool = True, required: bool = True, default: float | None = None
) -> float | None:
    v = field(header, name, (int, float), required=required, default=default)
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v) or (positive and v <= 0):
        need = "finite and > 0" if positive else "finite"
        raise ProtocolError(BAD_FIELD, f"header field {name!r} must be {need}, got {v}")
    return v


def check_id(header: Mapping[str, Any]) -> str:
    """The request id; every request needs one (it is what makes retries idempotent)."""
    rid = field(header, "id", str)
    if not 0 < len(rid) <= MAX_ID_CHARS:
        raise ProtocolError(BAD_FIELD, f"'id' must have 1..{MAX_ID_CHARS} characters")
    return rid


def check_session(header: Mapping[str, Any]) -> str | None:
    s = field(header, "session", str, required=False)
    if s is not None and not 0 < len(s) <= MAX_ID_CHARS:
        raise ProtocolError(BAD_FIELD, f"'session' must have 1..{MAX_ID_CHARS} characters")
    return s


def check_version(header: Mapping[str, Any]) -> int:
    v = header.get("v")
    if isinstance(v, bool) or not isinstance(v, int) or v not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            BAD_VERSION,
            f"protocol version {v!r} is not supported (this daemon speaks {list(SUPPORTED_VERSIONS)})",
        )
    return v


# --- Arrow frames -------------------------------------------------------------------------------


def encode_table(data: pa.RecordBatch | pa.Table) -> pa.Buffer:
    """One Arrow IPC stream holding ``data``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as w:
        if isinstance(data, pa.Table):
            w.write_table(data)
        else:
            w.write_batch(data)
    return sink.getvalue()


def _aligned(frame: Any) -> pa.Buffer:
    """``frame`` as an Arrow buffer starting on an 8-byte boundary.

    Arrow IPC pads every buffer to 8 bytes relative to the stream start, so an aligned start
    aligns every column. ZeroMQ may hand over frames at any offset inside its receive buffer,
    and consumers such as arrow-rs refuse (or crash on) misaligned columns: copy those.
    """
    buf = pa.py_buffer(frame)
    if buf.address % 8 == 0:
        return buf
    out = pa.allocate_buffer(buf.size)
    memoryview(out).cast("B")[:] = memoryview(buf).cast("B")
    return out


def check_plain_stream(frame: Any, what: str, *, max_rows: int | None = None) -> None:
    """Refuses, before anything is decoded, what would make a small frame allocate a lot:
    compressed record batches (a 55 KB ZSTD frame can decompress to gigabytes), dictionary
    batches (no protocol column is dictionary-encoded), and batches declaring more than
    ``max_rows`` rows. Walks the stream's messages; bodies are skipped, not read."""
    try:
        messages = pa.ipc.MessageReader.open_stream(pa.py_buffer(frame))
        rows = 0
        for message in messages:
            if message.type.startswith("dictionary"):
                raise ProtocolError(BAD_FRAME, f"{what}: dictionary-encoded Arrow IPC is refused")
            if message.type != "record batch":
                continue
            batch = _flat_field_table(message.metadata, _flat_table(message.metadata, 0), 2)
            if batch is None:
                raise ProtocolError(BAD_FRAME, f"{what}: a record batch message without its header")
            if _flat_field_table(message.metadata, batch, 3) is not None:
                raise ProtocolError(
                    BAD_FRAME, f"{what}: compressed Arrow IPC is refused (send uncompressed record batches)"
                )
            rows += _flat_int64(message.metadata, batch, 0)
            if max_rows is not None and rows > max_rows:
                raise ProtocolError(TOO_LARGE, f"{what}: more than {max_rows} rows")
    except ProtocolError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError, struct.error) as e:
        raise ProtocolError(BAD_FRAME, f"{what}: not an Arrow IPC stream ({e})") from None


# A minimal FlatBuffers reader for the two fields of an IPC message that matter before decoding:
# Message.header (field 2, the RecordBatch table) and RecordBatch.length / .compression (fields
# 0 and 3). Layout: a table starts with an int32 back-offset to its vtable, which lists uint16
# offsets of the fields (0: absent); a sub-table field holds a uint32 forward offset.
def _flat_table(buf: Any, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _flat_field(buf: Any, table: int, field_index: int) -> int | None:
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field_index
    if slot + 2 > vt_size:
        return None
    off = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + off if off else None


def _flat_field_table(buf: Any, table: int, field_index: int) -> int | None:
    pos = _flat_field(buf, table, field_index)
    return None if pos is None else _flat_table(buf, pos)


def _flat_int64(buf: Any, table: int, field_index: int) -> int:
    pos = _flat_field(buf, table, field_index)
    return 0 if pos is None else struct.unpack_from("<q", buf, pos)[0]


def decode_table(frame: Any, schema: pa.Schema, what: str, *, max_rows: int | None = None) -> pa.RecordBatch:
    """Reads one Arrow IPC stream frame into a single RecordBatch with exactly ``schema``.

    Untrusted input: the stream is read, every batch fully validated (offsets, buffer sizes)
    and the columns checked for nulls before any value is used. Spike frames are read by the
    core (:func:`decode_spikes`).
    """
    if schema is SPIKE_SCHEMA:
        return decode_spikes(frame, what, max_rows=max_rows)
    check_plain_stream(frame, what, max_rows=max_rows)
    try:
        reader = pa.ipc.open_stream(_aligned(frame))
        got = reader.schema
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as e:
        raise ProtocolError(BAD_FRAME, f"{what}: not an Arrow IPC stream ({e})") from None
    exact = got.equals(schema)
    names = got.names
    want = {f.name: f.type for f in schema}
    if not exact and (sorted(names) != sorted(want) or len(set(names)) != len(names)):
        raise ProtocolError(
            BAD_SCHEMA,
            f"{what}: columns {names} but the protocol needs exactly {list(want)} "
            f"({', '.join(f'{n}: {t}' for n, t in want.items())})",
        )
    for f in () if exact else got:
        if f.type != want[f.name]:
            raise ProtocolError(BAD_SCHEMA, f"{what}: column {f.name!r} is {f.type}, the protocol needs {want[f.name]}")
    try:
        batches = []
        rows = 0
        for b in reader:
            rows += b.num_rows
            if max_rows is not None and rows > max_rows:
                raise ProtocolError(TOO_LARGE, f"{what}: more than {max_rows} rows")
            b.validate(full=True)
            batches.append(b)
    except ProtocolError:
        raise
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as e:
        raise ProtocolError(BAD_FRAME, f"{what}: truncated or corrupt Arrow IPC stream ({e})") from None
    if len(batches) == 1:  # the usual case: no concatenation
        data: pa.RecordBatch | pa.Table = batches[0]
    else:
        data = pa.Table.from_batches(batches, schema=got).combine_chunks()
    for name, col in zip(data.schema.names, data.columns):
        if col.null_count:
            raise ProtocolError(BAD_PARAMETERS, f"{what}: column {name!r} has {col.null_count} nulls")
    if isinstance(data, pa.Table):
        return _single_batch(data.select(schema.names), schema)
    if exact:  # what our own encoder sends: no rebuilding
        return data
    return pa.RecordBatch.from_arrays([data.column(n) for n in schema.names], schema=schema)


# --- spikes -------------------------------------------------------------------------------------


def encode_spikes(spikes: Any) -> bytes:
    """One Arrow IPC stream frame holding a spike table (pyarrow RecordBatch or Table, polars
    DataFrame, anything exporting ``__arrow_c_stream__``), in :data:`SPIKE_SCHEMA`'s types.

    Written by the core: spike frames are on every run's path, where each Python-level step
    costs (see ``benchmarks/hw_latency.py``)."""
    return _core.write_spike_frame(spikes)


def decode_spikes(
    frame: Any, what: str, *, n_samples: int | None = None, n_neurons: int | None = None, max_rows: int | None = None
) -> pa.RecordBatch:
    """Reads a spike frame (untrusted) into one RecordBatch with :data:`SPIKE_SCHEMA`.

    The core decodes and validates in one pass: exactly the three columns with their types
    (``bad_schema``), a readable stream (``bad_frame``), at most ``max_rows`` rows
    (``too_large``), no nulls, finite times, ``sample < n_samples`` and ``neuron < n_neurons``
    when given (``bad_spikes``). Raises :class:`ProtocolError` with that code, naming ``what``
    and the first offending row.
    """
    with reading_frames():
        return _core.read_spike_frame(frame, what, n_samples, n_neurons, max_rows)


@contextmanager
def reading_frames() -> Iterator[None]:
    """Turns what the core raises on a bad spike frame (``FrameError`` with its code,
    ``SpikeError``) into :class:`ProtocolError`."""
    try:
        yield
    except _core.FrameError as e:
        raise ProtocolError(e.code, str(e)) from None
    except _core.SpikeError as e:
        raise ProtocolError(BAD_SPIKES, str(e)) from None


def spike_batch(sample: Any, neuron: Any, time: Any) -> pa.RecordBatch:
    """A spikes RecordBatch from three equally long arrays."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(sample, np.uint32)),
            pa.array(np.asarray(neuron, np.uint32)),
            pa.array(np.asarray(time, np.float64)),
        ],
        schema=SPIKE_SCHEMA,
    )


def as_spike_batch(spikes: Any) -> pa.RecordBatch:
    """Any Arrow spike table (RecordBatch, Table, RecordBatchReader, polars DataFrame, or
    anything exporting ``__arrow_c_stream__``) as one RecordBatch with :data:`SPIKE_SCHEMA`."""
    if isinstance(spikes, pa.RecordBatch):
        if spikes.schema.equals(SPIKE_SCHEMA):
            return spikes
        table = pa.Table.from_batches([spikes])
    elif isinstance(spikes, pa.Table):
        table = spikes
    elif isinstance(spikes, pa.RecordBatchReader):
        table = spikes.read_all()
    elif hasattr(spikes, "__arrow_c_stream__"):
        table = pa.table(spikes)
    else:
        raise TypeError(f"spikes must be an Arrow table or batch, got {type(spikes).__name__}")
    missing = [n for n in SPIKE_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"spikes: missing columns {missing} (need sample, neuron, time)")
    table = table.select(SPIKE_SCHEMA.names).cast(SPIKE_SCHEMA)
    return _single_batch(table, SPIKE_SCHEMA)


def _single_batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    """``table`` as exactly one RecordBatch (an empty one when it has no rows)."""
    batches = table.combine_chunks().to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return pa.RecordBatch.from_arrays(batches[0].columns, schema=schema)


def spike_columns(rb: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-copy numpy views of a spike batch's columns (in :data:`SPIKE_SCHEMA` order, as
    every batch made or decoded here is)."""
    s, n, t = rb.columns
    return s.to_numpy(), n.to_numpy(), t.to_numpy()


def replicate_inputs(rb: Any, n_channels: int, replication: int) -> pa.RecordBatch:
    """Input replication as the backends do it: channel ``c`` drives input rows
    ``c, c + n_channels, ..., c + (replication - 1) * n_channels`` at the same time.

    The host needs this too: the backward pass takes the replicated input spikes.
    """
    rb = as_spike_batch(rb)
    if replication == 1:
        return rb
    return spike_batch(*replicate_columns(*spike_columns(rb), n_channels, replication))


def replicate_columns(
    sample: np.ndarray, neuron: np.ndarray, time: np.ndarray, n_channels: int, replication: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`replicate_inputs` on numpy columns."""
    if replication == 1:
        return sample, neuron, time
    offsets = np.arange(replication, dtype=np.uint32)[:, None] * np.uint32(n_channels)
    return (
        np.broadcast_to(sample, (replication, sample.size)).ravel(),
        (neuron[None, :] + offsets).ravel(),
        np.broadcast_to(time, (replication, time.size)).ravel(),
    )


# --- networks -----------------------------------------------------------------------------------


def _delay_count(kind: str, n_out: int, n_in: int) -> int:
    return math.prod(_core.delay_shape(kind, n_out, n_in))


def encode_network(net: Any) -> tuple[dict[str, Any], list[pa.Buffer]]:
    """Header fields (``neuron``, ``layers``) and body frames ``[weights, delays]`` of a
    :class:`delgrad.Network`."""
    layer_ids, posts, pres, ws = [], [], [], []
    d_layer, d_index, d_val = [], [], []
    layers = []
    for index, layer in enumerate(net.layers):
        w = np.asarray(layer.weights, np.float64)
        n_out, n_in = w.shape
        layers.append({"n_in": int(n_in), "n_out": int(n_out), "delay_kind": layer.delay_kind})
        layer_ids.append(np.full(w.size, index, np.uint16))
        posts.append(np.repeat(np.arange(n_out, dtype=np.uint32), n_in))
        pres.append(np.tile(np.arange(n_in, dtype=np.uint32), n_out))
        ws.append(w.ravel())
        if layer.delay_kind != "none":
            d = np.asarray(layer.delays, np.float64).ravel()
            d_layer.append(np.full(d.size, index, np.uint16))
            d_index.append(np.arange(d.size, dtype=np.uint32))
            d_val.append(d)
    cat = lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt)  # noqa: E731
    weights = pa.RecordBatch.from_arrays(
        [
            pa.array(cat(layer_ids, np.uint16)),
            pa.array(cat(posts, np.uint32)),
            pa.array(cat(pres, np.uint32)),
            pa.array(cat(ws, np.float64)),
        ],
        schema=WEIGHT_SCHEMA,
    )
    delays = pa.RecordBatch.from_arrays(
        [pa.array(cat(d_layer, np.uint16)), pa.array(cat(d_index, np.uint32)), pa.array(cat(d_val, np.float64))],
        schema=DELAY_SCHEMA,
    )
    n = net.neuron
    fields = {
        "neuron": {"tau_m": n.tau_m, "tau_s": n.tau_s, "theta": n.theta, "mode": n.mode},
        "layers": layers,
    }
    return fields, [encode_table(weights), encode_table(delays)]


def check_layers(header: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``layers`` field: a chain of ``{n_in, n_out, delay_kind}`` objects."""
    layers = field(header, "layers", list)
    if not 0 < len(layers) <= MAX_LAYERS:
        raise ProtocolError(BAD_FIELD, f"'layers' must list 1..{MAX_LAYERS} layers, got {len(layers)}")
    out = []
    total = 0
    for index, spec in enumerate(layers):
        if not isinstance(spec, dict):
            raise ProtocolError(BAD_FIELD, f"layers[{index}] must be an object")
        n_in = int_field(spec, "n_in", lo=1, hi=MAX_SYNAPSES)
        n_out = int_field(spec, "n_out", lo=1, hi=MAX_SYNAPSES)
        kind = field(spec, "delay_kind", str, required=False, default="none")
        if kind not in DELAY_KINDS:
            raise ProtocolError(BAD_FIELD, f"layers[{index}].delay_kind must be one of {DELAY_KINDS}, got {kind!r}")
        if out and n_in != out[-1]["n_out"]:
            raise ProtocolError(
                BAD_PARAMETERS, f"layers[{index}].n_in = {n_in} but layers[{index - 1}].n_out = {out[-1]['n_out']}"
            )
        total += n_in * n_out
        if total > MAX_SYNAPSES:
            raise ProtocolError(TOO_LARGE, f"the network has more than {MAX_SYNAPSES} synapses")
        out.append({"n_in": n_in, "n_out": n_out, "delay_kind": kind})
    return out


def check_neuron(header: Mapping[str, Any]) -> dict[str, Any]:
    spec = field(header, "neuron", dict)
    return {
        "tau_m": number_field(spec, "tau_m"),
        "tau_s": number_field(spec, "tau_s"),
        "theta": number_field(spec, "theta"),
        "mode": field(spec, "mode", str, required=False, default="ttfs"),
    }


def decode_network(header: Mapping[str, Any], frames: Sequence[Any]) -> Any:
    """The :class:`delgrad.Network` described by a configure request (or reply).

    Raises :class:`ProtocolError` naming the first problem found.
    """
    import delgrad  # the package, not only its core: Layer and Network are Python classes

    neuron_spec = check_neuron(header)
    layers = check_layers(header)
    if len(frames) != 2:
        raise ProtocolError(BAD_FRAME, f"configure needs 2 body frames (weights, delays), got {len(frames)}")
    n_syn = sum(s["n_in"] * s["n_out"] for s in layers)
    n_del = sum(_delay_count(s["delay_kind"], s["n_out"], s["n_in"]) for s in layers)
    try:
        wrb = decode_table(frames[0], WEIGHT_SCHEMA, "weights", max_rows=n_syn)
        drb = decode_table(frames[1], DELAY_SCHEMA, "delays", max_rows=n_del)
    except ProtocolError as e:
        if e.code != TOO_LARGE:
            raise
        raise ProtocolError(BAD_PARAMETERS, f"{e.message}: more than the declared layers have") from None
    if wrb.num_rows != n_syn:
        raise ProtocolError(BAD_PARAMETERS, f"weights: {wrb.num_rows} rows for {n_syn} synapses")
    if drb.num_rows != n_del:
        raise ProtocolError(BAD_PARAMETERS, f"delays: {drb.num_rows} rows for {n_del} delays")
    wl = wrb.column("layer").to_numpy()
    post = wrb.column("post").to_numpy()
    pre = wrb.column("pre").to_numpy()
    wv = wrb.column("weight").to_numpy()
    dl = drb.column("layer").to_numpy()
    di = drb.column("index").to_numpy()
    dv = drb.column("delay").to_numpy()
    for name, v in (("weights", wv), ("delays", dv)):
        if v.size and not np.isfinite(v).all():
            row = int(np.argmax(~np.isfinite(v)))
            raise ProtocolError(BAD_PARAMETERS, f"{name}: value at row {row} is {v[row]} (must be finite)")
    for name, lay in (("weights", wl), ("delays", dl)):
        if lay.size and int(lay.max()) >= len(layers):
            raise ProtocolError(
                BAD_PARAMETERS, f"{name}: layer id {int(lay.max())} but the network has {len(layers)} layers"
            )
    try:
        neuron = delgrad.Neuron(**neuron_spec)
    except (ValueError, TypeError) as e:
        raise ProtocolError(BAD_PARAMETERS, f"neuron: {e}") from None
    out_layers = []
    for index, spec in enumerate(layers):
        n_in, n_out, kind = spec["n_in"], spec["n_out"], spec["delay_kind"]
        m = wl == index
        p, q = post[m], pre[m]
        if (p.size and int(p.max()) >= n_out) or (q.size and int(q.max()) >= n_in):
            raise ProtocolError(BAD_PARAMETERS, f"weights: layer {index} has post/pre ids outside ({n_out}, {n_in})")
        flat = p.astype(np.int64) * n_in + q
        if p.size != n_out * n_in or np.bincount(flat, minlength=n_out * n_in).max(initial=0) > 1:
            raise ProtocolError(
                BAD_PARAMETERS, f"weights: layer {index} must list each of its {n_out}x{n_in} synapses exactly once"
            )
        w = np.empty(n_out * n_in)
        w[flat] = wv[m]
        w = w.reshape(n_out, n_in)
        nd = _delay_count(kind, n_out, n_in)
        md = dl == index
        idx = di[md]
        if idx.size != nd or (nd and (int(idx.max()) >= nd or np.bincount(idx, minlength=nd).max() > 1)):
            raise ProtocolError(
                BAD_PARAMETERS, f"delays: layer {index} ({kind}) must list each of its {nd} delays exactly once"
            )
        d = np.empty(nd)
        d[idx] = dv[md]
        d = d.reshape(_core.delay_shape(kind, n_out, n_in))
        try:
            out_layers.append(delgrad.Layer(w, d, kind))
        except (ValueError, TypeError) as e:
            raise ProtocolError(BAD_PARAMETERS, f"layer {index}: {e}") from None
    try:
        return delgrad.Network(out_layers, neuron)
    except (ValueError, TypeError) as e:
        raise ProtocolError(BAD_PARAMETERS, f"network: {e}") from None


# --- recorded spikes ----------------------------------------------------------------------------


def encode_layers(batches: Sequence[pa.RecordBatch]) -> list[bytes]:
    return [encode_spikes(b) for b in batches]


def decode_layers(frames: Sequence[Any], sizes: Sequence[int], n_samples: int) -> list[pa.RecordBatch]:
    """The per-layer spike frames of a run reply, checked against the layer sizes."""
    if len(frames) != len(sizes):
        raise ProtocolError(BAD_FRAME, f"run reply: {len(frames)} spike frames for {len(sizes)} layers")
    return [
        decode_spikes(f, f"layer {index} spikes", n_samples=n_samples, n_neurons=n)
        for index, (f, n) in enumerate(zip(frames, sizes))
    ]
