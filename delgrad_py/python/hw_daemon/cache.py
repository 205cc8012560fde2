"""Bounded LRU stores: the reply cache that makes retries idempotent, and the config store."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class CachedReply:
    """A reply already sent, with the digest of the request that produced it."""

    request_digest: bytes
    frames: list[Any]
    nbytes: int


class ReplyCache:
    """Replies keyed by (client, request id), bounded by entry count and by bytes.

    A reply bigger than the whole byte budget is not kept: a retry of that request is executed
    again (and still answered).
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._d: OrderedDict[tuple, CachedReply] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: tuple) -> CachedReply | None:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: tuple, request_digest: bytes, frames: list[Any]) -> None:
        nbytes = sum(len(memoryview(f)) for f in frames)
        if self.max_entries <= 0 or nbytes > self.max_bytes:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._d[key] = CachedReply(request_digest, list(frames), nbytes)
        self.nbytes += nbytes
        while len(self._d) > self.max_entries or self.nbytes > self.max_bytes:
            _, ev = self._d.popitem(last=False)
            self.nbytes -= ev.nbytes


class LRU(Generic[K, V]):
    """A plain bounded mapping that forgets its least recently used entry."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)
