"""`pdo-hub export --format onnx`: the variant as an ONNX Runtime model, with a parity report.

The variant's float structure (`_structure`: pruned widths, factorized layers, folded norms kept) is
exported with torch's TorchScript-based ONNX exporter (opset 17; its graphs are the ones ONNX Runtime's
transformer fusions and quantization tools expect), then quantized by ONNX Runtime the way the variant
was:
- `static` (and `fx`/`qat`) variants: QDQ int8, per-channel weights, activations calibrated on the
  variant's calibration inputs, after `quant_pre_process` (shape inference and BN folding; without it
  the same QDQ model ran ~5x slower here);
- `dynamic` variants: dynamic int8 (per-channel `MatMulInteger`); ONNX Runtime has only per-tensor
  dynamic activations, so the layers most sensitive to them stay float (`_float_layers`: measured on the
  calibration inputs, within a share of the variant's accuracy threshold).
  BERT-family encoders are exported with eager attention (transformers' SDPA path gives a graph ORT's
  fuser does not recognise) and first go through ONNX Runtime's transformer fusion (whole attention
  layers, embeddings, skip layer norms, GELU), as ORT's own dynamic int8 does; the fused attention
  quantizes its q/k/v projections together, so those stay float only when all three do. Each fused
  attention gets its own head count: after `prune` layers keep different numbers of whole heads.
Files follow Optimum's ONNX layout: `model.onnx` (float structure), `model_quantized.onnx` (int8),
`config.json` and tokenizer files for transformers models, `ort_config.json` (how it was quantized),
and `pdo_export.json` (parity against the PyTorch variant: output cosine, largest difference, top-1
agreement for classifiers, latency side by side). ORT's quantization tools write temp files into the
working directory, so they run inside a temporary one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.core.errors import ExportError
from pdo_hub.export._float_layers import float_layers
from pdo_hub.export._measure import cosine, interleaved_latency_ms, library_versions, real_tokens
from pdo_hub.export._structure import float_structure, quantization_records
from pdo_hub.export._variant import Variant
from pdo_hub.hub.card import EXPORT_RECORD
from pdo_hub.hub.onnx_runtime import ort_session, require_onnx  # noqa: F401 (ort_session: part of this module's API)

logger = logging.getLogger(__name__)

FORMAT = "onnx"
FLOAT_NAME, QUANTIZED_NAME = "model.onnx", "model_quantized.onnx"
OPSET = 17
_STATIC_METHODS = {"static", "fx", "qat"}
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Files of a transformers variant an ONNX folder keeps (Optimum's ORTModel reads config.json and the tokenizer).
_SKIP = {"model.safetensors", "pdo_recipe.json", "README.md", "pareto.png", "pdo_manifest.json", ".pdo_access"}


class _LastHidden(nn.Module):
    """Positional inputs in, the main output tensor out: what the exporter traces for a transformers model."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        from pdo_hub.optimizers.inputs import output_tensor

        return output_tensor(self.model(**dict(zip(self.names, args))))


