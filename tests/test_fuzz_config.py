"""Hostile configs and mirror manifests: every input gives a valid object or a `ConfigError`, nothing else."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from fuzz_support import fuzz_settings, json_values, mapping_like, nasty_text, result_or_refusal
from hypothesis import example, given
from hypothesis import strategies as st

from pdo_hub.core.config import YAML_SECTION, PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError
from pdo_hub.mirror import parse_manifest
from pdo_hub.mirror.manifest import load_manifest

FIELDS = [field.name for field in dataclasses.fields(PostDownloadOptimizationConfig)]
# YAML that PyYAML's safe loader fails on with something other than yaml.YAMLError, or tries to build code from.
NASTY_YAML = [
    "calibration_samples: 2020-13-45",            # ValueError from the timestamp constructor
    "seed: " + "1" * 5000,                         # ValueError: past Python's int digit limit
    "[" * 3000,                                    # RecursionError in the composer
    "quantization_method: !!python/name:os.system",
    "!!python/object/apply:os.system ['true']",
    "{2020-01-01: 1}",
    "post_download_optimization: [1, 2]",
    "target_compression_ratio: .nan",
    "recovery_max_seconds: .nan",
    "target_compression_ratio: " + "9" * 400,      # an int past float range
    "\x00", "---\n---\n", "- a\n- b",
]


def _check_valid(config: PostDownloadOptimizationConfig) -> None:
    """What every config that validation let through must satisfy."""
    assert PostDownloadOptimizationConfig.from_dict(config.to_dict()) == config
    assert len(config.config_hash()) == 64


@fuzz_settings()
@given(mapping_like(FIELDS + ["version", YAML_SECTION]))
def test_from_dict_gives_a_config_or_config_error(data):
    config, refused = result_or_refusal(PostDownloadOptimizationConfig.from_dict, data, refusal=ConfigError)
    if refused is None:
        assert isinstance(config, PostDownloadOptimizationConfig)
        _check_valid(config)


@fuzz_settings(0.5)
@given(json_values)
def test_from_dict_refuses_what_is_not_a_mapping_of_keys(data):
    config, refused = result_or_refusal(PostDownloadOptimizationConfig.from_dict, data, refusal=ConfigError)
    if not isinstance(data, dict):
        assert refused is not None, f"{type(data).__name__} accepted as a config"
    if refused is None:
        _check_valid(config)


@fuzz_settings()
@given(st.sampled_from(FIELDS + ["quantisation_method", "__class__", "_validated", "unknown"]), json_values)
@example("quantization_method", "dynamc")  # the seed sets keys after construction: a typo must fail here
@example("target_compression_ratio", 10**400)
@example("recovery_max_seconds", float("nan"))
def test_assignment_after_construction_is_validated(name, value):
    config = PostDownloadOptimizationConfig()
    before = config.to_dict()
    try:
        setattr(config, name, value)
    except ConfigError as err:
        assert name in str(err), f"the error must name the key: {err}"
        assert config.to_dict() == before, "a refused assignment must leave the config as it was"
        return
    assert name in FIELDS
    _check_valid(config)
    assert dataclasses.replace(config) == config


def test_a_misspelt_value_set_after_construction_raises_naming_the_key():
    config = PostDownloadOptimizationConfig()
    with pytest.raises(ConfigError, match="quantization_method"):
        config.quantization_method = "dynamc"
    assert config.quantization_method == "dynamic"
    with pytest.raises(ConfigError, match="Did you mean 'quantization_method'"):
        config.quantisation_method = "dynamic"
    config.target_compression_ratio = 1  # still coerced like at construction
    assert config.target_compression_ratio == 1.0 and isinstance(config.target_compression_ratio, float)
    assert dataclasses.replace(config, seed=7).seed == 7


@fuzz_settings()
@given(st.one_of(st.sampled_from(NASTY_YAML), st.text(max_size=200),
                 mapping_like(FIELDS).map(lambda d: yaml.safe_dump({YAML_SECTION: d}, allow_unicode=True))))
def test_yaml_config_files_give_a_config_or_config_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        return
    config, refused = result_or_refusal(load_config, path, refusal=ConfigError)
    if refused is None:
        assert isinstance(config, PostDownloadOptimizationConfig)
        _check_valid(config)


def test_config_files_that_are_not_utf8_raise_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"seed: \xff\xfe")
    with pytest.raises(ConfigError):
        load_config(path)


@fuzz_settings(0.5)
@given(nasty_text)
@example("x" * 5000)  # too long for a file name: the file system refuses to look it up
def test_config_names_give_a_config_or_config_error(name):
    config, refused = result_or_refusal(load_config, name, refusal=ConfigError)
    if refused is None:
        assert isinstance(config, PostDownloadOptimizationConfig)
        _check_valid(config)


MODEL_KEYS = ["source", "revision", "preset", "config", "auto_class", "calibration", "optimize", "push", "architecture"]
_model_values = st.one_of(json_values, st.sampled_from(["hf:org/name", "torchvision:resnet18:DEFAULT", "quality",
                                                        "cal.txt", "AutoModel", "my-org/x", "a" * 40, "../cal.txt"]))
_models = st.lists(st.one_of(nasty_text, mapping_like(MODEL_KEYS, _model_values)), max_size=4)
manifests = st.one_of(
    json_values,
    st.fixed_dictionaries({"models": _models}, optional={"defaults": mapping_like(MODEL_KEYS[2:], _model_values)}),
)


@fuzz_settings(2)
@given(manifests)
def test_manifests_parse_or_raise_config_error(tmp_path, data):
    (tmp_path / "cal.txt").write_text("one sentence\n")
    try:
        manifest = parse_manifest(data, base=tmp_path)
    except ConfigError:
        return
    for entry in manifest.entries:
        assert entry.calibration is None or entry.calibration.exists()
        _check_valid(entry.config)


@fuzz_settings(0.5)
@given(st.one_of(st.sampled_from(NASTY_YAML), st.text(max_size=200), manifests.map(yaml.safe_dump)))
def test_manifest_files_parse_or_raise_config_error(tmp_path, text):
    path = tmp_path / "mirror.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        return
    manifest, refused = result_or_refusal(load_manifest, path, refusal=ConfigError)
    if refused is None:
        assert manifest.path.name == path.name and all(entry.source for entry in manifest.entries)
