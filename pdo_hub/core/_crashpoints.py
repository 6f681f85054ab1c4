"""Named points where a test can kill the process, to prove that a crash anywhere leaves the cache usable.

`crashpoint("commit.placed")` costs two environment look-ups and does nothing else in normal use. Two
test-only variables change that:

- `PDO_HUB_TEST_KILL_AT=<name>`: the process sends itself SIGKILL at that point: no `finally`, no atexit
  handler, no flush runs, the harshest crash there is short of losing power.
- `PDO_HUB_TEST_KILL_ONCE=<file>`: with `PDO_HUB_TEST_KILL_AT`, only the first process to reach the point
  dies (it creates `<file>`; later ones find it and go on), so a retried job (a Ray task after its
  worker was lost) can be seen to finish.
- `PDO_HUB_TEST_TRACE=<file>`: every point reached appends `<name> <pid> <thread id> <unix time>` to that
  file (one short `O_APPEND` write, atomic between processes), so a test can count across processes how
  often something happened (how many optimizations ran) and when (whether two builds overlapped).

`tests/crash_harness.py` lists every point and kills a build at each one.
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: Environment variable naming the point at which the process kills itself.
KILL_AT = "PDO_HUB_TEST_KILL_AT"
#: Environment variable naming a file that every point reached is appended to.
TRACE = "PDO_HUB_TEST_TRACE"
#: Environment variable naming the file that makes `KILL_AT` kill only the first process to get there.
KILL_ONCE = "PDO_HUB_TEST_KILL_ONCE"
# Windows has no SIGKILL; os.kill with SIGTERM there is TerminateProcess, just as abrupt.
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def crashpoint(name: str) -> None:
    """Mark a point of the fetch / optimize / commit flow (see the module docstring)."""
    trace = os.environ.get(TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{name} {os.getpid()} {threading.get_ident()} {time.time():.6f}\n")
    if os.environ.get(KILL_AT) == name and _first_kill():
        os.kill(os.getpid(), _KILL)


def _first_kill() -> bool:
    once = os.environ.get(KILL_ONCE)
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # atomic: one process wins
    except FileExistsError:
        return False
    return True
