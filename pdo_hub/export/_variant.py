"""Reading a variant folder (a cache entry, or a published repo's files) back into its PyTorch model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from pdo_hub.core.errors import ExportError
from pdo_hub.hub import skeleton, transformers_models, variants
from pdo_hub.hub.flow import SOURCE_NAME
from pdo_hub.optimizers import load_optimized
from pdo_hub.optimizers.storage import REPORT_NAME


@dataclass
class Variant:
    """A pdo-hub variant: its folder, source record, report and (rebuilt) model."""

    folder: Path
    source: dict[str, Any]
    report: dict[str, Any]
    model: nn.Module

    @property
    def is_transformers(self) -> bool:
        return self.source["loader"]["library"] == "transformers"

    @property
    def quantized(self) -> bool:
        return any(str(label).startswith("quantization") for label in self.report.get("optimizations_applied") or [])


def read_variant(folder: str | os.PathLike[str]) -> Variant:
    """The variant in `folder` (pdo-hub's own format), rebuilt without network.

    Raises:
        ExportError: the folder is not a pdo-hub variant.
        RecipeError / StorageError: its records or weights are damaged.
    """
    folder = Path(folder).expanduser()
    for name in ("model.safetensors", "pdo_recipe.json", SOURCE_NAME, REPORT_NAME):
        if not (folder / name).is_file():
            raise ExportError(f"{folder} is not a pdo-hub variant ({name} is missing): pass a cache entry "
                              "(model.pdo_cache_path) or a SOURCE that pdo-hub optimizes.")
    source = variants.check_source(json.loads((folder / SOURCE_NAME).read_text(encoding="utf-8")), str(folder))
    report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    return Variant(folder, source, report, load_optimized(folder, original_skeleton(folder, source), assign=True))


def original_skeleton(folder: Path, source: dict[str, Any]) -> nn.Module:
    """A fresh instance of the variant's original architecture (weights not initialised)."""
    loader = source["loader"]
    if loader["library"] == "transformers":
        from transformers import AutoConfig

        auto_cls = transformers_models.auto_class_named(loader["auto_class"])
        return skeleton.transformers_skeleton(auto_cls, AutoConfig.from_pretrained(str(folder)))
    import torchvision.models

    name = loader.get("builder") or str(loader.get("architecture", "")).removeprefix("torchvision:")
    return skeleton.builder_skeleton(torchvision.models.get_model_builder(name), **loader.get("kwargs", {}))
