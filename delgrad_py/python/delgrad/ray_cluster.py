"""Ray for the modules that use it (sweeps, data-parallel training): importing it with a clear
error when the optional extra is missing, and checking a cluster address before Ray retries it
for minutes. Ray itself is imported only when one of these functions is called."""

from __future__ import annotations

import socket

__all__ = ["MissingRayError", "RayConnectionError", "check_reachable", "import_ray"]


class MissingRayError(ImportError):
    """Ray is not installed; the message says how to get it."""


class RayConnectionError(RuntimeError):
    """An address names no reachable Ray cluster."""


def import_ray(hint: str):
    """The ``ray`` module, or :class:`MissingRayError` with ``hint`` (which extra to install)."""
    try:
        import ray
    except ImportError as e:
        raise MissingRayError(f"{hint} ({e})") from None
    return ray


def check_reachable(address: str) -> None:
    """Fails fast when a ``host:port`` address has nothing listening: Ray itself keeps retrying
    such an address for minutes. ``auto`` and ``ray://`` addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectionError(f"--address {address!r}: expected 'auto', 'ray://HOST:PORT' or 'HOST:PORT'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise RayConnectionError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({e})") from None
