"""Command line: ``python -m hw_daemon --backend emulator --bind tcp://127.0.0.1:5555``.

On start-up the daemon prints one JSON line to stdout, ``{"event": "ready", "endpoint": ...,
"pid": ...}``, once its socket is bound (``tcp://127.0.0.1:*`` binds a free port; the line says
which). Logs go to stderr. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from hw_daemon.backends import BACKENDS, BackendUnavailable, make_backend
from hw_daemon.server import Daemon, Limits, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m hw_daemon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", choices=BACKENDS, default="emulator")
    ap.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="ROUTER endpoint (tcp://host:port, tcp://127.0.0.1:* for a free port, ipc://path)",
    )
    ap.add_argument("--pub", default=None, help="also bind a PUB socket streaming recorded spikes")
    g = ap.add_argument_group("emulator")
    g.add_argument(
        "--chip-profile",
        default=None,
        metavar="NAME|FILE",
        help="the emulated chip's parameters: a profile name (delgrad = DelGrad's published chip "
        "configuration, the default; legacy = weight scale 10, delays in [0, 2]) or a JSON file "
        "(hw_daemon/profiles.py; `delgrad calibrate` writes one)",
    )
    g.add_argument("--chip-seed", type=int, default=0, help="identity of the emulated chip (fixed mismatch)")
    g.add_argument(
        "--ideal", action="store_true", help="no threshold offsets, noise, jitter, time quantisation or event loss"
    )
    g.add_argument("--weight-scale", type=float, default=None, help="default software->hardware weight scale")
    g.add_argument("--delay-max", type=float, default=None, help="largest realisable axonal delay (tau)")
    g.add_argument("--duration", type=float, default=None, help="default recording window (tau)")
    g.add_argument("--event-loss", type=float, default=None, help="probability of losing a recorded event")
    g = ap.add_argument_group("limits and caches")
    g.add_argument("--max-samples", type=int, default=Limits.max_samples)
    g.add_argument("--max-spikes", type=int, default=Limits.max_spikes)
    g.add_argument(
        "--max-frame-bytes",
        type=int,
        default=None,
        help="largest body frame, also ZeroMQ's MAXMSGSIZE (default: derived from --max-spikes)",
    )
    g.add_argument(
        "--max-reply-bytes",
        type=int,
        default=Limits.max_reply_bytes,
        help="reply bytes queued for one client that does not read them; beyond: slow_client",
    )
    g.add_argument("--max-configs", type=int, default=64)
    g.add_argument("--cache-entries", type=int, default=4096, help="replies kept for idempotent retries")
    g.add_argument("--cache-bytes", type=int, default=256 << 20)
    g = ap.add_argument_group("CURVE authentication")
    g.add_argument("--curve-secret", default=None, help="server certificate with secret key (.key_secret)")
    g.add_argument(
        "--curve-allow",
        action="append",
        default=[],
        help="allowed client public key file, or directory of *.key files (repeatable)",
    )
    ap.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="shut down cleanly when this process exits (a daemon started for one job "
        "must not outlive it, even if the job is killed)",
    )
    ap.add_argument(
        "--cpus",
        default=None,
        type=parse_cpus,
        help="pin the daemon to these CPUs, e.g. '1' or '0,2-3' (its request thread, "
        "ZeroMQ's I/O thread and the core's workers). On a small machine this "
        "keeps the daemon and its client from evicting each other's caches; "
        "see benchmarks/RESULTS.md, hardware loop latency",
    )
    ap.add_argument(
        "--keep-awake",
        action="store_true",
        help="keep the daemon's CPUs from halting when idle (one SCHED_IDLE spinner "
        "per CPU; they take only cycles nobody else wants but show the CPUs busy): "
        "lower latency on virtual machines, see hw_daemon/awake.py",
    )
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def parse_cpus(text: str) -> set[int]:
    """``'1'``, ``'0,2-3'`` -> a set of CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cpus: {text!r} is not a CPU list like '1' or '0,2-3'") from None
    if not cpus:
        raise argparse.ArgumentTypeError("--cpus: no CPU given")
    return cpus


