"""Running an ONNX file pdo-hub exported or downloaded: an ONNX Runtime session wrapped as a module.

It sits with the loaders (`hub`), below `export`: `pdo_hub.from_pretrained` of a repo pushed with
`--format onnx` runs it without importing the exporter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdo_hub.core.errors import ExportError


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'pdo-hub[export]'.") from err


def ort_session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session with the machine's torch thread count (fair side-by-side timing)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(nn.Module):
    """An exported ONNX model run by ONNX Runtime, callable like the PyTorch variant it came from."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        super().__init__()
        self.path, self.pdo_export = path, record
        self.session = ort_session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.input_names, args))
        feeds.update({name: value for name, value in kwargs.items() if name in self.input_names})
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ExportError(f"{self.path.name} needs inputs {self.input_names}; {missing} not given.")
        return torch.from_numpy(self.session.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})[0])
