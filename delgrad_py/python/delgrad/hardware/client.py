"""Client of ``hw_daemon``: configure a network on (emulated) hardware, run batches on it.

Typical in-the-loop use::

    with HardwareClient("tcp://127.0.0.1:5555") as hw:
        config_id, realised = hw.configure(net, input_replication=5)
        spikes, health = hw.run(config_id, inputs, n_samples=S)
        trace = delgrad.Trace.from_tables(spikes, sizes=realised.sizes[1:], n_samples=S)
        grads = realised.backward(replicate_inputs(inputs, 4, 5), trace, dL_dT)

Timeouts, retries and reconnection follow ZeroMQ's "lazy pirate" pattern: a request that gets
no reply within ``timeout`` is re-sent, with the *same* request id and session, on a fresh
DEALER socket. The daemon caches replies per (session, id), so a retry of a request it already
executed is answered from the cache and never executed twice. After a daemon restart the config
store is empty; ``run`` then re-sends the configure request it remembers and retries, which keeps
the same ``config_id`` because ids are content addresses of the realised configuration.

A client is not thread-safe (neither are ZeroMQ sockets): use one client per thread.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import zmq

from delgrad.hardware import protocol as P

#: Seconds between calls of a client's ``watch`` while it waits for a reply.
WATCH_PERIOD = 0.25

#: Client-side error codes, in addition to the daemon's :data:`protocol.ERROR_CODES`.
TIMEOUT = "timeout"
CONFIG_CHANGED = "config_changed"
BAD_REPLY = "bad_reply"


class HardwareError(RuntimeError):
    """An error reply from the daemon (``code`` from :data:`protocol.ERROR_CODES`) or a
    client-side failure (``timeout``, ``config_changed``, ``bad_reply``)."""

    def __init__(self, code: str, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.reply = reply


class HardwareTimeout(HardwareError):
    """No reply after every retry."""

    def __init__(self, message: str) -> None:
        super().__init__(TIMEOUT, message)


class HardwareUnavailable(HardwareTimeout):
    """Nothing answers at the endpoint (the short ``hello`` check got no reply)."""


#: Seconds the ``hello`` check waits for a reply (one attempt): a live daemon answers within
#: about a second even while another client's long run executes (it runs in slices).
HELLO_TIMEOUT = 2.0


def unavailable_message(endpoint: str, waited: float) -> str:
    """One line: what did not answer, and how to start a daemon there."""
    return (
        f"no hw_daemon answers at {endpoint} (no reply to hello within {waited:g} s); start one with "
        f"`delgrad-hw-daemon --bind {endpoint}` (or `python -m hw_daemon --bind {endpoint}`), or leave the "
        "pipeline's [hardware] endpoint empty so that it starts its own"
    )


class Configured(NamedTuple):
    """``configure``'s result: the config id and the network as the hardware realises it."""

    config_id: str
    network: Any


class RunResult(NamedTuple):
    """``run``'s result: recorded spikes of every layer (``sample``, ``neuron``, ``time``) and
    the run's health counters (``dropped_inputs``, ``lost_events``, ``wall_time_s``, ``seed``...)."""

    spikes: list[pa.RecordBatch]
    health: dict[str, Any]


def _load_key(key: str | bytes | Path, secret: bool) -> tuple[bytes, bytes | None]:
    """A z85 key given directly, or read from a zmq certificate file."""
    if isinstance(key, bytes) and len(key) == 40:
        return key, None
    if isinstance(key, str) and len(key) == 40 and not Path(key).exists():
        return key.encode(), None
    from zmq.auth import load_certificate

    public, sec = load_certificate(key)
    if secret and sec is None:
        raise ValueError(f"{key}: holds no secret key (pass the client's .key_secret file)")
    return public, sec


