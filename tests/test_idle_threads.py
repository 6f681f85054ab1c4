"""Small calls after an idle spell run on the thread count their own idle calls measured faster (`_idle_threads`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pdo_hub.optimizers.methods import _idle_threads
from pdo_hub.optimizers.methods._fast_graph import QuantizedGraph
from pdo_hub.optimizers.methods._idle_threads import RETRY_EVERY, IdleThreads


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(_idle_threads, "_now", fake)
    monkeypatch.setattr(_idle_threads, "_last_end", 0.0)
    monkeypatch.delenv("PDO_HUB_IDLE_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield fake
    torch.set_num_threads(threads)


def _run(choice: IdleThreads, clock: _Clock, seconds_on: dict[int, float], idle_s: float = 0.1, size: int = 16) -> int:
    """One call after `idle_s` of quiet that takes `seconds_on[threads]`; the thread count it ran on."""
    clock.now += idle_s
    with choice.call(size):
        used = torch.get_num_threads()
        clock.now += seconds_on[used]
    return used


def test_idle_calls_time_one_thread_and_all_then_keep_the_faster_retrying_the_other(clock):
    choice = IdleThreads()
    waking_is_slow = {1: 0.003, 2: 0.012}
    used = [_run(choice, clock, waking_is_slow) for _ in range(2 * RETRY_EVERY)]
    assert used[:3] == [2, 1, 1]  # each choice timed once, then the faster
    retried = [i for i, n in enumerate(used) if n == 2][1:]
    assert retried == [RETRY_EVERY - 1, 2 * RETRY_EVERY - 1]  # the slower one, every RETRY_EVERY idle calls
    assert torch.get_num_threads() == 2  # restored after each call


def test_a_host_where_waking_is_cheap_keeps_all_threads_for_idle_calls(clock):
    choice = IdleThreads()
    waking_is_cheap = {1: 0.004, 2: 0.0025}
    used = [_run(choice, clock, waking_is_cheap) for _ in range(RETRY_EVERY - 2)]
    assert used[:2] == [2, 1] and set(used[2:]) == {2}


def test_calls_that_follow_other_calls_run_on_all_threads(clock):
    choice = IdleThreads()
    waking_is_slow = {1: 0.003, 2: 0.012}
    _run(choice, clock, waking_is_slow), _run(choice, clock, waking_is_slow)
    assert [_run(choice, clock, waking_is_slow, idle_s=0.001) for _ in range(5)] == [2] * 5


def test_each_input_size_group_measures_its_own_choice(clock):
    choice = IdleThreads()
    small, large = {1: 0.003, 2: 0.012}, {1: 0.5, 2: 0.3}
    for _ in range(3):
        _run(choice, clock, small, size=16)
        _run(choice, clock, large, size=1 << 20)
    assert _run(choice, clock, small, size=16) == 1
    assert _run(choice, clock, large, size=1 << 20) == 2


def test_idle_calls_that_are_long_on_all_threads_never_try_one(clock):
    choice = IdleThreads()
    long_calls = {1: 0.001, 2: 0.05}  # even were one thread faster: it is never tried
    assert [_run(choice, clock, long_calls) for _ in range(2 * RETRY_EVERY)] == [2] * (2 * RETRY_EVERY)


def test_turned_off_by_the_environment_every_call_runs_on_all_threads(clock, monkeypatch):
    monkeypatch.setenv("PDO_HUB_IDLE_THREADS", "0")
    choice = IdleThreads()
    assert [_run(choice, clock, {1: 0.003, 2: 0.012}) for _ in range(4)] == [2] * 4


def test_a_call_that_raises_still_restores_the_thread_count(clock):
    choice = IdleThreads()
    _run(choice, clock, {1: 0.003, 2: 0.012})  # all threads timed: the next idle call tries one
    clock.now += 1.0
    with pytest.raises(ValueError), choice.call(16):
        assert torch.get_num_threads() == 1
        raise ValueError("boom")
    assert torch.get_num_threads() == 2


def test_an_int8_graph_after_an_idle_spell_runs_on_one_thread_with_the_same_output(clock):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return torch.relu(x) * 2

    graph = QuantizedGraph(Probe(), accelerate=False)
    x = torch.randn(4, 8)
    with torch.inference_mode():
        clock.now += 1.0
        first = graph(x)
        clock.now += 1.0
        second = graph(x)
    assert seen == [2, 1]  # all threads timed first, then one
    assert torch.equal(first, second)


def test_a_transformer_style_fast_forward_after_an_idle_spell_runs_on_one_thread(clock):
    from pdo_hub.optimizers.methods._fast_forward import FastForward

    seen = []

    class Probe(nn.Module):
        def forward(self, input_ids):
            seen.append(torch.get_num_threads())
            return input_ids * 2

    forward = FastForward(Probe().eval())
    ids = torch.arange(8)[None]
    # Gradients on: every call runs eagerly (no trace), so each one reaches `Probe.forward`.
    for _ in range(2):
        clock.now += 1.0
        forward(input_ids=ids)
    clock.now += 0.001  # right after: not idle
    forward(input_ids=ids)
    assert seen == [2, 1, 2]
