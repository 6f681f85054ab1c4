"""Loaded int8 variants build their trace at load, and sibling int8 layers share one quantized input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from helpers import apply_method
from pdo_hub.core.errors import RecipeError
from pdo_hub.optimizers import load_optimized, save_optimized
from pdo_hub.optimizers.methods._int8_linear import TokenInt8Linear
from pdo_hub.optimizers.methods._shared_input import ungroup
from pdo_hub.optimizers.methods import _warm_up
from pdo_hub.optimizers.methods._warm_up import spec_inputs


class _Attention(nn.Module):
    """Self-attention projections (q, k, v read x) and cross-attention ones (k2, v2 read `memory`)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.q2, self.k2, self.v2 = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        k2, v2 = self.k2(memory), self.v2(memory)
        q2 = self.q2(x)  # reads x again, but not next to q, k, v: it stays on its own
        scores, cross = (q @ k.transpose(-1, -2)).softmax(-1), (q2 @ k2.transpose(-1, -2)).softmax(-1)
        return self.out(torch.cat([scores @ v, cross @ v2, x], -1))


def _groups(model: nn.Module) -> set[frozenset[str]]:
    names = {id(m): name for name, m in model.named_modules()}
    return {frozenset(names[id(member)] for member in m.shared_input.members)
            for m in model.modules() if isinstance(m, TokenInt8Linear) and m.shared_input is not None}


def test_sibling_int8_layers_share_one_quantized_input_with_identical_outputs():
    model = _Attention().eval()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    optimized, records = apply_method("dynamic", model, (x[:1], memory[:1]))
    assert set(records[0]["schemes"].values()) == {"per_token_asymmetric"}
    ungrouped = copy.deepcopy(optimized)
    with torch.inference_mode():
        for batch, length in ((2, 5), (2, 5), (3, 9), (1, 4)):  # eager (groups), trace built, checked, traced
            x, memory = torch.randn(batch, length, 32), torch.randn(batch, length + 2, 32)
            expected = type(ungrouped).forward(ungrouped, x, memory)
            assert torch.equal(optimized(x, memory), expected)
    assert _groups(optimized) == {frozenset({"q", "k", "v"}), frozenset({"k2", "v2"})}
    assert not _groups(ungrouped), "a model only runs grouped after its FastForward watched a call"


def test_groups_never_outlive_their_weights():
    model = _Attention().eval()
    example = (torch.randn(1, 5, 32), torch.randn(1, 6, 32))
    optimized, _ = apply_method("dynamic", model, example)
    with torch.inference_mode():
        optimized(*example)
    assert _groups(optimized)
    copied = copy.deepcopy(optimized)
    assert not _groups(copied), "a copy must not share the original's concatenated weights"
    with torch.inference_mode():
        assert torch.equal(copied(*example), optimized(*example))
    assert _groups(copied)
    # New weights for one member: the whole group's concatenated copy is stale and dropped.
    member = optimized.k2
    member.load_state_dict({name: t.clone() for name, t in member.state_dict().items()})
    assert frozenset({"k2", "v2"}) not in _groups(optimized)
    ungroup(optimized.modules())
    assert not _groups(optimized)


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    return BertModel(config).eval(), config