def pin(cpus: set[int]) -> None:
    """Pins every thread of this process to ``cpus``; threads started later (ZeroMQ's, rayon's)
    inherit it. Raises ValueError naming CPUs this process may not use."""
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ValueError(
            f"--cpus: CPUs {sorted(cpus - allowed)} are not available (this process may use {sorted(allowed)})"
        )
    for tid in os.listdir("/proc/self/task"):  # sched_setaffinity acts on one thread
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that has just ended
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    log = logging.getLogger("hw_daemon")
    if args.cpus is not None:
        try:
            pin(args.cpus)
        except ValueError as e:
            log.error("%s", e)
            return 2
        log.info("pinned to CPUs %s", sorted(args.cpus))
    options: dict = {}
    if args.backend == "emulator":
        from dataclasses import replace

        from hw_daemon.backends.emulator import EmulatorParams
        from hw_daemon.profiles import DEFAULT_PROFILE, ProfileError, load_profile

        flags = {name: getattr(args, name) for name in ("weight_scale", "delay_max", "duration", "event_loss")}
        try:
            params = load_profile(args.chip_profile or DEFAULT_PROFILE, **flags)
        except ProfileError as e:
            log.error("%s", e)
            return 2
        if args.ideal:
            ideal = EmulatorParams.ideal()
            params = replace(
                params,
                **{
                    k: getattr(ideal, k)
                    for k in (
                        "threshold_offset_mean",
                        "threshold_offset_std",
                        "threshold_noise_std",
                        "delay_jitter_std",
                        "time_quantum",
                    )
                },
                event_loss=0.0 if flags["event_loss"] is None else params.event_loss,
            )
        options = {k: getattr(params, k) for k in EmulatorParams.__dataclass_fields__}
        options["chip_seed"] = args.chip_seed
        log.info("chip profile %s", params.profile)
    try:
        backend = make_backend(args.backend, **options)
    except BackendUnavailable as e:
        log.error("%s", e)
        return 2
    for name in ("max_samples", "max_spikes", "max_reply_bytes"):
        if getattr(args, name) < 1:
            log.error("--%s must be >= 1, got %d", name.replace("_", "-"), getattr(args, name))
            return 2
    limits = Limits(
        max_samples=args.max_samples,
        max_spikes=args.max_spikes,
        max_frame_bytes=args.max_frame_bytes,
        max_reply_bytes=args.max_reply_bytes,
    )
    daemon = Daemon(
        backend,
        limits=limits,
        max_configs=args.max_configs,
        cache_entries=args.cache_entries,
        cache_bytes=args.cache_bytes,
    )

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop, log), daemon=True).start()

    spinners = []
    if args.keep_awake:
        from hw_daemon import awake

        if not hasattr(os, "SCHED_IDLE"):
            log.error("--keep-awake needs Linux (SCHED_IDLE)")
            return 2
        spinners = awake.start(os.sched_getaffinity(0))
        log.info("keeping CPUs %s awake", sorted(os.sched_getaffinity(0)))

    def ready(info: dict) -> None:
        print(
            json.dumps({**info, "cpus": sorted(os.sched_getaffinity(0)), "keep_awake": [p.pid for p in spinners]}),
            flush=True,
        )

    try:
        serve(
            daemon,
            args.bind,
            pub=args.pub,
            curve_secret=args.curve_secret,
            curve_allow=args.curve_allow,
            stop=stop,
            on_ready=ready,
        )
    except Exception as e:  # bind failures, unreadable key files: say so and exit non-zero
        log.error("cannot serve: %s: %s", type(e).__name__, e)
        return 1
    finally:
        if spinners:
            awake.stop(spinners)
    return 0


def _watch_parent(pid: int, stop: threading.Event, log: logging.Logger) -> None:
    # When the parent dies we are re-parented, so getppid() changes; no signal is needed.
    while not stop.wait(0.5):
        if os.getppid() != pid:
            log.info("parent process %d is gone: shutting down", pid)
            stop.set()


if __name__ == "__main__":
    sys.exit(main())
