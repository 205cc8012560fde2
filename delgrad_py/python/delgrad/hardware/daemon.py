"""Start and stop ``hw_daemon`` subprocesses (for tests, benchmarks and pipelines).

``start_daemon()`` launches ``python -m hw_daemon`` bound to a free loopback port (or an ipc
path), waits for its ready line and returns a :class:`DaemonProcess`; ``stop()`` ends exactly
that process, by its pid: SIGTERM first (clean shutdown), SIGKILL only if it does not exit.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any


def find_daemon_root() -> Path:
    """The directory that holds the ``hw_daemon`` package (the repository root)."""
    spec = find_spec("hw_daemon")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "hw_daemon" / "__main__.py").is_file():
            return parent
    raise FileNotFoundError(
        "hw_daemon not found: run from the delgrad repository (hw_daemon/ is a top-level package there) or pass root="
    )


def ipc_endpoint(name: str | None = None) -> str:
    """A fresh ``ipc://`` endpoint in the temp directory (short: unix socket paths are limited
    to ~107 bytes)."""
    name = name or f"delgrad-hw-{uuid.uuid4().hex[:12]}"
    return f"ipc://{Path(tempfile.gettempdir()) / name}.sock"


@dataclass
class DaemonProcess:
    """A running daemon started by :func:`start_daemon`."""

    process: subprocess.Popen
    endpoint: str
    pub: str | None
    log_path: Path
    argv: list[str]
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        return stop_daemon(self, timeout=timeout)

    def kill(self) -> int | None:
        """SIGKILL (a crash, as tests need it); returns the exit code."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        rc = self.process.wait(timeout=10)
        self._close_pipes()
        return rc

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _close_pipes(self) -> None:
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_daemon(
    bind: str = "tcp://127.0.0.1:*",
    *,
    backend: str = "emulator",
    chip_seed: int = 0,
    pub: str | None = None,
    args: Sequence[str] = (),
    log_path: str | Path | None = None,
    root: str | Path | None = None,
    python: str = sys.executable,
    ready_timeout: float = 30.0,
    exit_with_parent: bool = True,
    cpus: Sequence[int] | None = None,
) -> DaemonProcess:
    """Starts ``python -m hw_daemon`` and waits until it serves.

    ``bind`` defaults to a free loopback port (the daemon binds ``tcp://127.0.0.1:*`` and
    reports the port); use :func:`ipc_endpoint` for ipc. ``args`` are extra command-line flags
    (``--ideal``, ``--max-spikes``, ``--curve-secret``...). The daemon's log goes to ``log_path``
    (a temp file by default). With ``exit_with_parent`` the daemon shuts itself down when
    this process ends, however it ends (a killed training job leaves no daemon behind).
    ``cpus`` pins the daemon to those CPUs (``--cpus``; the ready line reports them).
    """
    root = Path(root) if root is not None else find_daemon_root()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="hw_daemon-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    argv = [python, "-m", "hw_daemon", "--backend", backend, "--bind", bind, "--chip-seed", str(chip_seed), *args]
    if pub is not None:
        argv += ["--pub", pub]
    if exit_with_parent:
        argv += ["--parent-pid", str(os.getpid())]
    if cpus is not None:
        argv += ["--cpus", ",".join(str(int(c)) for c in cpus)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    handle = DaemonProcess(proc, endpoint="", pub=None, log_path=log_path, argv=argv)
    try:
        line = _read_line(proc, ready_timeout)
        info = json.loads(line)
        if info.get("event") != "ready":
            raise RuntimeError(f"unexpected first line from hw_daemon: {line!r}")
    except Exception as e:
        stop_daemon(handle, timeout=2.0)
        raise RuntimeError(f"hw_daemon did not start ({e}); its log:\n{handle.log()[-4000:]}") from None
    handle.endpoint = info["endpoint"]
    handle.pub = info.get("pub")
    handle.ready = info
    return handle


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ready line within {timeout} s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"exited with code {proc.wait()}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def stop_daemon(daemon: DaemonProcess | subprocess.Popen, timeout: float = 5.0) -> int | None:
    """Stops the daemon process by its pid: SIGTERM, then SIGKILL after ``timeout`` s."""
    proc = daemon.process if isinstance(daemon, DaemonProcess) else daemon
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if isinstance(daemon, DaemonProcess):
        daemon._close_pipes()
    return proc.returncode
