"""Graceful degradation: a method that fails (out of memory, a layer it cannot take) or a candidate over the
accuracy budget is a rejected candidate with its reason; with nothing left the original comes back, and the
cache stores exactly that original with its report, or nothing."""

from __future__ import annotations

import pytest
import torch
from hub_helpers import FAST_CONFIG
from safetensors.torch import save_file
from tiny_models import MLP

from pdo_hub.cache import OptimizedCache
from pdo_hub.cache.integrity import Check, examine
from pdo_hub.hub.local import load_local
from pdo_hub.optimizers import candidates, create_post_download_optimizer
from pdo_hub.optimizers.evaluate import Fidelity
from pdo_hub.optimizers.methods.dynamic import DynamicQuantization
from pdo_hub.optimizers.methods.svd import SVDFactorization

X = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))


def fail_with(error: BaseException):
    def apply(self, model, ctx):
        raise error

    return apply


def far_off(*args, **kwargs) -> Fidelity:
    return Fidelity(cosine=0.5, top1_agreement=None, max_abs_error=1.0)


# failure -> (how to cause it, what the candidate's reason says)
FAILURES = {
    "out of memory": (lambda mp: mp.setattr(DynamicQuantization, "apply", fail_with(MemoryError("simulated: no memory"))),
                      "MemoryError"),
    "unsupported layer": (lambda mp: mp.setattr(DynamicQuantization, "apply",
                                                fail_with(NotImplementedError("no kernel for this layer"))),
                          "NotImplementedError"),
    "over the budget": (lambda mp: mp.setattr(candidates, "fidelity", far_off), "exceeds preserve_accuracy_threshold"),
}


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failing_candidate_is_rejected_with_its_reason_and_the_original_returned(failure, monkeypatch):
    install, reason = FAILURES[failure]
    install(monkeypatch)
    model = mlp()
    optimized, report = create_post_download_optimizer(FAST_CONFIG).optimize_model(model, "mlp", X)
    assert report["optimizations_applied"] == [] and report["recipe"]["records"] == []
    assert all(c["status"] == "rejected" for c in report["candidates"])
    assert any(reason in c.get("reason", "") for c in report["candidates"]), report["candidates"]
    assert any(reason in note for note in report["notes"]), f"the notes must say why: {report['notes']}"
    with torch.inference_mode():
        assert torch.equal(optimized(X), model(X))


def test_a_method_out_of_memory_leaves_the_other_candidates_to_choose_from(monkeypatch):
    monkeypatch.setattr(SVDFactorization, "apply", fail_with(MemoryError("simulated: no memory")))
    config = dict(FAST_CONFIG, enable_low_rank_optimization=True, auto_select_best_method=True)
    _, report = create_post_download_optimizer(config).optimize_model(mlp(), "mlp", X)
    failed = [c for c in report["candidates"] if "svd" in c["methods"]]
    assert failed and all(c["status"] == "rejected" and "MemoryError" in c["reason"] for c in failed)
    assert report["optimizations_applied"] == ["quantization_dynamic"]


@pytest.mark.parametrize("failure", FAILURES)
def test_the_cache_stores_the_original_with_its_report_and_loads_it_back(failure, tmp_path):
    install, reason = FAILURES[failure]
    weights = tmp_path / "mlp.safetensors"
    save_file(mlp().state_dict(), weights)

    with pytest.MonkeyPatch.context() as failing:  # only the build fails; the next load runs no optimizer
        install(failing)
        built = load_local(weights, architecture=MLP, config=FAST_CONFIG)
    hit = load_local(weights, architecture=MLP, config=FAST_CONFIG)

    assert built.pdo_cache_status == "built" and hit.pdo_cache_status == "hit"
    for model in (built, hit):
        assert model.pdo_report["optimizations_applied"] == [] and not model.pdo_recipe.records
        assert any(reason in c.get("reason", "") for c in model.pdo_report["candidates"])
        with torch.inference_mode():
            assert torch.equal(model(X), mlp()(X)), "the stored model is the original"
    cache = OptimizedCache()
    [entry] = cache.list_entries()
    assert examine(cache.root, entry.path, Check.FULL).entry is not None


def test_a_failure_outside_the_candidates_stores_nothing(tmp_path, monkeypatch):
    import pdo_hub.optimizers.optimizer as optimizer_module

    def no_memory(*args, **kwargs):
        raise MemoryError("simulated: no memory for the reference outputs")

    monkeypatch.setattr(optimizer_module, "reference_outputs", no_memory)
    weights = tmp_path / "mlp.safetensors"
    save_file(mlp().state_dict(), weights)
    with pytest.raises(MemoryError):
        load_local(weights, architecture=MLP, config=FAST_CONFIG)
    root = OptimizedCache().root
    assert OptimizedCache().list_entries() == [] and not list((root / ".tmp").iterdir())
