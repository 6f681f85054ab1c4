"""Which layers stay in higher precision (`keep_high_precision`), with loss functions whose answer is known."""

from __future__ import annotations

from pdo_hub.optimizers.methods._mixed_precision import keep_high_precision


def additive(base: float, deltas: dict[str, float]):
    """Loss of the model with `quantized` layers on the lower-precision scheme: `base` plus each layer's delta."""
    def loss_with(quantized: list[str]) -> float:
        return base + sum(deltas[path] for path in quantized)

    return loss_with


def test_the_fewest_most_sensitive_layers_stay_precise_to_fit_the_budget():
    loss_with = additive(0.0, {"a": 0.001, "b": 0.002, "c": 0.004, "d": 0.008})
    assert set(keep_high_precision(["a", "b", "c", "d"], loss_with, budget=0.0035)) == {"c", "d"}
    assert keep_high_precision(["a", "b", "c", "d"], loss_with, budget=0.02) == {}


def test_when_even_all_precise_breaks_the_budget_only_the_layers_that_lower_the_loss_are_quantized():
    # dynamic's "precise" scheme is per-token int8, not float: on some layers the other scheme loses less.
    loss_with = additive(0.0034, {"a": -0.0004, "b": -0.0002, "c": 0.0003, "d": 0.002})
    kept = keep_high_precision(["a", "b", "c", "d"], loss_with, budget=0.002)
    assert set(kept) == {"c", "d"}, "a and b lower the loss: quantizing them is the most faithful mix"


def test_the_mix_is_dropped_when_it_measures_worse_than_keeping_everything():
    alone = {"a": -0.0004, "b": -0.0002, "c": 0.0003}

    def loss_with(quantized: list[str]) -> float:  # not additive: a and b each help alone, together they hurt
        if len(quantized) == 1:
            return 0.0034 + alone[quantized[0]]
        return 0.0034 if not quantized else 0.0064

    assert set(keep_high_precision(["a", "b", "c"], loss_with, budget=0.002)) == {"a", "b", "c"}
