"""Variants in other runtimes' formats: stock transformers (torchao int8) and ONNX (ONNX Runtime).

`read_variant(folder)` rebuilds a cached or published pdo-hub variant; `write_transformers_format`
writes the folder stock `transformers.AutoModel.from_pretrained` loads with torchao (what
`pdo-hub push --format transformers` publishes); `export_onnx` writes an ONNX Runtime model with a
parity report (`pdo-hub export --format onnx`).
"""

from pdo_hub.export._variant import Variant, read_variant
from pdo_hub.export.loading import OnnxRuntimeModel, load_exported
from pdo_hub.export.transformers_format import EXPORT_RECORD, write_transformers_format

__all__ = ["EXPORT_RECORD", "OnnxRuntimeModel", "Variant", "load_exported", "read_variant", "write_transformers_format"]
