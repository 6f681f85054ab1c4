"""Build leases on the shared tier: one build of a key at a time across machines.

The local file lock (`pdo_hub.cache.locking`) only covers one machine, and object stores have no
locks, so a lease is an object created with the store's atomic create-if-absent
(`ObjectStore.create`). Leases of one key are numbered generations, `{folder}/{n:08d}`; the lease is
held by whoever created the highest one:

- acquire: with no generation present, create `0`; a failed create means another builder won, so wait.
- renew: the holder rewrites its own object every `ttl / 3` (a heartbeat counter changes its bytes).
- stale: a waiter that sees the highest generation's bytes unchanged for `ttl` seconds *of its own
  monotonic clock* takes over by creating `n + 1`: only one of several waiters can create it, and no
  clock of another machine is trusted, so clock skew cannot make a live lease look stale.
- release: the holder deletes its object; a killed holder's lease goes stale after `ttl`.

While waiting, the caller's `published()` is polled, so a waiter takes the finished entry instead of
building it again, and it is polled once more right after the lease is taken. Correctness never depends
on the lease: a holder that stalls past `ttl` (or a partitioned one) may build while its successor
does, and then the single-winner publication (`SharedTier.publish`) still keeps exactly one entry. The
lease only avoids duplicate work, like the local lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from pdo_hub.cache._objects import ObjectStore, SharedCacheError, json_field
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import CacheLockTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BuildLease:
    """The lease of one key (see the module docstring).

    Args:
        objects: The tier's store.
        folder: Where this key's lease generations live.
        ttl: Seconds without a renewal after which a waiter takes the lease over.
        what: The key, for messages.
    """

    def __init__(self, objects: ObjectStore, folder: str, ttl: float, what: str) -> None:
        self.objects, self.folder, self.ttl, self.what = objects, folder, ttl, what
        self.owner = uuid.uuid4().hex
        self.generation: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, timeout: float, published: Callable[[], T | None]) -> T | None:
        """Take the lease, or return `published()`'s result as soon as it is not None (lease not held then).

        Args:
            timeout: Seconds to wait for a live holder; negative waits forever.
            published: Looks for the finished entry (polled while waiting).

        Raises:
            CacheLockTimeoutError: a live holder kept the lease longer than `timeout`.
            SharedCacheError: the store cannot be reached.
        """
        started, poll = time.monotonic(), min(1.0, max(0.05, self.ttl / 10))
        seen: dict[int, tuple[bytes, float]] = {}
        while True:
            found = published()
            if found is not None:
                return found
            generations = self._generations()
            target = 0
            if generations:
                top = generations[-1]
                data = self.objects.read(self._path(top))
                now = time.monotonic()
                if data is not None and seen.get(top, (None,))[0] != data:
                    seen[top] = (data, now)  # new or renewed: live for another ttl
                if data is not None and now - seen[top][1] < self.ttl:
                    if 0 <= timeout < now - started:
                        raise CacheLockTimeoutError(self._timeout_message(data, timeout))
                    time.sleep(poll)
                    continue
                if data is not None:
                    logger.warning("The build lease of %s (%s) was not renewed for %.0f s: its builder is gone; "
                                   "taking it over.", self.what, _holder(data), self.ttl)
                target = top + 1
            if self.objects.create(self._path(target), self._record(0)):
                self.generation = target
                crashpoint("lease.acquired")
                self._start_heartbeat()
                self.objects.delete([self._path(n) for n in generations if n < target])
                found = published()  # a holder that finished just before we took over
                if found is not None:
                    self.release()
                return found
            # Another waiter created that generation first: look again.

    def release(self) -> None:
        """Stop renewing and delete this holder's lease object (best effort: a stale one is taken over)."""
        if self.generation is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        path, self.generation = self._path(self.generation), None
        try:
            if json_field(self.objects.read(path), "owner") == self.owner:
                self.objects.delete([path])
        except SharedCacheError as err:
            logger.warning("Cannot release the build lease %s (%s); others take it over after %.0f s.", path, err,
                           self.ttl)

    # --- internals -----------------------------------------------------------------------------

    def _path(self, generation: int) -> str:
        return f"{self.folder}/{generation:08d}"

    def _generations(self) -> list[int]:
        return sorted(int(name) for name in self.objects.names(self.folder) if name.isdigit())

    def _record(self, beat: int) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": time.time(), "beat": beat, "ttl": self.ttl}).encode()

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._renew, name="pdo-hub lease", daemon=True)
        self._beat.start()

    def _renew(self) -> None:
        beat, mine = 0, self.generation
        while not self._stop.wait(self.ttl / 3):
            try:
                if any(n > mine for n in self._generations()):
                    logger.warning("The build lease of %s was taken over by another builder; this build goes on, "
                                   "and only one of the two is published.", self.what)
                    return
                beat += 1
                self.objects.write(self._path(mine), self._record(beat))
            except SharedCacheError as err:  # the next beat may get through; after ttl others take over
                logger.debug("Cannot renew the build lease of %s: %s", self.what, err)

    def _timeout_message(self, data: bytes, waited: float) -> str:
        return (f"Gave up after {waited:g} s waiting for the shared build lease of {self.what} ({self.folder}), held "
                f"by {_holder(data)}, which keeps renewing it: another machine is building this model. Wait for it, "
                "or set PDO_HUB_LOCK_TIMEOUT to wait longer (seconds; negative waits forever).")


def _holder(data: bytes) -> str:
    try:
        record = json.loads(data)
        return f"process {record['pid']} on host {record['host']}"
    except (ValueError, TypeError, KeyError):
        return "an unreadable lease record"
