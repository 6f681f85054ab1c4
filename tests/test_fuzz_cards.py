"""Hostile optimization reports and source records, as a downloaded published variant may carry them:
`build_card` gives a card or a pdo-hub error, and a `pdo_source.json` is accepted only when it names a
loader pdo-hub trusts, whose skeleton then builds or fails with a pdo-hub error (nothing is imported)."""

from __future__ import annotations

import json
import sys

import pytest
from fuzz_support import canary_module, fuzz_settings, json_values, mostly, nasty_text, numbers
from hypothesis import example, given
from hypothesis import strategies as st

from pdo_hub.cache import CacheEntry
from pdo_hub.core.errors import PdoHubError
from pdo_hub.hub import variants
from pdo_hub.hub.card import build_card

CANARY = "pdo_hub_fuzz_card_canary"


@pytest.fixture(scope="module", autouse=True)
def canary(tmp_path_factory):
    with canary_module(tmp_path_factory.mktemp("canary"), CANARY):
        yield


labels = st.sampled_from(["quantization_dynamic", "tensor_factorization_svd", "structured_pruning_prune", "x"])
metrics = mostly(st.dictionaries(st.sampled_from(["original_size_mb", "optimized_size_mb", "size_reduction_percent",
                                                  "speedup", "benchmarked", "batch_size", "threads", "metric",
                                                  "optimized_accuracy", "output_cosine", "accuracy_loss", "evaluated_on"]),
                                 mostly(numbers), max_size=6))
candidates = mostly(st.lists(mostly(st.fixed_dictionaries(
    {"methods": mostly(st.lists(mostly(st.sampled_from(["dynamic", "svd", "prune"])), max_size=2)),
     "status": mostly(st.sampled_from(["selected", "rejected"]))},
    optional={"size_mb": numbers, "speedup": numbers, "reason": nasty_text, "score": json_values})), max_size=3))
reports = mostly(st.fixed_dictionaries({}, optional={
    "optimizations_applied": mostly(st.lists(mostly(labels), max_size=3)),
    "candidates": candidates, "model_size_metrics": metrics, "performance_metrics": metrics,
    "accuracy_metrics": metrics, "environment": mostly(st.dictionaries(nasty_text, json_values, max_size=3)),
    "config": json_values, "notes": mostly(st.lists(nasty_text, max_size=2)), "model_name": json_values,
}))
loaders = mostly(st.fixed_dictionaries({}, optional={
    "library": mostly(st.sampled_from(["transformers", "torchvision", "torch"])),
    "auto_class": mostly(st.sampled_from(["AutoModel", "AutoModelForCausalLM", "AutoConfig", "AutoTokenizer",
                                          f"Auto{CANARY}", "AutoModel\x00"])),
    "builder": mostly(st.sampled_from(["squeezenet1_0", "resnet18", "vit_b_16", CANARY, "os.system"])),
    "architecture": mostly(st.sampled_from(["torchvision:squeezenet1_0", f"torchvision:{CANARY}", "squeezenet1_0"])),
    "kwargs": mostly(st.dictionaries(st.sampled_from(["num_classes", "dropout", "image_size", "weights", "block",
                                                      "norm_layer", "progress", "x"]),
                                     mostly(st.one_of(st.integers(min_value=-2, max_value=64), st.floats(0, 1),
                                                      st.sampled_from([None, "x", CANARY, [1, 2], 10**12]))),
                                     max_size=2)),
}))
sources = mostly(st.fixed_dictionaries({}, optional={
    "kind": mostly(st.sampled_from(["huggingface", "torchvision", "local"])),
    "source_id": mostly(st.sampled_from(["org/model", "ResNet18_Weights.IMAGENET1K_V1"])),
    "revision": mostly(st.just("a" * 40)), "ref": json_values, "config_hash": json_values, "key_hash": json_values,
    "builder": json_values, "loader": loaders,
}))


@fuzz_settings(2)
@given(reports, sources, st.one_of(st.none(), nasty_text))
@example({"candidates": [{"status": "selected"}]}, {}, None)      # a candidate without "methods"
@example({"candidates": "abc"}, {"loader": []}, None)             # wrong container types
@example({"model_size_metrics": {"size_reduction_percent": 10**400}}, {}, None)  # past float range
@example({}, {"kind": "huggingface"}, None)                       # no source_id to name the base model
def test_cards_from_hostile_reports_build_or_raise_pdo_hub_errors(report, source, pushed_as):
    try:
        card = build_card(report, source, pushed_as=pushed_as)
    except PdoHubError:
        return
    assert card.content.startswith("---\n") and "pdo-hub" in card.content


@fuzz_settings(2)
@given(sources)
@example({"kind": "huggingface", "loader": {"library": "transformers", "auto_class": f"Auto{CANARY}"}})
@example({"kind": "torchvision", "loader": {"library": "torchvision", "builder": "squeezenet1_0",
                                            "kwargs": {"num_classes": "x"}}})
@example({"kind": "torchvision", "loader": {"library": "torchvision", "builder": "squeezenet1_0",
                                            "kwargs": {"num_classes": 10**12}}})
@example({"kind": "torchvision", "loader": {"library": "torchvision", "builder": "vit_b_16",
                                            "kwargs": {"image_size": 7}}})  # torchvision asserts on this
def test_source_records_are_refused_or_rebuild_a_skeleton(tmp_path, source):
    try:
        record = variants.check_source(source, "org/published")
    except PdoHubError:
        return
    loader = record["loader"]
    if loader["library"] != "transformers":  # a transformers skeleton needs the entry's config.json too
        (tmp_path / "pdo_source.json").write_text(json.dumps(record))
        entry = CacheEntry(variants.published_key("org/published", "a" * 40), tmp_path,
                           {"files": {"pdo_source.json": {}, "model.safetensors": {}}})
        with pytest.raises(PdoHubError):  # no weights file: it fails, but only after the skeleton was built
            variants.load_published_entry(entry, "org/published")
    assert CANARY not in sys.modules
