"""The daemon: request handling (transport-free, :class:`Daemon`) and the ZeroMQ loop (:func:`serve`).

One thread serves the ROUTER socket and executes requests: the hardware is a serial resource,
and a single thread keeps the config store, reply cache and counters free of locks. Every
request gets exactly one reply; anything that goes wrong becomes an error reply.

Requests are jobs (:meth:`Daemon.steps`, a generator). A long run yields between slices of
samples, and :func:`serve` advances the jobs of different clients in turn, so one client's
20-million-event run holds another's small request back by about one slice, not by the whole
run.

Memory is bounded before anything is read: ZeroMQ drops a frame larger than the frame limit
(``ZMQ_MAXMSGSIZE``, disconnecting that peer) and queues at most a few messages per peer in
either direction; replies a client does not read are capped in bytes per client (the excess
is answered ``slow_client``), and compressed or dictionary-encoded Arrow IPC is refused before
it is decoded (:mod:`delgrad.hardware.protocol`, ``rust_core/src/frames.rs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import delgrad
import numpy as np
import zmq
from delgrad.hardware import protocol as P

from hw_daemon.backends.base import Backend, BackendError, Configuration
from hw_daemon.cache import LRU, ReplyCache

log = logging.getLogger("hw_daemon")

# Ops whose replies are cached for idempotent retries: those that change or consume state.
# hello and status only read, so a retry simply executes them again (and sees fresh counters).
CACHED_OPS = ("configure", "run")


# Bytes of one spike row in an Arrow IPC frame (u32 + u32 + f64), and what a frame adds to its
# rows (schema, message headers, padding).
SPIKE_ROW_BYTES = 16
FRAME_OVERHEAD = 1 << 16
WEIGHT_FRAME_SYNAPSES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Size limits; requests beyond them are answered ``too_large``.

    ``max_frame_bytes`` (None: derived) bounds every body frame; the largest a valid request
    needs is an input frame of ``max_spikes`` rows, or a weights frame (at least
    :data:`WEIGHT_FRAME_SYNAPSES` synapses, four times a fully connected 512-neuron chip). It is
    also ZeroMQ's ``MAXMSGSIZE``: a larger frame never reaches the daemon.
    ``max_reply_bytes`` caps the reply bytes queued for one client that does not read them.
    """

    max_samples: int = 1_000_000
    max_spikes: int = 20_000_000
    max_frame_bytes: int | None = None
    max_frames: int = 8
    max_reply_bytes: int = 256 << 20

    def frame_bytes(self) -> int:
        if self.max_frame_bytes is not None:
            return self.max_frame_bytes
        weights = WEIGHT_FRAME_SYNAPSES * P.WEIGHT_ROW_BYTES
        return max(self.max_spikes * SPIKE_ROW_BYTES, weights) + FRAME_OVERHEAD


