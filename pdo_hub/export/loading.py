"""`load_exported(folder)`: load a folder in any format pdo-hub writes, with the runtime that format is for.

- pdo-hub's own format (`pdo_recipe.json`): rebuilt by pdo-hub (`read_variant`);
- the stock-transformers format (`pdo_export.json` says `transformers-torchao`): by transformers itself;
- ONNX (`pdo_export.json` says `onnx`): an ONNX Runtime session wrapped as a module, called like the
  PyTorch model (keyword text inputs or one image tensor), returning the main output tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from pdo_hub.core.errors import ExportError
from pdo_hub.hub.card import EXPORT_RECORD, TRANSFORMERS_FORMAT
from pdo_hub.hub.onnx_runtime import OnnxRuntimeModel


def load_exported(folder: str | os.PathLike[str]) -> nn.Module:
    """The model in `folder`, whatever format pdo-hub wrote it in (see the module docstring).

    Raises:
        ExportError: the folder holds none of pdo-hub's formats, or a format this version does not know.
    """
    folder = Path(folder).expanduser()
    if (folder / "pdo_recipe.json").is_file():
        from pdo_hub.export._variant import read_variant

        return read_variant(folder).model
    record_path = folder / EXPORT_RECORD
    if not record_path.is_file():
        raise ExportError(f"{folder} holds no pdo-hub model (neither pdo_recipe.json nor {EXPORT_RECORD}).")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    kind = record.get("format") if isinstance(record, dict) else None
    if kind == TRANSFORMERS_FORMAT:
        from pdo_hub.hub import transformers_models

        source = json.loads((folder / "pdo_source.json").read_text(encoding="utf-8"))
        auto_cls = transformers_models.auto_class_named((source.get("loader") or {}).get("auto_class", "AutoModel"))
        model = auto_cls.from_pretrained(str(folder), use_safetensors=True).eval()  # never a pickle
        model.pdo_export = record
        return model
    if kind == "onnx":
        name = record.get("file_name")
        if not isinstance(name, str) or "/" in name or not (folder / name).is_file():
            raise ExportError(f"{record_path} names ONNX file {name!r}, which is not in {folder}.")
        return OnnxRuntimeModel(folder / name, record)
    raise ExportError(f"{record_path} names format {kind!r}; this pdo-hub loads 'pdo', {TRANSFORMERS_FORMAT!r} and 'onnx'.")
