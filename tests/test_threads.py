"""Process-wide patches stay local to the threads that asked for them: skipping weight initialization for a
skeleton, and `intercept()`."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import torch
import torch.nn as nn
from hub_helpers import FAST_CONFIG, save_tiny_bert

import pdo_hub
from pdo_hub.hub.skeleton import no_weight_init, transformers_skeleton

WAIT = 60  # seconds; only reached when a thread hangs


class Holder:
    """A thread that enters a context manager and stays inside until told to leave."""

    def __init__(self, make: Callable[[], AbstractContextManager]) -> None:
        self._inside, self._leave, self.error = threading.Event(), threading.Event(), None
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True)

    def _run(self, make: Callable[[], AbstractContextManager]) -> None:
        try:
            with make():
                self._inside.set()
                self._leave.wait(WAIT)
        except BaseException as err:  # reported by leave()
            self.error = err
            self._inside.set()

    def enter(self) -> Holder:
        self._thread.start()
        assert self._inside.wait(WAIT), "the thread did not enter the block"
        return self

    def leave(self) -> None:
        self._leave.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive() and self.error is None, self.error


@contextmanager
def held(make: Callable[[], AbstractContextManager]) -> Iterator[Holder]:
    holder = Holder(make).enter()
    try:
        yield holder
    finally:
        holder.leave()


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


def assert_initialised(model: nn.Module, reference: nn.Module) -> None:
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, expected), f"{name} was not initialised"
    assert any(p.abs().sum() > 0 for p in model.parameters())


# --- skipping weight initialization --------------------------------------------------------------


def test_a_thread_building_a_model_while_another_skips_init_gets_initialised_weights():
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.Conv2d(3, 8, 3), nn.MultiheadAttention(16, 2))

    with held(no_weight_init):
        built = seeded(build)  # MultiheadAttention calls xavier_uniform_ imported by name
    assert_initialised(built, seeded(build))


def test_the_thread_inside_no_weight_init_skips_it_also_through_names_imported_from_torch():
    from torch.nn.modules import activation

    with no_weight_init():
        assert torch.equal(nn.init.normal_(torch.zeros(4)), torch.zeros(4))
        assert torch.equal(activation.xavier_uniform_(torch.zeros(4, 4)), torch.zeros(4, 4))
    assert nn.init.normal_(torch.zeros(4)).abs().sum() > 0


def test_overlapping_blocks_in_two_threads_leave_initialisation_working():
    # A enters, B enters, A leaves, B leaves: swapping functions in and out would leave no-ops installed.
    first = Holder(no_weight_init).enter()
    second = Holder(no_weight_init).enter()
    first.leave()
    second.leave()
    assert_initialised(seeded(lambda: nn.Linear(32, 32)), seeded(lambda: nn.Linear(32, 32)))
    with held(no_weight_init):
        assert_initialised(seeded(lambda: nn.Linear(32, 32)), seeded(lambda: nn.Linear(32, 32)))


def test_a_transformers_model_built_while_another_thread_builds_a_skeleton_is_initialised():
    from transformers import AutoModel, BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    transformers_skeleton(AutoModel, config)  # wraps PreTrainedModel.init_weights
    with held(no_weight_init):
        built = seeded(lambda: BertModel(config))
    assert_initialised(built, seeded(lambda: BertModel(config)))


# --- intercept() ---------------------------------------------------------------------------------


def _entry_points() -> dict[str, object]:
    import torchvision
    import transformers
    from torchvision.models import _api

    return {
        "tv.resnet18": torchvision.models.resnet18,
        "tv.resnet.resnet18": sys.modules["torchvision.models.resnet"].resnet18,
        "tv.registry": dict(_api.BUILTIN_MODELS),
        "AutoModel.from_pretrained": vars(transformers.AutoModel)["from_pretrained"],
    }


def _same(before: dict[str, object]) -> bool:
    after = _entry_points()
    for name, value in before.items():
        if isinstance(value, dict):
            if value.keys() != after[name].keys() or any(after[name][k] is not v for k, v in value.items()):
                return False
        elif after[name] is not value:
            return False
    return True


def test_intercept_blocks_overlapping_in_two_threads_patch_until_the_last_one_leaves():
    import torchvision

    before = _entry_points()
    first = Holder(lambda: pdo_hub.intercept(FAST_CONFIG)).enter()
    second = Holder(lambda: pdo_hub.intercept(FAST_CONFIG)).enter()
    first.leave()
    assert torchvision.models.resnet18 is not before["tv.resnet18"], "the second block is still inside"
    second.leave()
    assert _same(before), "the originals must be back, the same objects"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), seed=5)


def test_intercept_optimizes_only_in_the_thread_that_entered_it(tiny_bert):
    import transformers

    results = {}

    def load(name: str) -> None:
        results[name] = transformers.AutoModel.from_pretrained(str(tiny_bert))

    with held(lambda: pdo_hub.intercept(FAST_CONFIG)):
        outside = threading.Thread(target=load, args=("outside",))
        outside.start()
        outside.join(WAIT)
    with pdo_hub.intercept(FAST_CONFIG):
        load("inside")
        started_inside = threading.Thread(target=load, args=("started inside",))
        started_inside.start()
        started_inside.join(WAIT)
    assert not hasattr(results["outside"], "pdo_recipe"), "a thread outside intercept() gets the stock model"
    assert not hasattr(results["started inside"], "pdo_recipe"), "threads do not inherit the block"
    assert results["inside"].pdo_report["optimizations_applied"] == ["quantization_dynamic"]
