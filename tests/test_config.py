"""The seed's config: defaults, YAML, presets, canonical hash, and every bad-input error."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest
import yaml

from pdo_hub import ConfigError, PostDownloadOptimizationConfig, load_config
from pdo_hub.core.config import preset_file

SEED_DEFAULTS = {
    "enable_optimization": True,
    "enable_quantization": True,
    "quantization_method": "dynamic",
    "enable_low_rank_optimization": True,
    "low_rank_method": "svd",
    "target_compression_ratio": 0.7,
    "enable_tensor_factorization": True,
    "preserve_accuracy_threshold": 0.02,
    "enable_structured_pruning": False,
    "auto_select_best_method": True,
    "benchmark_optimizations": True,
    "save_optimized_model": True,
}


def test_defaults_match_the_seed_reference_table():
    config = PostDownloadOptimizationConfig()
    for key, value in SEED_DEFAULTS.items():
        assert getattr(config, key) == value and type(getattr(config, key)) is type(value), key


def test_seed_manual_example_attribute_style_still_works():
    config = PostDownloadOptimizationConfig()
    config.enable_quantization = True
    config.quantization_method = "dynamic"
    config.enable_low_rank_optimization = True
    config.auto_select_best_method = True
    assert config.quantization_method == "dynamic"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("conservative", {"quantization_method": "dynamic", "low_rank_method": "svd", "target_compression_ratio": 0.7}),
        ("aggressive", {"quantization_method": "static", "low_rank_method": "hlrtf", "target_compression_ratio": 0.5,
                        "enable_structured_pruning": True, "auto_select_best_method": False}),
        ("quality", {"quantization_method": "fx", "low_rank_method": "tucker", "target_compression_ratio": 0.8,
                     "preserve_accuracy_threshold": 0.01}),
    ],
)
def test_presets_load_by_name_and_from_their_files(name, expected):
    by_name = load_config(name)
    with resources.as_file(preset_file(name)) as path:
        by_file = PostDownloadOptimizationConfig.from_yaml(path)
    assert by_name == by_file
    for key, value in expected.items():
        assert getattr(by_name, key) == value


def test_yaml_with_section_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"post_download_optimization": {"enable_optimization": False, "low_rank_method": "tucker"}}))
    config = load_config(path)
    assert config.enable_optimization is False and config.low_rank_method == "tucker"
    assert PostDownloadOptimizationConfig.from_dict(config.to_dict()) == config


def test_hash_ignores_key_order_and_int_float_spelling():
    a = PostDownloadOptimizationConfig.from_dict({"target_compression_ratio": 1, "low_rank_method": "svd", "seed": 3})
    b = PostDownloadOptimizationConfig.from_dict({"seed": 3, "low_rank_method": "svd", "target_compression_ratio": 1.0})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != PostDownloadOptimizationConfig(seed=4, target_compression_ratio=1.0).config_hash()


def test_hash_is_semantic():
    off = PostDownloadOptimizationConfig(enable_quantization=False, quantization_method="static")
    assert off.config_hash() == PostDownloadOptimizationConfig(enable_quantization=False).config_hash()
    assert PostDownloadOptimizationConfig(output_dir="/tmp/x").config_hash() == PostDownloadOptimizationConfig().config_hash()
    disabled = PostDownloadOptimizationConfig(enable_optimization=False, low_rank_method="hlrtf")
    assert disabled.config_hash() == PostDownloadOptimizationConfig(enable_optimization=False).config_hash()
    assert PostDownloadOptimizationConfig(quantization_method="static").config_hash() != PostDownloadOptimizationConfig().config_hash()
    no_low_rank = {"enable_low_rank_optimization": False}
    assert (PostDownloadOptimizationConfig(**no_low_rank, recovery_steps=5).config_hash()
            == PostDownloadOptimizationConfig(**no_low_rank, recovery_steps=50).config_hash())
    qat = {**no_low_rank, "quantization_method": "qat"}
    assert (PostDownloadOptimizationConfig(**qat, recovery_steps=5).config_hash()
            != PostDownloadOptimizationConfig(**qat, recovery_steps=50).config_hash()), "qat trains with recovery_steps"


def test_embedding_bits_is_hashed_only_when_set_away_from_int8():
    # Configs written before the key existed keep their hash, so their cache entries stay valid.
    assert "embedding_bits" not in PostDownloadOptimizationConfig().canonical()
    assert PostDownloadOptimizationConfig(embedding_bits=8).config_hash() == PostDownloadOptimizationConfig().config_hash()
    assert PostDownloadOptimizationConfig(embedding_bits=4).config_hash() != PostDownloadOptimizationConfig().config_hash()
    assert load_config("aggressive").embedding_bits == 4
    no_int8 = {"enable_quantization": False}
    assert (PostDownloadOptimizationConfig(**no_int8, embedding_bits=4).config_hash()
            == PostDownloadOptimizationConfig(**no_int8).config_hash()), "nothing is quantized: the bits change nothing"


def test_hash_is_stable_across_processes():
    code = "from pdo_hub import load_config; print(load_config('quality').config_hash())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == load_config("quality").config_hash()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"quantisation_method": "dynamic"}, ["quantisation_method", "quantization_method", "Allowed keys"]),
        ({"enable_quantization": "yes"}, ["enable_quantization", "'yes'", "true or false"]),
        ({"quantization_method": "int4"}, ["quantization_method", "'int4'", "dynamic, static, qat, fx"]),
        ({"low_rank_method": "cp"}, ["low_rank_method", "'cp'", "svd, tucker, hlrtf"]),
        ({"target_compression_ratio": 0}, ["target_compression_ratio", "(0, 1]"]),
        ({"target_compression_ratio": 1.5}, ["target_compression_ratio", "1.5"]),
        ({"preserve_accuracy_threshold": 1.0}, ["preserve_accuracy_threshold", "[0, 1)"]),
        ({"preserve_accuracy_threshold": -0.1}, ["preserve_accuracy_threshold", "-0.1"]),
        ({"target_compression_ratio": "0.7"}, ["target_compression_ratio", "number"]),
        ({"benchmark_runs": 0}, ["benchmark_runs", ">= 1"]),
        ({"device": "tpu"}, ["device", "cpu, cuda, auto"]),
        ({"embedding_bits": 3}, ["embedding_bits", "3", "8, 4"]),
        ({"version": 99}, ["version", "Upgrade"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(data, words):
    with pytest.raises(ConfigError) as info:
        PostDownloadOptimizationConfig.from_dict(data)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    assert isinstance(info.value, ValueError)


def test_bad_files_and_sources(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("post_download_optimization: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("no-such-mode")
    with pytest.raises(ConfigError, match="mapping"):
        PostDownloadOptimizationConfig.from_dict({"post_download_optimization": [1]})
    with pytest.raises(ConfigError, match="preset"):
        PostDownloadOptimizationConfig.from_preset("turbo")


def test_empty_xdg_cache_home_counts_as_unset(monkeypatch, tmp_path):
    """An empty XDG_CACHE_HOME must not put the caches in the current directory (the XDG rule: empty is unset)."""
    from pdo_hub.core.constants import cache_dir
    from pdo_hub.mirror_demo import default_workdir
    from pdo_hub.optimizers.methods._token_int8_kernel import cache_dir as kernel_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.delenv("PDO_HUB_CACHE", raising=False)
    monkeypatch.delenv("PDO_HUB_KERNEL_CACHE", raising=False)
    home_cache = tmp_path / ".cache"
    assert cache_dir() == home_cache / "pdo_hub"
    assert default_workdir() == home_cache / "pdo_hub_demo"
    assert kernel_cache_dir() == home_cache / "pdo_hub_kernels"
