"""Real accuracy: the digits-trained ResNet-18 through `static`, `fx` and `qat` (scripts/quantization_accuracy.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.mark.slow
def test_digits_int8_accuracy_drop():
    pytest.importorskip("sklearn")
    from quantization_accuracy import quantize_digits

    results = quantize_digits(threshold=0.01, qat_steps=8)
    base = results["fp32"]["accuracy"]
    assert base >= 0.97, f"the digits model trained badly ({base:.3f})"
    limits = {"static": 0.005, "fx": 0.003, "qat": 0.003}
    for name, limit in limits.items():
        drop = base - results[name]["accuracy"]
        assert drop <= limit + 1e-9, f"{name}: top-1 drop {100 * drop:.2f} pt > {100 * limit:.2f} pt"
    assert results["qat"]["accuracy"] >= results["static"]["accuracy"], "qat ended less accurate than static"
