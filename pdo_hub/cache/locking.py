"""The per-key build lock: bounded waits, and a record of who holds it for the timeout message.

The lock is filelock's `FileLock` (an `flock` on Linux/macOS): the kernel drops it when its process dies,
however it dies (SIGKILL included), so a crashed build never blocks the next one. What a lock cannot
say is who holds it; the holder therefore writes its pid, host name and start time into a side file
(`<lock>.holder`) after acquiring, and removes it before releasing. A waiter that times out reads it to
say whom it waited for; a record left by a process that is gone (same host, pid not running) is
reported as stale (filelock falls back to a lock-file-exists lock on filesystems without `flock`, and
such a lock does outlive its process). Staleness is a hint, not a proof: a pid reused since, or another
PID namespace under the same host name, makes a dead holder look alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import filelock

from pdo_hub.cache.layout import holder_path
from pdo_hub.core.errors import CacheLockTimeoutError
from pdo_hub.core._crashpoints import crashpoint

logger = logging.getLogger(__name__)


class KeyLock:
    """A reentrant file lock on one cache key; use it as a context manager around building the entry.

    Args:
        path: The lock file.
        timeout: Seconds to wait; negative waits forever.
        what: The locked entry, for messages.

    Raises:
        CacheLockTimeoutError: on entering, when the wait expires (the message names the holder).
    """

    def __init__(self, path: Path, timeout: float, what: str) -> None:
        self._lock = filelock.FileLock(path, timeout=timeout)
        self._holder = holder_path(path)
        self._timeout = timeout
        self._what = what

    @property
    def lock_file(self) -> str:
        return self._lock.lock_file

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def acquire(self, timeout: float | None = None) -> KeyLock:
        """Take the lock (waiting at most `timeout` seconds, default the constructor's)."""
        wait = self._timeout if timeout is None else timeout
        try:
            self._lock.acquire(timeout=wait)
        except filelock.Timeout as err:
            raise CacheLockTimeoutError(timeout_message(self._what, Path(self.lock_file), wait)) from err
        if self._lock.lock_counter == 1:
            crashpoint("lock.acquired")
            try:
                self._record_holder()
                crashpoint("lock.recorded")
            except BaseException:
                self._lock.release()  # a `with` block that fails to enter never exits: do not keep the lock
                raise
        return self

    def release(self) -> None:
        """Release one level of the lock; the holder record goes with the last one."""
        if self._lock.lock_counter == 1:
            try:
                self._holder.unlink(missing_ok=True)
            except OSError as err:  # a leftover record only makes the next holder's log line wrong
                logger.debug("Cannot remove %s: %s", self._holder, err)
            crashpoint("lock.releasing")
        self._lock.release()

    def __enter__(self) -> KeyLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _record_holder(self) -> None:
        previous = read_holder(self._holder)
        if previous is not None:
            # Only a holder that ended without releasing leaves its record behind (a crash, SIGKILL).
            logger.warning("The previous build of %s did not finish (%s); building it again.", self._what,
                           describe_holder(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            self._holder.write_text(json.dumps(record), encoding="utf-8")
        except OSError as err:  # the record only improves messages; the lock itself is held
            logger.debug("Cannot write %s: %s", self._holder, err)


def read_holder(path: Path) -> dict | None:
    """The holder record at `path`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or type(record.get("pid")) is not int or record["pid"] <= 0:
        return None
    return record


def describe_holder(record: dict) -> str:
    """`process 123 on host h since 2026-11-29 10:00:00 UTC (5 min ago)`, plus `, no longer running:
    stale` when it is a process of this host that has ended."""
    pid, host, started = record["pid"], str(record.get("host", "?")), record.get("started")
    text = f"process {pid} on host {host}"
    try:
        when = datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        text += f" since {when} ({_ago(time.time() - started)} ago)"
    except (TypeError, ValueError, OverflowError, OSError):
        pass  # a record without a usable start time still names the process
    if is_stale(record):
        text += ", which is no longer running: the record is stale"
    return text


def is_stale(record: dict) -> bool:
    """True when the record names a process of this host that has ended (another host's cannot be checked)."""
    return record.get("host") == socket.gethostname() and not _running(record["pid"])


def timeout_message(what: str, lock: Path, waited: float) -> str:
    """What `CacheLockTimeoutError` says: whom we waited for, and what to do."""
    record = read_holder(holder_path(lock))
    if record is None:
        holder = "a process that left no holder record (an older pdo-hub, or one that has just taken it)"
        advice = "wait for it to finish"
    else:
        holder = describe_holder(record)
        if is_stale(record):
            advice = (f"the lock may be on a filesystem that does not release the locks of ended processes; if no "
                      f"pdo-hub process is building this model, delete {lock}")
        else:
            advice = f"wait for it to finish, or stop process {record['pid']} if it hangs"
    return (f"Gave up after {waited:g} s waiting for the lock of {what} ({lock}), held by {holder}. Another process is "
            f"building this model: {advice}; or set PDO_HUB_LOCK_TIMEOUT to wait longer (seconds; negative waits forever).")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks existence only
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to another user
        return True
    return True


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
