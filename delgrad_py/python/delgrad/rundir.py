"""Run directories and their manifest: a directory is a run's only if its ``run.json`` says so.

``run.json`` holds the delgrad version, the hash of the resolved configuration, the status
(``running``, ``finished``, ``failed``) and times. The rules that keep results from being lost
or mixed:

- a new or empty directory becomes a run;
- a directory with the same configuration resumes (``running``/``failed``) or is left alone
  (``finished``: the caller reports it and writes nothing);
- a different configuration is refused, naming the keys that differ, unless ``restart=True``,
  which discards the old run explicitly;
- a non-empty directory without ``run.json`` is not a run and is never touched;
- while a process works in a run, it holds an exclusive lock on ``run.json.lock``, so a second
  process cannot mix its results in.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from delgrad._core import __version__
from delgrad.config import ConfigError, PipelineConfig, parse_config

MANIFEST = "run.json"
CONFIG = "config.toml"
Status = Literal["running", "finished", "failed"]


class RunDirError(ValueError):
    """A run directory that this run may not write to; nothing in it was changed."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write in full; on leaving the block without an
    error it is fsynced and renamed onto ``path`` (then the folder is fsynced), otherwise
    removed: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp"


def _remove_stale_temporaries(path: Path) -> None:
    """Removes what killed writers of ``path`` left beside it: a SIGKILL skips
    :func:`atomic_path`'s clean-up, and its ``.NAME.tmpPID`` would stay for good. Only names of
    exactly that form go, and only when PID is no live process on this machine (run
    directories are written by the process that holds their lock, never from another host)."""
    prefix = _temporary_prefix(path)
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        pid = tmp.name[len(prefix) :]
        if pid.isdecimal() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no pid at all: not ours to judge
    return True


def atomic_write(path: Path, data: bytes | str) -> None:
    """Writes ``path`` as one step (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def atomic_write_parquet(path: Path, table: Any) -> None:
    """A pyarrow table (zstd) or a polars DataFrame as Parquet, written by :func:`atomic_write`,
    so that a reader during the run sees the old file or the new one, never half of one."""
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    if hasattr(table, "write_parquet"):  # polars
        table.write_parquet(buffer)
    else:
        pq.write_table(table, buffer, compression="zstd")
    atomic_write(path, buffer.getvalue())


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not a readable run manifest ({e})") from None
    if not isinstance(manifest, dict) or "config_hash" not in manifest:
        raise RunDirError(f"{path}: not a delgrad run manifest")
    return manifest


def read_config(run_dir: str | Path) -> PipelineConfig:
    """The resolved configuration a run was made with."""
    import tomllib

    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a delgrad run directory (no {CONFIG})")
    try:
        return parse_config(tomllib.loads(path.read_text()))
    except ConfigError as e:
        raise RunDirError(f"{path}: {e}") from None


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name)
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


@dataclass
class RunDir:
    """An owned run directory, locked for this process until :meth:`close`."""

    path: Path
    config: PipelineConfig
    manifest: dict[str, Any]
    resumed: bool = False
    _lock: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, config: PipelineConfig, *, restart: bool = False) -> RunDir:
        """Creates, resumes or (``restart``) recreates the run at ``path``; see the module doc.
        A finished run with the same configuration comes back with status ``finished``: the
        caller must not write to it."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} exists and is not a directory")
        manifest = read_manifest(path) if path.exists() else None
        if manifest is None and path.exists() and any(path.iterdir()):
            raise RunDirError(
                f"{path} is not empty and is not a delgrad run (no {MANIFEST}); nothing in it was touched. "
                "Choose another --out."
            )
        path.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(path)
        try:
            manifest = read_manifest(path)  # again, under the lock
            resumed = False
            if manifest is not None and manifest["config_hash"] != config.digest():
                if not restart:
                    diffs = config_differences(read_config(path).to_dict(), config.to_dict())
                    raise RunDirError(
                        f"{path} holds a run with a different configuration ({'; '.join(diffs) or 'hash differs'}). "
                        "Use another --out, or --restart to discard that run."
                    )
            if manifest is not None and restart:
                _clear(path)
                manifest = None
            if manifest is None:
                now = _now()
                manifest = {
                    "delgrad_version": __version__,
                    "config_hash": config.digest(),
                    "name": config.name,
                    "status": "running",
                    "created": now,
                    "updated": now,
                    "finished": None,
                    "train_seconds": None,
                }
                atomic_write(path / CONFIG, config.to_toml())
                atomic_write(path / MANIFEST, json.dumps(manifest, indent=1))
            else:
                resumed = manifest["status"] != "finished"
            return cls(path, config, manifest, resumed, lock)
        except BaseException:
            _release(lock)
            raise

    @classmethod
    def attach(cls, path: str | Path) -> RunDir:
        """An existing run, locked for this process (``delgrad evaluate``)."""
        path = Path(path)
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is None:
            raise RunDirError(f"{path} is not a delgrad run directory (no {MANIFEST})")
        lock = _take_lock(path)
        try:
            return cls(path, read_config(path), read_manifest(path) or manifest, False, lock)
        except BaseException:
            _release(lock)
            raise

    @property
    def status(self) -> Status:
        return self.manifest["status"]

    def set_status(self, status: Status, **extra: Any) -> None:
        self.manifest.update(status=status, updated=_now(), delgrad_version=__version__, **extra)
        if status == "finished":
            self.manifest["finished"] = self.manifest["updated"]
        atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=1))

    def close(self) -> None:
        _release(self._lock)
        self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _take_lock(path: Path) -> Any:
    f = open(path / f"{MANIFEST}.lock", "a+")  # noqa: SIM115 (held until close)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunDirError(f"{path} is in use by another delgrad process") from None
    return f


def _release(lock: Any) -> None:
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _clear(path: Path) -> None:
    """Empties a run directory (``--restart``); the lock file stays, it is held."""
    for child in path.iterdir():
        if child.name == f"{MANIFEST}.lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
