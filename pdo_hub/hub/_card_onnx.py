"""The parts of a model card that differ for a variant pushed as ONNX (`pdo-hub push --format onnx`).

The Hub lists ONNX repos under the `onnx` library (Optimum's ONNX exports and plain `model.onnx`
repos both show it), so the card says `library_name: onnx` and tags `onnx` / `onnxruntime`. The body
says which file is the model, how each audience loads it (plain onnxruntime, Optimum's ORTModel,
pdo-hub) and the parity measured at export: ONNX Runtime against the PyTorch variant it came from.
"""

from __future__ import annotations

from typing import Any, Mapping

from huggingface_hub import EvalResult

ONNX_FORMAT = "onnx"
LIBRARY_NAME = "onnx"
TAGS = ("onnx", "onnxruntime")
# Optimum's ORTModel class for each Auto class whose ONNX output Optimum reads under the name pdo-hub
# exports (`last_hidden_state`); other heads are exported with that output name too, which Optimum's
# task classes do not look for, so their cards show no Optimum snippet.
_OPTIMUM_CLASSES = {"AutoModel": "ORTModelForFeatureExtraction"}


def is_onnx(export: Mapping[str, Any]) -> bool:
    return export.get("format") == ONNX_FORMAT


def tags(export: Mapping[str, Any]) -> list[str]:
    return [*TAGS, *(["int8"] if export.get("scheme") not in (None, "float") else [])]


def results(export: Mapping[str, Any], task: str | None) -> list[EvalResult]:
    """The parity of the ONNX model against the PyTorch variant, as `model-index` entries."""
    parity = export.get("parity") or {}
    metrics = [("cosine_similarity", "ONNX Runtime output cosine vs the PyTorch variant", parity.get("output_cosine")),
               ("accuracy", "ONNX Runtime top-1 agreement with the PyTorch variant", parity.get("top1_agreement")),
               ("speedup", "ONNX Runtime speed vs the PyTorch variant", parity.get("onnxruntime_speed_vs_pytorch"))]
    common = {"task_type": task or "other", "dataset_type": "pdo-hub-onnx-parity",
              "dataset_name": f"ONNX parity check ({parity.get('samples', 'no')} held-out inputs)"}
    return [EvalResult(metric_type=kind, metric_name=name, metric_value=float(value), **common)
            for kind, name, value in metrics if isinstance(value, (int, float)) and not isinstance(value, bool)]


def published(pushed_as: str, export: Mapping[str, Any], table) -> list[str]:
    """What the repo holds and the parity measured when it was exported."""
    parity = export.get("parity") or {}
    latency = parity.get("latency_ms") or {}
    rows = [["output cosine vs the PyTorch variant", parity.get("output_cosine")],
            ["largest absolute difference", parity.get("max_abs_diff")],
            *([["top-1 agreement", parity["top1_agreement"]]] if "top1_agreement" in parity else []),
            ["latency, PyTorch variant (ms)", latency.get("pytorch_variant")],
            ["latency, ONNX Runtime (ms)", latency.get("onnxruntime")],
            ["ONNX Runtime speed / PyTorch speed", parity.get("onnxruntime_speed_vs_pytorch")],
            ["held-out inputs", parity.get("samples")], ["threads", parity.get("threads")]]
    kept = export.get("float_layers") or []
    scheme = export.get("scheme")
    what = ("the variant's float structure (it had no int8 layers)" if scheme == "float" else
            f"{scheme} int8 by ONNX Runtime's quantizer; `model.onnx` is its float structure")
    return [
        f"Published as `{pushed_as}` with `pdo-hub push --format onnx`: ONNX files in Optimum's layout, run by "
        f"ONNX Runtime, no PyTorch or pdo-hub needed. `{export.get('file_name')}` is the model ({what}, pruned "
        "widths and factorized layers kept); `ort_config.json` says how it was quantized; `pdo_export.json` holds "
        "the parity report below.",
        "",
        "### ONNX Runtime vs the PyTorch variant (measured when exported, side by side)",
        *table(["measure", "value"], rows),
        "",
        *([f"Layers kept float (ONNX Runtime has no per-token dynamic int8): {', '.join(kept)}.", ""] if kept else []),
    ]


def how_to_load(source: Mapping[str, Any], pushed_as: str | None, export: Mapping[str, Any]) -> list[str]:
    repo = pushed_as or "<this folder>"
    name = export.get("file_name", "model_quantized.onnx")
    loader = source.get("loader") or {}
    lines = [
        "With plain onnxruntime (`pip install onnxruntime huggingface_hub`):",
        "```python",
        "import onnxruntime as ort",
        "from huggingface_hub import hf_hub_download",
        f"session = ort.InferenceSession(hf_hub_download({repo!r}, {name!r}))",
        "outputs = session.run(None, feeds)  # feeds: {input name: numpy array}; names in session.get_inputs()",
        "```",
    ]
    optimum = _OPTIMUM_CLASSES.get(loader.get("auto_class")) if loader.get("library") == "transformers" else None
    if optimum:
        lines += [
            "With Optimum (`pip install optimum[onnxruntime]`), which reads `config.json` and the tokenizer beside it:",
            "```python",
            f"from optimum.onnxruntime import {optimum}",
            f"model = {optimum}.from_pretrained({repo!r}, file_name={name!r})",
            "```",
        ]
    lines += [
        "With pdo-hub, the repo loads as an ONNX Runtime session wrapped as a module, called like the PyTorch model "
        "(keyword text inputs or one image tensor) and returning the main output tensor:",
        "```python",
        "import pdo_hub",
        f"model = pdo_hub.from_pretrained({repo!r})  # downloads {name} and the JSON files only",
        "```",
    ]
    return lines