def export_onnx(variant: Variant, out: str | os.PathLike[str], inputs: Sequence[Any], *,
                held_out: Sequence[Any] | None = None, skeleton: nn.Module | None = None) -> dict[str, Any]:
    """Export `variant` to `out` and return the export record (also written to `pdo_export.json`).

    Args:
        variant: The variant (`read_variant`).
        out: Output folder (created).
        inputs: Batch-1 model inputs (tensors, or dicts for transformers): the variant's calibration
            inputs; the first is the tracing example.
        held_out: Inputs for the parity check (default: the last quarter of `inputs`).
        skeleton: A fresh instance of the original architecture, for a model pdo-hub cannot rebuild by name.

    Raises:
        ExportError: onnx/onnxruntime missing, or the variant's structure cannot be exported.
    """
    require_onnx()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not inputs:
        raise ExportError("ONNX export needs at least one example input of the model.")
    held_out = list(held_out or inputs[-max(1, len(inputs) // 4):])
    float_model = float_structure(variant, skeleton)
    if hasattr(float_model, "set_attn_implementation"):
        # transformers' SDPA attention exports a graph ONNX Runtime's fuser does not recognise (no fused
        # attention, measured with transformers 5.24 / ORT 1.32); eager attention's fuses whole.
        float_model.set_attn_implementation("eager")
    names = _input_names(inputs[0])
    _export(float_model, inputs[0], names, out / FLOAT_NAME)
    methods = {r["method"] for r in quantization_records(variant)}
    scheme = "static" if methods & _STATIC_METHODS else "dynamic" if "dynamic" in methods else None
    excluded: list[str] = []
    if scheme == "static":
        _quantize_static(out / FLOAT_NAME, out / QUANTIZED_NAME, [_feed(x, names) for x in inputs])
    elif scheme == "dynamic":
        threshold = (variant.report.get("config") or {}).get("preserve_accuracy_threshold",
                                                             PostDownloadOptimizationConfig.preserve_accuracy_threshold)
        excluded = float_layers(quantization_records(variant), float_model, inputs, float(threshold))
        fusion = _transformer_fusion(variant.model)
        excluded = _quantize_dynamic(out / FLOAT_NAME, out / QUANTIZED_NAME, excluded, fusion)
    shipped = out / (QUANTIZED_NAME if scheme else FLOAT_NAME)
    if variant.is_transformers:
        _copy_small_files(variant.folder, out)
    ort_config = {"format": "onnx", "opset": OPSET, "file_name": shipped.name, "input_names": list(names),
                  "quantization": _quantization_config(scheme, excluded)}
    (out / "ort_config.json").write_text(json.dumps(ort_config, indent=2, sort_keys=True), encoding="utf-8")
    record = {"format": FORMAT, "file_name": shipped.name, "scheme": scheme or "float", "float_layers": excluded,
              "files": {p.name: p.stat().st_size for p in sorted(out.glob("*.onnx"))},
              "parity": parity(variant.model, shipped, names, held_out), "libraries": library_versions("torch", "onnx", "onnxruntime")}
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    logger.info("Exported %s to %s (%s).", variant.source.get("source_id"), shipped, record["scheme"])
    return record


def parity(model: nn.Module, onnx_path: Path, names: Sequence[str], held_out: Sequence[Any]) -> dict[str, Any]:
    """The ONNX model against the PyTorch variant on `held_out`: cosine, max |diff|, top-1 agreement, latency."""
    from pdo_hub.optimizers.inputs import call_model, output_tensor

    session = ort_session(onnx_path)
    with torch.inference_mode():
        ours = [output_tensor(call_model(model, x)).float() for x in held_out]
    theirs = [torch.from_numpy(session.run(None, _feed(x, names))[0]).float() for x in held_out]
    ours, theirs = zip(*[(real_tokens(a, x), real_tokens(b, x)) for a, b, x in zip(ours, theirs, held_out)])
    result = {"samples": len(held_out), "output_cosine": round(cosine(ours, theirs), 6),
              "max_abs_diff": round(max(float((a - b).abs().max()) for a, b in zip(ours, theirs)), 6)}
    if ours[0].dim() == 2 and not isinstance(held_out[0], dict):  # image classifier logits: same class picked?
        same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ours, theirs))
        result["top1_agreement"] = round(same / sum(a.shape[0] for a in ours), 6)
    latency = interleaved_latency_ms({
        "pytorch_variant": lambda x: call_model(model, x),
        "onnxruntime": lambda x: session.run(None, _feed(x, names)),
    }, held_out[0])
    result["latency_ms"] = latency
    result["onnxruntime_speed_vs_pytorch"] = round(latency["pytorch_variant"] / latency["onnxruntime"], 3)
    result["threads"] = torch.get_num_threads()
    return result


def _input_names(example: Any) -> list[str]:
    if isinstance(example, dict):
        return [name for name in _TEXT_INPUTS if name in example] + sorted(set(example) - set(_TEXT_INPUTS))
    return ["pixel_values" if isinstance(example, torch.Tensor) and example.dim() == 4 else "input"]


def _feed(example: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(example, dict):
        return {name: example[name].numpy() for name in names}
    return {names[0]: example.numpy()}


def _export(model: nn.Module, example: Any, names: list[str], path: Path) -> None:
    text = isinstance(example, dict)
    module = _LastHidden(model, names) if text else model
    args = tuple(example[n] for n in names) if text else (example,)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names} if text else {names[0]: {0: "batch_size"}}
    output = "last_hidden_state" if text else "logits"
    axes[output] = {0: "batch_size", 1: "sequence_length"} if text else {0: "batch_size"}
    with torch.no_grad(), _in_temp_dir(), _quiet():
        try:
            torch.onnx.export(module, args, str(path), input_names=names, output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; each means "cannot export"
            raise ExportError(f"torch.onnx.export failed on the variant's float structure ({type(err).__name__}: "
                              f"{str(err)[:300]}).") from err


def _quantize_static(source: Path, target: Path, feeds: list[dict[str, Any]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    with _in_temp_dir() as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _quantize_dynamic(source: Path, target: Path, float_layers: list[str], fusion: dict[str, Any] | None) -> list[str]:
    """Dynamic int8 of `source` into `target`; returns the module paths that stayed float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _in_temp_dir() as tmp, _quiet():
        if fusion is not None:
            from onnxruntime.transformers.optimizer import optimize_model

            fused = Path(tmp) / "fused.onnx"
            optimizer = optimize_model(str(source), **fusion)
            _heads_by_width(optimizer.model, fusion["hidden_size"] // fusion["num_heads"])
            optimizer.save_model_to_file(str(fused))
            source = fused
        graph = onnx.load(str(source), load_external_data=False).graph
        excluded = [node.name for node in graph.node if _module_path(node.name) in set(float_layers)]
        # ORT's fused ops defeat its type inference: declare float as the default tensor type.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=excluded, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return sorted({_module_path(name) for name in excluded})


def _transformer_fusion(model: nn.Module) -> dict[str, Any] | None:
    """ONNX Runtime's fusion settings for a BERT-family encoder, else None (no fusion)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in ("bert", "roberta", "xlm-roberta", "camembert"):
        return None
    return {"model_type": "bert", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size}


def _heads_by_width(model: Any, head_size: int) -> None:
    """Set each fused Attention node's head count from its own projection width.

    The fuser gives every layer the config's head count, since transformers' reshape leaves the count
    open (-1); a layer that `prune` cut to fewer whole heads would then split its narrower projection
    into heads of the wrong size. Its width over the model's head size is its own count.
    """
    from onnx import helper

    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Attention" or node.input[1] not in weights:
            continue
        attributes = {a.name: a for a in node.attribute}
        sizes = helper.get_attribute_value(attributes["qkv_hidden_sizes"]) if "qkv_hidden_sizes" in attributes else None
        width = int(sizes[0]) if sizes else int(weights[node.input[1]].dims[1]) // 3
        if width % head_size:
            raise ExportError(f"Attention {node.name!r} projects to {width} features, not whole heads of {head_size}.")
        attributes["num_heads"].i = width // head_size


def _module_path(node_name: str) -> str:
    """'/model/encoder/layer.0/output/dense/MatMul' -> 'encoder.layer.0.output.dense' (the exporter's scopes)."""
    scope = node_name.strip("/").rsplit("/", 1)[0].replace("/", ".")
    return scope.removeprefix("model.")


def _quantization_config(scheme: str | None, excluded: list[str]) -> dict[str, Any] | None:
    if scheme is None:
        return None
    return {"is_static": scheme == "static", "format": "QDQ" if scheme == "static" else "QOperator",
            "per_channel": True, "weights_dtype": "QInt8", "activations_dtype": "QUInt8",
            "calibration": "the variant's calibration inputs" if scheme == "static" else None,
            "nodes_kept_float": excluded}


def _copy_small_files(folder: Path, out: Path) -> None:
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in _SKIP and not path.name.startswith("."):
            shutil.copyfile(path, out / path.name)


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[str]:
    """ORT's quantization tools drop temp files into the working directory: give them a throwaway one."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pdo-onnx-") as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
