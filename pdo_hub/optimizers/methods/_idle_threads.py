"""Run a small call that follows an idle spell on one thread when that is measured to be faster.

Why: ATen's parallel ops split their work statically between OpenMP threads, and the caller waits for
every share. After the process has been idle for a while, the worker threads sleep and, on a virtual
machine, so may the CPUs they run on: waking one took 4-10 ms on the 2-core VM this was measured on
(a 200,000-element multiply: 0.27 ms on one thread, 7.4 ms on two after a 0.1 s pause). A batch-1
request of 8-64 tokens to all-MiniLM-L6-v2 `dynamic` took 12-15 ms that way against 2.6-7.5 ms on one
thread; a request stream with gaps between requests, which is what a server sees, paid it on every
request. ONNX Runtime's pool lets the calling thread take over a late worker's share, so it does not.

How: a call is *idle* when no call of any accelerated pdo-hub model ended in the last `IDLE_S`. Idle
calls are grouped by input size (the first input's element count, by powers of two) and each group
times both choices on its own idle calls: all threads, then, if that took under `SHORT_S`, one
thread, then the faster of the two, re-timing the slower every `RETRY_EVERY` idle calls (hosts and
load change). Calls that follow other calls run exactly as before, on all threads. So a host where
waking is cheap keeps all its threads, and one where it is not runs its small idle calls on one.
Outputs were bit-identical on one and two threads for every size measured (MiniLM `dynamic`, the
digits ResNet-18 `static`). `PDO_HUB_IDLE_THREADS=0` turns it off.

The switch is `torch.set_num_threads(1)` for the call, then back. Setting only the calling thread's
OpenMP count (`omp_set_num_threads`) was tried and left the MKL/intra-op pools on two threads: 6.7 ms
against 2.8 ms at 8 tokens after 0.1 s of quiet. torch also remembers the count for threads that run
their first parallel op during such a call; those keep one thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Iterator

import torch

IDLE_S = 0.01
RETRY_EVERY = 16
SHORT_S = 0.02  # idle calls that take longer on all threads keep them: waking took at most ~10 ms
_now = time.monotonic  # (a test replaces it)
_last_end = 0.0  # monotonic time the last accelerated call ended, any model, any thread


class IdleThreads:
    """One model's choice of thread count for idle calls (see the module doc)."""

    def __init__(self) -> None:
        self.best: dict[int, dict[int, float]] = {}  # size group -> {threads: the latest idle call's seconds}
        self.idle_calls: dict[int, int] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def call(self, size: int) -> Iterator[None]:
        global _last_end
        threads = torch.get_num_threads()
        start = _now()
        idle = start - _last_end > IDLE_S and threads > 1 and os.environ.get("PDO_HUB_IDLE_THREADS", "1").strip() != "0"
        group = int(size).bit_length()
        chosen = self._choose(group, threads) if idle else threads
        if chosen != threads:
            torch.set_num_threads(chosen)
        try:
            yield
        finally:
            _last_end = end = _now()
            if chosen != threads:
                torch.set_num_threads(threads)
            if idle:
                with self.lock:
                    self.best.setdefault(group, {})[chosen] = end - start

    def _choose(self, group: int, threads: int) -> int:
        with self.lock:
            timed = self.best.get(group, {})
            count = self.idle_calls[group] = self.idle_calls.get(group, 0) + 1
            if threads not in timed or timed[threads] > SHORT_S:
                return threads  # a long call: one thread would cost it more than any wake-up
            if 1 not in timed:
                return 1
            faster, slower = (1, threads) if timed[1] <= timed[threads] else (threads, 1)
            return slower if count % RETRY_EVERY == 0 else faster

    def __reduce__(self) -> tuple:
        # A copy (deepcopy, pickle) starts empty: the timings are this process's, and locks are not copied.
        return type(self), ()


def input_size(args: tuple, kwargs: dict) -> int:
    """The element count of a call's first tensor input (token ids, images), 0 when it has none."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.numel()
    return 0
