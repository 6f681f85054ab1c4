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


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> list[str]:
    name = module_name(path)
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
                found.append(submodule if is_module(submodule) else target)
    return [m for m in found if m == "pdo_hub" or m.startswith("pdo_hub.")]


def test_no_lower_layer_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            if layer_of(target) < layer_of(source) and layer_of(target) != 0:
                violations.append(f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})")
            if layer_of(target) == 0 and layer_of(source) != 0 and target == "pdo_hub" and path.name != "__init__.py":
                # "from pdo_hub import X" inside the package pulls in every layer
                violations.append(f"{source} imports the package root")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_violations():
    assert layer_of("pdo_hub.core.config") > layer_of("pdo_hub.optimizers.optimizer") > layer_of("pdo_hub.cache.store")
    assert layer_of("pdo_hub.cache") > layer_of("pdo_hub.hub.loader") > layer_of("pdo_hub.manager") > layer_of("pdo_hub.cli")
    assert layer_of("pdo_hub.core.base_model") == layer_of("pdo_hub.manager")