class Daemon:
    """Executes protocol requests against a backend; knows nothing about sockets.

    ``handle(client, frames)`` takes the frames of one request (header first) and returns the
    frames of its reply. ``client`` identifies the connection (the ROUTER identity); it keys
    the reply cache when the request names no ``session``.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        limits: Limits | None = None,
        max_configs: int = 64,
        cache_entries: int = 4096,
        cache_bytes: int = 256 << 20,
        publish: Callable[[dict[str, Any], list[Any]], None] | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self.configs: LRU[str, Configuration] = LRU(max_configs)
        self.cache = ReplyCache(cache_entries, cache_bytes)
        self.publish = publish
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started = time.time()
        self.busy_s = 0.0  # time spent handling requests (the rest of the uptime is idle)
        # Runs without a client seed still get a recorded one, so every run is reproducible.
        self._seeds = np.random.default_rng()
        self._inflight: set[tuple] = set()

    # --- entry point ------------------------------------------------------------------------

    def handle(self, client: bytes, frames: Sequence[Any]) -> list[Any]:
        """The reply frames for one request; never raises."""
        return drive(self.steps(client, frames))

    def steps(self, client: bytes, frames: Sequence[Any]) -> Generator[None, None, list[Any]]:
        """One request as a job: yields between slices of a long run (the caller may serve
        other jobs meanwhile) and returns the reply frames; never raises."""
        self.counters["requests"] += 1
        header: dict[str, Any] = {}
        try:
            if not frames:
                raise P.ProtocolError(P.BAD_MESSAGE, "empty message: expected [header, body...]")
            header = P.decode_header(_view(frames[0]))
            # The version first: another version may spell everything else differently.
            P.check_version(header)
            rid = P.check_id(header)
            session = P.check_session(header)
        except P.ProtocolError as e:
            return self._error(e.code, e.message, header)
        except Exception as e:  # noqa: BLE001 - the daemon must answer whatever happens
            return self._internal(e, header)

        if header.get("op") not in CACHED_OPS:
            return (yield from self._execute(header, frames[1:]))
        key = ("s", session) if session is not None else ("c", bytes(client))
        key = (*key, rid)
        digest = _digest(frames)
        # A retry that arrives while the first attempt still runs waits for its reply.
        while key in self._inflight:
            yield
        hit = self.cache.get(key)
        if hit is not None:
            if hit.request_digest != digest:
                return self._error(
                    P.ID_REUSED, f"request id {rid!r} was already used for a different request; use a fresh id", header
                )
            self.counters["cache_hits"] += 1
            return list(hit.frames)

        self._inflight.add(key)
        try:
            reply = yield from self._execute(header, frames[1:])
        finally:
            self._inflight.discard(key)
        self.cache.put(key, digest, reply)
        return reply

    def _execute(self, header: dict[str, Any], body: Sequence[Any]) -> Generator[None, None, list[Any]]:
        op = header.get("op")
        try:
            if len(body) + 1 > self.limits.max_frames:
                raise P.ProtocolError(P.BAD_MESSAGE, f"{len(body) + 1} frames (limit {self.limits.max_frames})")
            frame_limit = self.limits.frame_bytes()
            for i, f in enumerate(body):
                if len(_view(f)) > frame_limit:
                    raise P.ProtocolError(P.TOO_LARGE, f"body frame {i} is {len(_view(f))} bytes (limit {frame_limit})")
            handlers = {"hello": self._hello, "configure": self._configure, "run": self._run, "status": self._status}
            handler = handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise P.ProtocolError(P.UNKNOWN_OP, f"unknown op {op!r} (ops: {', '.join(P.OPS)})")
            if handler in (self._hello, self._status) and body:
                raise P.ProtocolError(P.BAD_FRAME, f"{op} takes no body frames, got {len(body)}")
            result = handler(header, [_view(f) for f in body])
            if isinstance(result, Generator):
                fields, frames = yield from result
            else:
                fields, frames = result
            self.counters[f"op_{op}"] += 1
            return P.encode_message(P.ok_reply(header["id"], op, **fields), frames)
        except (P.ProtocolError, BackendError) as e:
            return self._error(e.code, e.message, header)
        except delgrad.SpikeError as e:
            return self._error(P.BAD_SPIKES, str(e), header)
        except (delgrad.ParameterError, delgrad.ShapeError) as e:
            return self._error(P.BAD_PARAMETERS, str(e), header)
        except MemoryError:
            return self._error(P.TOO_LARGE, "the request does not fit in the daemon's memory", header)
        except (ValueError, OverflowError) as e:
            # Values a header can carry that no field check anticipated (e.g. a number so large
            # that a derived quantity overflows): the client's fault, named as such.
            log.warning("bad_field from an unanticipated %s on op=%r: %s", type(e).__name__, op, e)
            return self._error(P.BAD_FIELD, f"{type(e).__name__}: {e}", header)
        except Exception as e:  # noqa: BLE001
            return self._internal(e, header)

    def _error(self, code: str, message: str, header: dict[str, Any]) -> list[Any]:
        self.errors[code] += 1
        log.info("error reply %s: %s (op=%r id=%r)", code, message, header.get("op"), header.get("id"))
        return [P.encode_header(P.error_reply(code, message, header.get("id"), header.get("op")))]

    def _internal(self, e: BaseException, header: dict[str, Any]) -> list[Any]:
        log.error("internal error on op=%r: %s", header.get("op"), traceback.format_exc())
        return self._error(P.INTERNAL, f"{type(e).__name__}: {e}", header)

    # --- ops --------------------------------------------------------------------------------

    def _hello(self, header: dict[str, Any], body: list[memoryview]) -> tuple[dict, list]:
        caps = dict(self.backend.capabilities())
        caps["limits"] = {**asdict(self.limits), "max_frame_bytes": self.limits.frame_bytes()}
        return {
            "backend": self.backend.name,
            "capabilities": caps,
            "versions": list(P.SUPPORTED_VERSIONS),
            "ops": list(P.OPS),
        }, []

    def _configure(self, header: dict[str, Any], body: list[memoryview]) -> tuple[dict, list]:
        net = P.decode_network(header, body)
        replication = P.int_field(header, "input_replication", lo=1, hi=1 << 16, required=False, default=1)
        scale = P.field(header, "weight_scale", (int, float, list), required=False)
        if isinstance(scale, list) and not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale):
            raise P.ProtocolError(P.BAD_FIELD, "'weight_scale' must be a number or a list of numbers")
        cfg = self.backend.configure(net, weight_scale=scale, input_replication=replication)
        fields, frames = P.encode_network(cfg.network)
        config_id = _config_id(cfg, fields, frames)
        self.configs.put(config_id, cfg)
        self.counters["configures"] += 1
        return {
            "config_id": config_id,
            **fields,
            "input_replication": cfg.input_replication,
            "report": cfg.report,
        }, frames

    def _run(self, header: dict[str, Any], body: list[memoryview]) -> Generator[None, None, tuple[dict, list]]:
        lim = self.limits
        config_id = P.field(header, "config_id", str)
        n_samples = P.int_field(header, "n_samples", lo=1, hi=lim.max_samples, limit=True)
        seed = P.int_field(header, "seed", lo=0, hi=2**63 - 1, required=False)
        duration = P.number_field(header, "duration", required=False)
        cfg = self.configs.get(config_id)
        if cfg is None:
            raise P.ProtocolError(
                P.UNKNOWN_CONFIG,
                f"config {config_id!r} is not configured on this daemon (never configured, evicted "
                f"- the daemon keeps {self.configs.max_entries} - or the daemon restarted); "
                "send configure again",
            )
        if len(body) != 1:
            raise P.ProtocolError(P.BAD_FRAME, f"run needs exactly 1 body frame (input spikes), got {len(body)}")
        if seed is None:
            seed = int(self._seeds.integers(0, 2**63 - 1))
        run_steps = getattr(self.backend, "run_steps", None)
        if run_steps is not None:
            out = yield from run_steps(cfg, body[0], n_samples, seed=seed, duration=duration, max_events=lim.max_spikes)
        else:
            out = self.backend.run_frames(
                cfg, body[0], n_samples, seed=seed, duration=duration, max_events=lim.max_spikes
            )
        self.counters["runs"] += 1
        self.counters["input_events"] += out.health.get("input_events", 0)
        self.counters["recorded_events"] += sum(out.health.get("recorded_events", []))
        self.counters["dropped_inputs"] += out.health.get("dropped_inputs", 0)
        self.counters["lost_events"] += out.health.get("lost_events", 0)
        frames = out.frames
        fields = {
            "config_id": config_id,
            "n_samples": n_samples,
            "sizes": cfg.network.sizes[1:],
            "seed": out.seed,
            "health": out.health,
        }
        if self.publish is not None:
            self.publish({"id": header["id"], **fields}, frames)
        return fields, frames

    def _status(self, header: dict[str, Any], body: list[memoryview]) -> tuple[dict, list]:
        return {
            "backend": self.backend.name,
            "pid": os.getpid(),
            "uptime_s": time.time() - self.started,
            "busy_s": self.busy_s,
            "counters": {
                "runs": 0,
                "configures": 0,
                "cache_hits": 0,
                **self.counters,
                "errors": sum(self.errors.values()),
            },
            "errors": dict(self.errors),
            "configs": len(self.configs),
            "cache": {"entries": len(self.cache), "bytes": self.cache.nbytes},
            "memory": _memory(),
        }, []


def drive(job: Generator[None, None, Any]) -> Any:
    """Runs a job (:meth:`Daemon.steps`) to its end and returns what it returns."""
    try:
        while True:
            next(job)
    except StopIteration as done:
        return done.value


def _memory() -> dict[str, int]:
    """Resident and peak resident memory of this process, in bytes (Linux; zeros elsewhere)."""
    out = {"rss_bytes": 0, "peak_rss_bytes": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["peak_rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _view(frame: Any) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def _digest(frames: Sequence[Any]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for f in frames:
        v = _view(f)
        h.update(len(v).to_bytes(8, "little"))
        h.update(v)
    return h.digest()


def _config_id(cfg: Configuration, fields: dict[str, Any], frames: list[Any]) -> str:
    """Content-addressed: the same realised network on the same chip gets the same id, also
    after a daemon restart, so a client can re-configure transparently and keep its id."""
    h = hashlib.blake2b(digest_size=12)
    h.update(cfg.fingerprint)
    h.update(
        json.dumps(
            {
                **fields,
                "input_replication": cfg.input_replication,
                "scales": [r.get("weight_scale") for r in cfg.report.get("layers", [])],
            },
            sort_keys=True,
        ).encode()
    )
    for f in frames:
        h.update(memoryview(f))
    return "cfg-" + h.hexdigest()


# --- ZeroMQ -------------------------------------------------------------------------------------


class _AllowedKeys:
    """CURVE credentials provider for zmq.auth: a fixed set of client public keys (z85)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        if not ok:
            log.warning("CURVE: refused client key %s", key.decode(errors="replace"))
        return ok


