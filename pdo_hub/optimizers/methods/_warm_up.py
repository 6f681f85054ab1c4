"""Build a loaded int8 model's frozen trace when it is loaded, so its first real calls are not the slow ones.

A frozen trace (`_traces.TraceCache`) costs ~0.25 s (ResNet-18) to ~0.4 s (all-MiniLM-L6-v2) to build,
plus a doubled call per dimension checked against eager; paid on the first calls, that lands on the
user's first requests (`scripts/bench_workloads.py` times them as "cold"). A record that knows how
its model is called keeps an input spec (`"inputs"`: shape, dtype and, for keyword inputs, name of the
example the method was built with: never its values), and `warm_up` replays two synthetic calls of
that structure right after `load_optimized`: the recorded shape (the trace is built on it) and one
with a larger batch (and, for token inputs, a longer sequence), which checks those dimensions. A
model called with another structure traces lazily as before.

By default the warm-up runs on a background thread (`start`), so a cache-hit load stays as fast as
loading the weights; calls made before it finishes run eagerly (never a second build: `TraceCache`
builds a structure once), and `wait(model)` blocks until it is done. The thread is not a daemon: a
process that exits at once waits for the build (under a second) rather than tearing TorchScript down
mid-build.

Synthetic values: seeded normal floats; zeros for integer inputs (a valid token id and type), except an
`attention_mask` (ones, the last row padded) and `position_ids` (0, 1, 2, ...). Only the shapes reach
the trace; the values must merely be valid.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import RecipeError

logger = logging.getLogger(__name__)
WARM_UP_ELEMENTS = 1 << 22  # a downloaded recipe could ask for inputs of any size; real examples are far below
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
           "int32": torch.int32, "bool": torch.bool}


def input_spec(example: Any) -> list[dict[str, Any]] | None:
    """The spec of an example (a tensor, tensors, or a mapping of named tensors), None for anything else."""
    if isinstance(example, torch.Tensor):
        items = [(None, example)]
    elif isinstance(example, (tuple, list)) and example and all(isinstance(t, torch.Tensor) for t in example):
        items = [(None, t) for t in example]
    elif isinstance(example, Mapping) and example and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in example.items()):
        items = list(example.items())
    else:
        return None
    if any(str(t.dtype).replace("torch.", "") not in _DTYPES for _, t in items):
        return None
    return [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), **({"name": name} if name else {})}
            for name, t in items]


def spec_inputs(spec: Any, grow: bool = False, limit: int = WARM_UP_ELEMENTS) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """(positional, keyword) tensors of the spec's structure: its shapes, or with `grow` a larger batch (and length).

    Raises:
        RecipeError: the spec is malformed or asks for more than `limit` elements in all.
    """
    try:
        shapes = [list(item["shape"]) for item in spec]
        dtypes = [_DTYPES[item["dtype"]] for item in spec]
        names = [item.get("name") for item in spec]
    except (KeyError, TypeError, AttributeError) as err:
        raise RecipeError(f"The recipe's input spec {str(spec)[:200]} is not valid: {err}.") from err
    if not all(all(type(n) is int and n >= 0 for n in shape) for shape in shapes) or \
            not all(name is None or isinstance(name, str) for name in names) or \
            sum(math.prod(shape) for shape in shapes) > limit:
        raise RecipeError(f"The recipe's input shapes {str(shapes)[:200]} are not lists of sizes up to "
                          f"{limit} elements in all.")
    generator = torch.Generator().manual_seed(0)
    args, kwargs = [], {}
    for shape, dtype, name in zip(shapes, dtypes, names):
        if grow and shape:
            shape[0] += 1
            if len(shape) >= 2 and not dtype.is_floating_point:  # token inputs: (batch, length, ...)
                shape[1] += 3
        tensor = _values(shape, dtype, name, generator)
        if name is None:
            args.append(tensor)
        else:
            kwargs[name] = tensor
    return tuple(args), kwargs


def _values(shape: list[int], dtype: torch.dtype, name: str | None, generator: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if name == "attention_mask" or dtype == torch.bool:
        mask = torch.ones(shape, dtype=dtype)
        if len(shape) >= 2 and shape[-1] > 2:
            mask[-1, -2:] = 0  # a padded row, as in any batch of unequal lengths
        return mask
    if name == "position_ids" and shape:
        return torch.arange(shape[-1], dtype=dtype).expand(shape).contiguous()
    return torch.zeros(shape, dtype=dtype)


MODES = ("background", "now", "off")
_RUNNING: "weakref.WeakKeyDictionary[nn.Module, threading.Thread]" = weakref.WeakKeyDictionary()


def start(model: nn.Module, mode: str = "background") -> None:
    """Warm `model` up: on a background thread, `now` (before returning), or not at all (`off`)."""
    if mode not in MODES:
        raise ValueError(f"warm_up must be one of {', '.join(MODES)}, not {mode!r}.")
    runners = [r for r in [model.__dict__.get("forward"), *model.modules()] if getattr(r, "warm_up_inputs", None) is not None]
    if mode == "off" or not runners:
        return
    if mode == "now":
        warm_up(runners)
        return
    thread = threading.Thread(target=warm_up, args=(runners,), name="pdo-hub-warm-up")
    _RUNNING[model] = thread
    thread.start()


def wait(model: nn.Module, timeout: float | None = None) -> bool:
    """Block until `model`'s background warm-up is done (or `timeout` seconds); whether it is done."""
    thread = _RUNNING.get(model)
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True


def wait_all(timeout: float | None = None) -> bool:
    """Block until every background warm-up of this process is done (or `timeout` seconds each)."""
    return all([wait(model, timeout) for model in list(_RUNNING.keys())])


def warm_up(runners: list) -> None:
    """Build the traces of `runners` (each with a `warm_up_inputs` spec: see `start`); never raises."""
    for runner in runners:
        spec = runner.warm_up_inputs
        try:
            with torch.inference_mode():
                for grow in (False, True):
                    args, kwargs = spec_inputs(spec, grow)
                    runner.warm_up(args, kwargs)
        except Exception as err:  # a warm-up is an optimisation: the model still traces on its first calls
            logger.debug("warm-up of %s skipped: %s: %s", type(runner).__name__, type(err).__name__, err)
