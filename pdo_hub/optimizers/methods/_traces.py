"""Frozen TorchScript traces whose number does not grow with the number of input shapes seen.

Python dispatch between small ops is a large share of an int8 model's time at small inputs, which
a frozen trace removes. A trace per input shape paid ~0.3 s (all-MiniLM-L6-v2) for every new length,
which real traffic (requests of any length, corpora padded to each batch's longest) pays again and
again; `scripts/bench_workloads.py` times such traffic cold and warm.

A trace records the ops and, through the tracer's size ops, shapes as values, so one trace usually
serves every shape. It may not where the model turned a shape into a Python value (a branch, a
constant): such a trace is right for some shapes only. `TraceCache` therefore keeps one trace per
input *structure* (number of tensors, their ranks, dtypes, devices, memory layout), built on the
`trace_after`-th call, and checks it once per dimension: the first call whose shape differs from the
traced one in a dimension not yet checked runs eagerly and through the trace, and the two must be
identical. When they are, that dimension is trusted for every later size; when not, the structure
falls back to a trace per shape (at most `MAX_TRACES` kept, `MAX_BUILDS` ever built; beyond that it
stays eager). So a model pays one trace, plus one doubled call per dimension that varies.

Traces are never saved or pickled; `clear()` drops them (new weights, training mode).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

logger = logging.getLogger(__name__)
MAX_TRACES = 8  # per-shape fallback: traces kept (LRU)
MAX_BUILDS = 2 * MAX_TRACES  # per-shape fallback: shapes that keep changing stay eager rather than retrace forever
FAILED = object()

#: (tensors) -> outputs: a frozen trace, or FAILED when the inputs cannot be traced faithfully.
Builder = Callable[[tuple, Any], Any]


class _Generic:
    """One trace for every shape of a structure, trusted per dimension once checked against eager."""

    def __init__(self, run: Any, shapes: tuple) -> None:
        self.run, self.shapes = run, shapes
        self.checked: set[tuple[int, int]] = set()

    def unchecked(self, shapes: tuple) -> set[tuple[int, int]]:
        return {(i, d) for i, (now, then) in enumerate(zip(shapes, self.shapes))
                for d, (a, b) in enumerate(zip(now, then)) if a != b and (i, d) not in self.checked}


class _PerShape:
    """Traces keyed by exact shapes: the fallback for a structure whose trace does not generalize."""

    def __init__(self) -> None:
        self.traces: OrderedDict = OrderedDict()
        self.seen: dict = {}
        self.builds = 0


class TraceCache:
    """Runs calls through frozen traces, one per input structure where it generalizes (see the module doc).

    `call(structure, tensors, eager, build, same)`: `structure` is a hashable key without shapes,
    `tensors` the flat input tensors, `eager()` computes the call without a trace, `build(tensors,
    reference)` returns a runner (`runner(tensors)` gives the output) or `FAILED`, and `same(a, b)` says
    whether two outputs are identical.
    """

    def __init__(self, trace_after: int = 1) -> None:
        self.trace_after = trace_after
        self.entries: dict = {}
        self.calls: dict = {}  # calls per structure not yet traced
        self.building: set = set()  # structures whose trace a thread is building: the others run eagerly meanwhile
        self.generation = 0  # bumped by `clear`: a build started before it is dropped
        self.lock = threading.Lock()

    def call(self, structure: Any, tensors: tuple, eager: Callable[[], Any], build: Builder, same: Callable[[Any, Any], bool],
             trace_now: bool = False) -> Any:
        """The call's output; `trace_now` builds the structure's trace on this call (a warm-up) whatever `trace_after` says."""
        shapes = tuple(tuple(t.shape) for t in tensors)
        with self.lock:
            entry = self.entries.get(structure)
            builds = False
            if entry is None:
                self.calls[structure] = calls = self.calls.get(structure, 0) + 1
                builds = (calls >= self.trace_after or trace_now) and structure not in self.building
                if builds:
                    self.building.add(structure)
                generation = self.generation
        if entry is None:
            if not builds:
                return eager()
            try:
                output = eager()
                built = build(tensors, output)
            finally:
                with self.lock:
                    self.building.discard(structure)
            with self.lock:
                if generation == self.generation:
                    self.entries[structure] = FAILED if built is FAILED else _Generic(built, shapes)
                    self.calls.pop(structure, None)
            return output
        if entry is FAILED:
            return eager()
        if isinstance(entry, _Generic):
            return self._generic(structure, entry, tensors, shapes, eager, same)
        return self._per_shape(entry, tensors, shapes, eager, build)

    def _generic(self, structure: Any, entry: _Generic, tensors: tuple, shapes: tuple, eager, same) -> Any:
        dims = entry.unchecked(shapes)
        if not dims:
            return entry.run(tensors)
        output = eager()
        try:
            agrees = same(entry.run(tensors), output)
        except Exception as err:  # a shape baked into the trace can make it fail outright
            logger.debug("trace for %s does not run at %s: %s: %s", entry.shapes, shapes, type(err).__name__, err)
            agrees = False
        with self.lock:
            if agrees:
                entry.checked |= dims
            elif self.entries.get(structure) is entry:
                logger.debug("trace built for inputs %s differs from eager at %s: one trace per shape from now on", entry.shapes, shapes)
                fallback = _PerShape()
                fallback.traces[entry.shapes] = entry.run
                fallback.builds = 1
                self.entries[structure] = fallback
        return output

    def _per_shape(self, entry: _PerShape, tensors: tuple, shapes: tuple, eager, build: Builder) -> Any:
        with self.lock:
            run = entry.traces.get(shapes)
            if run is not None:
                entry.traces.move_to_end(shapes)
            elif entry.builds < MAX_BUILDS:
                entry.seen[shapes] = seen = entry.seen.get(shapes, 0) + 1
                if len(entry.seen) > 64 * MAX_TRACES:  # bounded memory for endlessly varying shapes
                    entry.seen.clear()
        if run is None:
            output = eager()
            if entry.builds < MAX_BUILDS and seen >= max(self.trace_after, 2):  # a one-off shape is not worth a trace
                built = build(tensors, output)
                with self.lock:
                    entry.builds += 1
                    entry.traces[shapes] = built
                    if len(entry.traces) > MAX_TRACES:
                        entry.traces.popitem(last=False)
            return output
        return eager() if run is FAILED else run(tensors)

    def runners(self) -> list:
        """Every trace built so far (FAILED for structures or shapes that stay eager)."""
        with self.lock:
            found = []
            for entry in self.entries.values():
                if isinstance(entry, _Generic):
                    found.append(entry.run)
                elif isinstance(entry, _PerShape):
                    found.extend(entry.traces.values())
                else:
                    found.append(entry)
            return found

    def generalizes(self) -> bool:
        """Whether every structure seen so far runs one trace for all its shapes."""
        with self.lock:
            return bool(self.entries) and all(isinstance(e, _Generic) for e in self.entries.values())

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.calls.clear()
            self.generation += 1

    def __reduce__(self) -> tuple:
        # A copy (deepcopy, pickle) starts empty: TorchScript traces and locks are not copied.
        return type(self), (self.trace_after,)


def identical(a: Any, b: Any) -> bool:
    """Whether two (nested) outputs hold identical tensors in the same structure."""
    left, left_spec = pytree.tree_flatten(a)
    right, right_spec = pytree.tree_flatten(b)
    if left_spec != right_spec or len(left) != len(right):
        return False
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
               for x, y in zip(left, right))