def load_allowed_keys(paths: Sequence[str | Path]) -> set[bytes]:
    """Client public keys (z85) from certificate files or directories of ``*.key`` files."""
    from zmq.auth import load_certificate

    keys: set[bytes] = set()
    for p in map(Path, paths):
        files = sorted(p.glob("*.key")) if p.is_dir() else [p]
        for f in files:
            public, _ = load_certificate(f)
            keys.add(public)
    return keys


def serve(
    daemon: Daemon,
    bind: str,
    *,
    pub: str | None = None,
    curve_secret: str | Path | None = None,
    curve_allow: Sequence[str | Path] = (),
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Serves ``daemon`` on a ROUTER socket bound to ``bind`` until ``stop`` is set.

    With ``curve_secret`` (a zmq certificate file holding the server's secret key) only clients
    whose public key is in ``curve_allow`` get a connection at all. ``pub`` binds a PUB socket
    that streams every run's recorded spikes as ``[b"run", header, layer frames...]``.
    """
    stop = stop or threading.Event()
    ipc_files: list[Path] = []
    ctx = zmq.Context()
    auth = None
    router = ctx.socket(zmq.ROUTER)
    publisher = None
    try:
        curve_keys = None
        if curve_secret is not None:
            from zmq.auth import load_certificate
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = load_certificate(curve_secret)
            if secret is None:
                raise ValueError(f"{curve_secret}: holds no secret key (pass the .key_secret file)")
            allowed = load_allowed_keys(curve_allow)
            if not allowed:
                log.warning("CURVE enabled but no client key allowed: nobody will be served")
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("hw_daemon.auth"))
            auth.start()
            auth.configure_curve_callback("*", credentials_provider=_AllowedKeys(allowed))
            curve_keys = (public, secret)

        def secure(sock: zmq.Socket) -> None:
            if curve_keys is not None:
                sock.curve_publickey, sock.curve_secretkey = curve_keys
                sock.curve_server = True

        secure(router)
        router.linger = 500  # let the last replies leave on shutdown, but never hang on it
        # A frame beyond the limit is dropped by ZeroMQ while it arrives (the peer is
        # disconnected): it never sits in the daemon's memory. Few requests queue per peer.
        router.setsockopt(zmq.MAXMSGSIZE, daemon.limits.frame_bytes())
        router.rcvhwm = QUEUED_MESSAGES
        router.sndhwm = QUEUED_REPLIES
        router.bind(bind)
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        ipc_files += _ipc_file(endpoint)
        if curve_keys is None and endpoint.startswith("tcp://") and not _is_loopback(endpoint):
            log.warning("serving %s without CURVE authentication", endpoint)
        pub_endpoint = None
        if pub is not None:
            publisher = ctx.socket(zmq.PUB)
            secure(publisher)
            publisher.linger = 0
            publisher.bind(pub)
            pub_endpoint = publisher.getsockopt(zmq.LAST_ENDPOINT).decode()
            ipc_files += _ipc_file(pub_endpoint)

            def publish(fields: dict[str, Any], frames: list[Any]) -> None:
                try:
                    publisher.send_multipart([b"run", P.encode_header(fields), *frames], flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass  # a slow subscriber loses spikes, the daemon never waits for it

            daemon.publish = publish
        if on_ready is not None:
            on_ready(
                {
                    "event": "ready",
                    "endpoint": endpoint,
                    "pub": pub_endpoint,
                    "pid": os.getpid(),
                    "backend": daemon.backend.name,
                    "curve": curve_keys is not None,
                }
            )
        log.info("serving %s (backend %s)", endpoint, daemon.backend.name)

        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        jobs = _FairQueue()
        outbox = _Outbox(daemon.limits.max_reply_bytes)
        while not stop.is_set():
            # With jobs waiting, only look for new requests; otherwise sleep until one comes.
            if poller.poll(0 if jobs else 100):
                # Take what is queued (bounded, so that running jobs keep moving).
                for _ in range(256):
                    try:
                        msg = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    identity, rest = msg[0], msg[1:]
                    # REQ clients put an empty delimiter before the header; keep it for the reply.
                    envelope: list[Any] = []
                    if rest and len(rest[0]) == 0 and len(rest) > 1:
                        envelope, rest = [rest[0]], rest[1:]
                    jobs.add(identity.bytes, _Job(identity, envelope, daemon.steps(identity.bytes, rest)))
            if not jobs:
                continue
            # One step of the next client's oldest job: a whole small request, or one slice of
            # a long run; clients take turns.
            client, job = jobs.next()
            t0 = time.perf_counter()
            try:
                next(job.steps)
                jobs.again(client)
            except StopIteration as done:
                jobs.done(client)
                outbox.send(router, daemon, job.identity, job.envelope, done.value)
            daemon.busy_s += time.perf_counter() - t0
    finally:
        router.close()
        if publisher is not None:
            publisher.close()
        if auth is not None:
            auth.stop()
        ctx.term()
        # libzmq leaves the socket file behind; a stale one would look like a live daemon.
        for f in ipc_files:
            f.unlink(missing_ok=True)
        daemon.backend.close()
        log.info("stopped")


# Requests ZeroMQ queues per peer on the way in (beyond that it stops reading: backpressure).
QUEUED_MESSAGES = 16
# Replies it queues per peer on the way out. A ROUTER *drops* what goes beyond this, silently,
# so it must exceed what a client may pipeline; the bytes are capped by _Outbox instead.
QUEUED_REPLIES = 10_000


@dataclass
class _Job:
    identity: Any
    envelope: list[Any]
    steps: Generator[None, None, list[Any]]


class _FairQueue:
    """Jobs per client, first in first out per client; clients take turns."""

    def __init__(self) -> None:
        self._clients: OrderedDict[bytes, deque[_Job]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._clients)

    def add(self, client: bytes, job: _Job) -> None:
        self._clients.setdefault(client, deque()).append(job)

    def next(self) -> tuple[bytes, _Job]:
        client, queue = next(iter(self._clients.items()))
        return client, queue[0]

    def again(self, client: bytes) -> None:
        """The client's job ran a step and goes on: the other clients come first."""
        self._clients.move_to_end(client)

    def done(self, client: bytes) -> None:
        queue = self._clients[client]
        queue.popleft()
        if queue:
            self._clients.move_to_end(client)
        else:
            del self._clients[client]


class _Outbox:
    """Sends replies and caps, per client, the bytes ZeroMQ still holds for it.

    ZeroMQ's high-water mark counts messages, not bytes; a tracker per large reply tells when
    ZeroMQ has handed it to the kernel. A reply that would take a client beyond the cap is
    answered ``slow_client`` instead (the client can retry the same request id once it reads:
    the reply cache keeps the full reply).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pending: dict[bytes, list[tuple[int, zmq.MessageTracker]]] = {}

    def queued(self, client: bytes) -> int:
        pending = [(n, t) for n, t in self._pending.get(client, []) if not t.done]
        if pending:
            self._pending[client] = pending
        else:
            self._pending.pop(client, None)
        return sum(n for n, _ in pending)

    def send(self, router: zmq.Socket, daemon: Daemon, identity: Any, envelope: list[Any], reply: list[Any]) -> None:
        client = identity.bytes
        nbytes = sum(len(_view(f)) for f in reply)
        queued = self.queued(client)
        # One reply larger than the cap still goes to a client that has read everything else.
        if queued and queued + nbytes > self.max_bytes and len(reply) > 1:
            header = P.decode_header(_view(reply[0]))
            reply = daemon._error(
                P.SLOW_CLIENT,
                f"{queued} bytes of replies to this client are still unsent; this {nbytes}-byte reply would "
                f"exceed the cap of {self.max_bytes} bytes per client (read your replies, then retry the same id)",
                header,
            )
            nbytes = len(reply[0])
        parts = [identity, *envelope, *reply]
        pending = self._pending.setdefault(client, [])
        try:
            for k, part in enumerate(parts):
                # Tracked one by one: pyzmq copies small parts (their tracker is done at once),
                # so the last part's tracker alone would not cover a large one before it.
                # Received frames (the identity) cannot be tracked; they are not ours to count.
                tracked = not isinstance(part, zmq.Frame)
                tracker = router.send(part, zmq.SNDMORE if k + 1 < len(parts) else 0, copy=False, track=tracked)
                if tracker is not None and not tracker.done:
                    pending.append((len(_view(part)), tracker))
        except zmq.ZMQError as e:  # the peer is gone: the reply is lost
            daemon.counters["replies_dropped"] += 1
            log.info("reply to a client dropped: %s", e)


def _ipc_file(endpoint: str) -> list[Path]:
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return [Path(endpoint[len("ipc://") :])]
    return []


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