class HardwareClient:
    """A synchronous client for one ``hw_daemon`` endpoint.

    Args:
        endpoint: ``tcp://host:port`` or ``ipc://path``.
        timeout: seconds to wait for each reply before retrying.
        retries: re-sends after the first attempt (each on a fresh socket).
        session: names this client across reconnects (defaults to a random id); the daemon keys
            its reply cache on it.
        server_key: the daemon's CURVE public key (z85, or its certificate file); enables CURVE.
        client_key: this client's certificate file with its secret key (``.key_secret``).
        reconfigure: after a daemon restart, re-send remembered configure requests when a
            ``run`` meets ``unknown_config``.
        spin: seconds to busy-wait for each reply before sleeping in ``poll``. Waking a thread
            that sleeps costs hundreds of microseconds on some (virtualised) machines, more than
            a small batch takes; spinning trades one busy core for that latency.
        watch: called about every 0.25 s while a reply is awaited; returning True means "the
            daemon was restarted, re-send now" (a pipeline that owns its daemon restarts it when
            it dies, :mod:`delgrad.hardware.session`). It may raise to give up.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        session: str | None = None,
        server_key: str | bytes | Path | None = None,
        client_key: str | Path | None = None,
        reconfigure: bool = True,
        context: zmq.Context | None = None,
        remember_configs: int = 32,
        spin: float = 0.0,
        watch: Callable[[], bool] | None = None,
    ) -> None:
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.session = session or uuid.uuid4().hex
        self.reconfigure = reconfigure
        self.spin = max(0.0, float(spin))
        self.watch = watch
        self._ctx = context or zmq.Context.instance()
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if server_key is not None or client_key is not None:
            if server_key is None or client_key is None:
                raise ValueError("CURVE needs both server_key and client_key")
            server_public, _ = _load_key(server_key, secret=False)
            cpub, csec = _load_key(client_key, secret=True)
            self._curve = (server_public, cpub, csec)  # type: ignore[assignment]
        self._configs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._remember = remember_configs
        self.stats = {"requests": 0, "resends": 0, "reconnects": 0, "reconfigures": 0, "stale_replies": 0}
        self._sock: zmq.Socket | None = None
        self._connect()

    # --- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0  # a closed socket must not hold on to requests nobody waits for
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        sock.connect(self.endpoint)
        self._sock = sock

    def _reconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._connect()
        self.stats["reconnects"] += 1

    def close(self) -> None:
        """Closes the socket (the context, if shared, stays)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> HardwareClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        frames: list[Any] = (),  # type: ignore[assignment]
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        retries: int | None = None,
    ) -> tuple[dict[str, Any], list[zmq.Frame]]:
        """Sends one request (re-sending it on timeouts) and returns the reply header and body
        frames; raises :class:`HardwareError` on an error reply, :class:`HardwareTimeout` when
        every attempt timed out."""
        if self._sock is None:
            raise HardwareError(BAD_REPLY, "client is closed")
        header = P.request_header(op, request_id, self.session, **(fields or {}))
        message = P.encode_message(header, list(frames))
        rid = header["id"]
        wait = self.timeout if timeout is None else float(timeout)
        self.stats["requests"] += 1
        attempts = (self.retries if retries is None else int(retries)) + 1
        attempt = 0
        while attempt < attempts:
            if attempt:
                self.stats["resends"] += 1
                self._reconnect()
            deadline = time.monotonic() + wait
            # A DEALER with no peer (one whose CURVE handshake the daemon refused has none) blocks
            # a send until one appears: never for longer than the attempt.
            self._sock.sndtimeo = max(1, int(wait * 1000))
            try:
                self._sock.send_multipart(message, copy=False)
            except zmq.Again:
                attempt += 1
                continue
            restarted = False
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not self._wait(left if self.watch is None else min(left, WATCH_PERIOD)):
                    if self.watch is not None and self.watch():
                        restarted = True  # re-send at once, without using up an attempt
                        break
                    continue
                reply = self._sock.recv_multipart(copy=False)
                try:
                    rh = P.decode_header(reply[0].buffer)
                except P.ProtocolError as e:
                    raise HardwareError(BAD_REPLY, f"unreadable reply header: {e.message}") from None
                if rh.get("id") != rid:
                    # A late reply to an earlier request on this socket: not ours.
                    self.stats["stale_replies"] += 1
                    continue
                if not rh.get("ok"):
                    raise HardwareError(str(rh.get("code")), str(rh.get("message")), rh)
                return rh, reply[1:]
            if restarted:
                self._reconnect()
                continue
            attempt += 1
        raise HardwareTimeout(
            f"no reply to {op} (id {rid}) from {self.endpoint} after {attempts} attempts of {wait:g} s"
        )

    def _wait(self, left: float) -> bool:
        """True when a reply is readable within ``left`` seconds (spinning first, see ``spin``)."""
        assert self._sock is not None
        if self.spin > 0:
            until = time.monotonic() + min(self.spin, left)
            while time.monotonic() < until:
                if self._sock.poll(0):
                    return True
            left = max(0.0, left - self.spin)
        return bool(self._sock.poll(left * 1000))

    # --- ops --------------------------------------------------------------------------------

    def hello(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Backend name, capabilities (neurons, weight bits, time quantum, delay range, limits).

        Also the check that a daemon is there: one attempt of at most :data:`HELLO_TIMEOUT` s
        (or ``timeout``), then :class:`HardwareUnavailable` naming the endpoint."""
        wait = min(self.timeout, HELLO_TIMEOUT) if timeout is None else float(timeout)
        try:
            h, _ = self.request("hello", timeout=wait, retries=0)
        except HardwareUnavailable:
            raise
        except HardwareTimeout:
            raise HardwareUnavailable(unavailable_message(self.endpoint, wait)) from None
        return {k: h[k] for k in ("backend", "capabilities", "versions", "ops") if k in h}

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Daemon counters (``counters.runs``, ``counters.cache_hits``, ...), configs, cache."""
        h, _ = self.request("status", timeout=timeout)
        return {k: v for k, v in h.items() if k not in ("v", "id", "op", "ok")}

    def configure(
        self,
        network: Any,
        *,
        weight_scale: float | list[float] | None = None,
        input_replication: int = 1,
        timeout: float | None = None,
    ) -> Configured:
        """Configures ``network``; returns the config id and the *realised* network (quantised
        weights, clipped delays) that the host should use for gradients. What was changed is in
        :meth:`config_info`."""
        fields, frames = P.encode_network(network)
        fields["input_replication"] = int(input_replication)
        if weight_scale is not None:
            fields["weight_scale"] = weight_scale
        return self._configure(fields, frames, timeout)

    def _configure(self, fields: dict[str, Any], frames: list[Any], timeout: float | None) -> Configured:
        h, body = self.request("configure", fields, frames, timeout=timeout)
        try:
            realised = P.decode_network(h, body)
        except P.ProtocolError as e:
            raise HardwareError(BAD_REPLY, f"configure reply: {e.message}", h) from None
        cid = h["config_id"]
        info = {k: h[k] for k in ("config_id", "report", "input_replication", "layers", "neuron") if k in h}
        self._configs[cid] = {"fields": fields, "frames": frames, "info": info, "network": realised}
        self._configs.move_to_end(cid)
        while len(self._configs) > self._remember:
            self._configs.popitem(last=False)
        return Configured(cid, realised)

    def config_info(self, config_id: str) -> dict[str, Any]:
        """The daemon's report for a configuration made by this client (clipped weights and
        delays, neurons used, ``input_replication``)."""
        return self._configs[config_id]["info"]

    def run(
        self,
        config_id: str,
        spikes: Any,
        n_samples: int,
        *,
        seed: int | None = None,
        duration: float | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Runs input spikes (addressing input *channels*, before replication) on a
        configuration; returns every layer's recorded spikes and the health counters
        (plus the run's noise ``seed``, so a run can be reproduced)."""
        fields: dict[str, Any] = {"config_id": config_id, "n_samples": int(n_samples)}
        if seed is not None:
            fields["seed"] = int(seed)
        if duration is not None:
            fields["duration"] = float(duration)
        frames = [P.encode_spikes(spikes)]
        try:
            h, body = self.request("run", fields, frames, timeout=timeout)
        except HardwareError as e:
            if not (e.code == P.UNKNOWN_CONFIG and self.reconfigure and config_id in self._configs):
                raise
            self._restore(config_id, timeout)
            h, body = self.request("run", fields, frames, timeout=timeout)
        try:
            layers = P.decode_layers(body, h["sizes"], int(n_samples))
        except (P.ProtocolError, KeyError) as e:
            raise HardwareError(BAD_REPLY, f"run reply: {e}", h) from None
        health = dict(h.get("health", {}))
        health["seed"] = h.get("seed")
        return RunResult(layers, health)

    def _restore(self, config_id: str, timeout: float | None) -> None:
        """Re-sends the configure request behind ``config_id`` (the daemon lost it)."""
        rec = self._configs[config_id]
        got = self._configure(rec["fields"], rec["frames"], timeout)
        self.stats["reconfigures"] += 1
        if got.config_id != config_id:
            raise HardwareError(
                CONFIG_CHANGED,
                f"the daemon realises the network of {config_id} as {got.config_id} now (a "
                "different chip or emulator setting after its restart); configure again and use "
                "the new realised network",
            )