def test_a_loaded_dynamic_variant_has_its_trace_before_the_first_call(tmp_path, monkeypatch):
    model, config = _tiny_bert()
    example = {"input_ids": torch.randint(4, 64, (1, 9)), "token_type_ids": torch.zeros(1, 9, dtype=torch.long),
               "attention_mask": torch.ones(1, 9, dtype=torch.long)}
    optimized, records = apply_method("dynamic", model, example)
    assert records[0]["inputs"] == [{"name": n, "shape": [1, 9], "dtype": "int64"} for n in example], "the spec keeps shapes, not values"
    save_optimized(optimized, tmp_path)
    from transformers import BertModel

    loaded = load_optimized(tmp_path, BertModel(config).eval())
    assert _warm_up.wait(loaded, timeout=60)
    assert len(loaded.forward.traces) == 1 and loaded.forward.cache.generalizes()
    eager_calls = []
    forward = BertModel.forward

    def counted(self, *args, **kwargs):
        if not torch.jit.is_tracing():
            eager_calls.append(kwargs["input_ids"].shape)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", counted)
    with torch.inference_mode():
        for batch, length in ((1, 5), (4, 17), (2, 30)):  # new batch sizes and lengths: the trace, no eager check
            inputs = {"input_ids": torch.randint(4, 64, (batch, length)), "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
                      "attention_mask": torch.ones(batch, length, dtype=torch.long)}
            inputs["attention_mask"][-1, length // 2:] = 0
            got = loaded(**inputs).last_hidden_state
            assert torch.equal(got, forward(loaded, **inputs).last_hidden_state)
    assert not eager_calls, f"calls ran eagerly at {eager_calls}: the load should have built and checked the trace"


def test_a_bad_warm_up_spec_leaves_the_model_to_trace_lazily():
    model = _Attention().eval()
    example = (torch.randn(1, 5, 32), torch.randn(1, 6, 32))
    optimized, _ = apply_method("dynamic", model, example)
    for spec in ([{"shape": [1 << 20, 1 << 10], "dtype": "float32"}], [{"shape": "large", "dtype": "float32"}],
                 [{"shape": [1, 5], "dtype": "complex64"}], "junk"):
        with pytest.raises(RecipeError):
            spec_inputs(spec)
        fresh = copy.deepcopy(optimized)
        fresh.forward.warm_up_inputs = spec
        _warm_up.start(fresh, "now")  # never raises: a warm-up only saves time
        assert not fresh.forward.traces
        with torch.inference_mode():
            assert torch.equal(fresh(*example), optimized(*example))


def test_a_loaded_traced_conv_model_gives_exactly_what_eager_gave(tmp_path):
    """A frozen trace keeps eager's numerics: freeze's conv-bn folding moved outputs by a last bit, which
    an int8 rounding then turned into visibly different results (6 seeds in 30 before the fix)."""
    from tiny_models import KitchenSink

    for seed in range(20):
        torch.manual_seed(seed)
        model, x = KitchenSink().eval(), torch.randn(2, 3, 16, 16)
        optimized, _ = apply_method("dynamic", model, x[:1])
        with torch.inference_mode():
            expected = optimized(x)  # eager: the first call
        save_optimized(optimized, tmp_path / str(seed))
        loaded = load_optimized(tmp_path / str(seed), KitchenSink(), warm_up="now")
        assert loaded.forward.traces, "the load should have built the trace"
        with torch.inference_mode():
            assert torch.equal(loaded(x), expected), f"seed {seed}"


def test_calls_during_a_background_warm_up_run_eagerly_and_one_trace_is_built(tmp_path):
    model = _Attention().eval()
    example = (torch.randn(1, 5, 32), torch.randn(1, 6, 32))
    optimized, _ = apply_method("dynamic", model, example)
    save_optimized(optimized, tmp_path)
    inputs = [(torch.randn(b, n, 32), torch.randn(b, n + 1, 32)) for b, n in ((1, 5), (2, 7), (1, 5), (3, 4), (1, 5), (2, 9))]
    with torch.inference_mode():
        expected = [type(optimized).forward(optimized, *x) for x in inputs]
    for _ in range(3):  # the main thread's calls race the warm-up thread's build
        loaded = load_optimized(tmp_path, _Attention())
        with torch.inference_mode():
            for x, want in zip(inputs, expected):
                assert torch.equal(loaded(*x), want)
        assert _warm_up.wait(loaded, timeout=60)
        assert len(loaded.forward.traces) == 1, loaded.forward.traces
    with pytest.raises(ValueError, match="warm_up"):
        load_optimized(tmp_path, _Attention(), warm_up="later")
