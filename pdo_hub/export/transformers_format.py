"""The stock-transformers format: a folder `transformers.AutoModel.from_pretrained` loads with torchao.

The variant's effective weights go back into the original architecture (`_dense`); the Linear layers
pdo-hub quantized become torchao `Int8DynamicActivationInt8WeightConfig(version=2)` (per-row int8
weights, per-token int8 activations: pdo-hub's `dynamic` scheme), int8 embedding rows become
`IntxWeightOnlyConfig(int8, PerAxis(0))`, and layers pdo-hub kept in float stay float. The weights are
written the way transformers' torchao integration writes them (torchao's `flatten_tensor_state_dict`
into safetensors, the layout in the metadata) and `config.json` carries `quantization_config`
(`quant_method: torchao`), so stock `from_pretrained` rebuilds the int8 tensors from safetensors, no
pickle, no pdo-hub. A variant that is not quantized is written as plain float weights.

Why the files are written here rather than by transformers' quantize-on-load + `save_pretrained`: with
an `FqnToConfig` (needed to give embeddings their own config) transformers 5.24 also quantizes every
Linear's bias, which its own loader then cannot run (`aten.add_` on an Int8Tensor).

Pruned widths have no place in the original config, so a pruned variant is refused (ExportError);
ONNX export keeps them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdo_hub.core.errors import ExportError
from pdo_hub.export._dense import densify_into
from pdo_hub.export._measure import cosine, interleaved_latency_ms, library_versions, real_tokens
from pdo_hub.export._variant import Variant, original_skeleton
from pdo_hub.hub.card import EXPORT_RECORD, TRANSFORMERS_FORMAT

logger = logging.getLogger(__name__)

FORMAT = TRANSFORMERS_FORMAT
# pdo-hub's own files of a variant that a stock-format folder must not carry (they describe other weights).
_PDO_ONLY = {"model.safetensors", "pdo_recipe.json", "config.json", "README.md", "pdo_manifest.json",
             ".pdo_access"}


def write_transformers_format(variant: Variant, out: str | Path, *, measure: bool = True) -> dict[str, Any]:
    """Write `variant` into `out` in the stock-transformers format and return its export record.

    Args:
        variant: A transformers variant (`read_variant`).
        out: Folder to write (created; files of the same names are replaced).
        measure: Load the written folder with stock transformers and compare it with pdo-hub's own
            model (output cosine, latency side by side); the numbers go into the record and the card.

    Raises:
        ExportError: not a transformers model, a pruned or restructured variant, or torchao missing.
    """
    if not variant.is_transformers:
        raise ExportError("The transformers format is for transformers models; this variant is a torchvision model. "
                          "Use `pdo-hub export SOURCE --format onnx` for ONNX Runtime.")
    _require_torchao()
    from torchao.quantization import FqnToConfig, quantize_
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dense = original_skeleton(variant.folder, variant.source)
    kinds = densify_into(variant.model, dense)
    dense.eval()
    plan = _quantization_plan(dense, kinds) if variant.quantized else {}
    for path, config in plan.items():
        quantize_(dense, config, filter_fn=lambda module, fqn, path=path: fqn == path)
    tensors, metadata = _flat_state(dense)
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    if plan:
        from transformers import TorchAoConfig

        dense.config.quantization_config = TorchAoConfig(FqnToConfig(dict(sorted(plan.items()))),
                                                          include_input_output_embeddings=True)
    dense.config.save_pretrained(str(out))
    _copy_small_files(variant.folder, out)
    record = {
        "format": FORMAT,
        "quantized_linear": sorted(p for p, c in plan.items() if not _is_embedding_config(c)),
        "quantized_embeddings": sorted(p for p, c in plan.items() if _is_embedding_config(c)),
        "float_modules": sorted(p for p, kind in kinds.items() if p not in plan),
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "libraries": library_versions("torch", "transformers", "torchao"),
    }
    if measure:
        record["measured"] = compare_with_variant(variant, out)
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    logger.info("Wrote %s (%s) to %s.", variant.source.get("source_id"), FORMAT, out)
    return record


def compare_with_variant(variant: Variant, folder: Path, samples: int = 8) -> dict[str, Any]:
    """Stock transformers' load of `folder` against pdo-hub's own model: output cosine and latency."""
    from transformers import AutoTokenizer

    from pdo_hub.hub import examples, transformers_models
    from pdo_hub.optimizers.inputs import output_tensor

    auto_cls = transformers_models.auto_class_named(variant.source["loader"]["auto_class"])
    stock = auto_cls.from_pretrained(str(folder), use_safetensors=True).eval()
    inputs = examples.text_inputs(AutoTokenizer.from_pretrained(str(folder)), stock, samples)

    def run(model: nn.Module):
        return lambda batch: output_tensor(model(**batch))

    with torch.inference_mode():
        own = [real_tokens(run(variant.model)(batch).float(), batch) for batch in inputs]
        theirs = [real_tokens(run(stock)(batch).float(), batch) for batch in inputs]
    latency = interleaved_latency_ms({"pdo_hub": run(variant.model), "stock_transformers": run(stock)}, inputs[0])
    return {
        "output_cosine_vs_pdo_hub": round(cosine(own, theirs), 6),
        "latency_ms": latency,
        "stock_speed_vs_pdo_hub": round(latency["pdo_hub"] / latency["stock_transformers"], 3),
        "inputs": f"{samples} built-in sentences, batch 1, {examples.MAX_TOKENS} tokens (cosine over real tokens)",
        "threads": torch.get_num_threads(),
        "note": "stock transformers runs torchao's int8 eagerly; torch.compile(model) is what makes it fast",
    }


def _quantization_plan(model: nn.Module, kinds: dict[str, str]) -> dict[str, Any]:
    """{module path: torchao config} for the layers pdo-hub stored in int8 (read as `probed`)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, IntxWeightOnlyConfig, PerAxis

    shared = _shared_weights(model)
    plan: dict[str, Any] = {}
    for path, kind in kinds.items():
        module = model.get_submodule(path)
        if kind != "probed" or id(module.weight) in shared:
            continue  # kept in float by pdo-hub, or tied to another layer (quantizing one would untie them)
        if isinstance(module, nn.Embedding):
            plan[path] = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0), version=2)
        else:
            plan[path] = Int8DynamicActivationInt8WeightConfig(version=2)
    return plan


def _is_embedding_config(config: Any) -> bool:
    return type(config).__name__ == "IntxWeightOnlyConfig"


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        seen[id(parameter)] = seen.get(id(parameter), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _flat_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict as plain tensors plus torchao's layout metadata; tied copies dropped (config re-ties them)."""
    state, kept = {}, set()
    for name, tensor in model.state_dict().items():
        identity = id(tensor) if type(tensor) is not torch.Tensor else (tensor.data_ptr(), tuple(tensor.shape))
        if identity in kept:
            continue
        kept.add(identity)
        state[name] = tensor
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(state)
    return {name: tensor.contiguous() for name, tensor in tensors.items()}, {**metadata, "format": "pt"}


def _copy_small_files(folder: Path, out: Path) -> None:
    """Tokenizer files, the source record and the report (what a user of the model needs besides weights)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in _PDO_ONLY and not path.name.startswith("."):
            shutil.copyfile(path, out / path.name)
        elif path.is_dir() and not path.name.startswith("."):  # sentence-transformers modules (1_Pooling/)
            shutil.copytree(path, out / path.name, dirs_exist_ok=True)


def _require_torchao() -> None:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError as err:
        raise ExportError("The transformers format needs torchao (>= 0.16): pip install 'pdo-hub[export]'.") from err
