"""Dependencies point one way (DESIGN.md): cli > workflows > hub > cache > optimizers > core."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pdo_hub"

# Lower number = higher layer. A module may import only from its own layer or lower ones (larger numbers).
WORKFLOWS = ("manager", "mirror", "push", "serve", "demo", "api")


def layer_of(module: str) -> int:
    parts = module.split(".")[1:]  # drop "pdo_hub"
    if not parts:
        return 0  # the package root re-exports everything
    head = parts[0]
    if head in ("cli", "__main__"):
        return 1
    if head in WORKFLOWS or parts[:2] == ["core", "base_model"]:
        return 2  # core.base_model is the seed's import path for the model manager
    return {"hub": 3, "cache": 4, "optimizers": 5, "core": 6}.get(head, 2)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(dotted: str, root: Path = PACKAGE) -> bool:
    path = root.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = PACKAGE) -> list[str]:
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from pkg import sub" imports the submodule, not the package's names
                submodule = f"{target}.{alias.name}"
                found.append(submodule if is_module(submodule, root) else target)
    return [m for m in found if m == "pdo_hub" or m.startswith("pdo_hub.")]


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import in `root` (a `pdo_hub` folder) that points from a lower layer to a higher one."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        for target in imported_modules(path, root):
            if layer_of(target) < layer_of(source) and layer_of(target) != 0:
                found.append(f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})")
            if layer_of(target) == 0 and layer_of(source) != 0 and target == "pdo_hub" and path.name != "__init__.py":
                # "from pdo_hub import X" inside the package pulls in every layer
                found.append(f"{source} imports the package root")
    return found


def test_no_lower_layer_imports_a_higher_one():
    found = violations()
    assert not found, "\n".join(found)


def test_the_checker_sees_violations(tmp_path):
    assert layer_of("pdo_hub.core.config") > layer_of("pdo_hub.optimizers.optimizer") > layer_of("pdo_hub.cache.store")
    assert layer_of("pdo_hub.cache") > layer_of("pdo_hub.hub.loader") > layer_of("pdo_hub.manager") > layer_of("pdo_hub.cli")
    assert layer_of("pdo_hub.core.base_model") == layer_of("pdo_hub.manager")
    # A fake package with one violation of each kind the scanner must catch, and allowed imports beside them.
    files = {
        "__init__.py": "from pdo_hub.cli import main\n",                      # the root may re-export anything
        "cli/__init__.py": "from pdo_hub.hub import card\nfrom ..core import errors\n",  # downwards: fine
        "hub/__init__.py": "", "hub/card.py": "from pdo_hub.cache import store\n",
        "cache/__init__.py": "", "cache/store.py": "from ..optimizers import recipe\n",
        "optimizers/__init__.py": "", "optimizers/recipe.py": "import pdo_hub.core.errors\n",
        "core/__init__.py": "", "core/errors.py": "",
        "core/config.py": "from ..optimizers.recipe import Recipe\n",         # relative, upwards
        "core/sizes.py": "import pdo_hub.hub.card\n",                          # absolute, upwards
        "optimizers/storage.py": "from pdo_hub import cli\n",                  # a submodule of a higher layer
        "cache/keys.py": "from pdo_hub import PostDownloadOptimizationConfig\n",  # the package root
    }
    root = tmp_path / "pdo_hub"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert sorted(violations(root)) == [
        "pdo_hub.cache.keys imports the package root",
        "pdo_hub.core.config (layer 6) imports pdo_hub.optimizers.recipe (layer 5)",
        "pdo_hub.core.sizes (layer 6) imports pdo_hub.hub.card (layer 3)",
        "pdo_hub.optimizers.storage (layer 5) imports pdo_hub.cli (layer 1)",
    ]
