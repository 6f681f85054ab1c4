"""Turn a module's state dict into plain tensors + JSON, and back, so it can live in safetensors.

torch.ao quantized modules keep packed parameters in their state dict: quantized tensors, tuples and
dtypes, which safetensors refuses. Here each quantized tensor becomes its int representation plus
scale / zero-point tensors (the layout compressed-tensors uses: `x`, `x.scale`, `x.zero_point`), tuples
become indexed entries, and non-tensor values become JSON. Tensors that share memory (tied weights)
are stored once and re-pointed on decode. Nothing is ever pickled.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch

from .errors import StorageError

# A memory view's identity -> (the name it is stored under, the tensor itself, kept alive: `_store`).
_Seen = dict[tuple, tuple[str, torch.Tensor]]
_SEP = "#"  # never appears in module paths, so encoded names cannot collide with real keys
_QDTYPES = {"qint8": torch.qint8, "quint8": torch.quint8, "qint32": torch.qint32}
_DTYPES = {str(dtype): dtype for dtype in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int32,
    torch.int64, torch.bool, torch.qint8, torch.quint8, torch.qint32,
)}


def encode_state_dict(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a state dict into safetensors-ready tensors and a JSON-able spec that rebuilds it.

    Returns:
        (tensors, spec): `tensors` maps names to contiguous CPU tensors; `spec` holds, per original key,
        how to rebuild its value, plus the state dict's `_metadata` (module versions, which torch.ao's
        loaders read).
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: _Seen = {}
    entries = {key: _encode_value(key, value, tensors, seen) for key, value in state.items()}
    metadata = getattr(state, "_metadata", None)
    return tensors, {"entries": entries, "module_versions": _jsonable_metadata(metadata)}


def decode_state_dict(tensors: dict[str, torch.Tensor], spec: dict[str, Any]) -> "OrderedDict[str, Any]":
    """Rebuild the state dict written by `encode_state_dict` (module versions included)."""
    state: OrderedDict[str, Any] = OrderedDict()
    try:
        problem = mixed_up_weights(spec["entries"], tensors)
        if problem:
            raise StorageError(problem)
        for key, entry in spec["entries"].items():
            state[key] = _decode_value(entry, tensors)
        versions = spec.get("module_versions")
        if versions is not None:
            state._metadata = OrderedDict((name, dict(value)) for name, value in versions.items())  # type: ignore[attr-defined]
    except KeyError as err:
        raise StorageError(f"The weights file lacks tensor {err} named by its spec: the file is damaged or incomplete.") from err
    except (ArithmeticError, AttributeError, LookupError, RuntimeError, TypeError, ValueError) as err:
        # The spec is JSON from the file: any shape of junk there is a damaged file, not a bug to surface.
        raise StorageError(f"The weights file's spec is malformed ({type(err).__name__}: {err}): the file is damaged.") from err
    return state


def _encode_value(name: str, value: Any, tensors: dict[str, torch.Tensor], seen: _Seen) -> Any:
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            return _encode_quantized(name, value, tensors, seen)
        return {"tensor": _store(name, value, tensors, seen)}
    if isinstance(value, (tuple, list)):
        items = [_encode_value(f"{name}{_SEP}{i}", item, tensors, seen) for i, item in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, torch.ScriptObject):
        return {"script_object": _encode_script_object(name, value, tensors, seen)}
    raise StorageError(
        f"State entry '{name}' has type {type(value).__name__}, which pdo-hub cannot store without pickle. "
        "Register a method whose modules keep plain tensors in their state dict."
    )


def _encode_quantized(name: str, value: torch.Tensor, tensors: dict[str, torch.Tensor], seen: _Seen) -> dict[str, Any]:
    record: dict[str, Any] = {"qdtype": str(value.dtype).replace("torch.", ""), "int_repr": _store(name, value.int_repr(), tensors, seen)}
    if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        record.update(scheme="per_tensor", scale=float(value.q_scale()), zero_point=int(value.q_zero_point()))
    else:
        record.update(
            scheme="per_channel",
            axis=int(value.q_per_channel_axis()),
            scales=_store(f"{name}.scale", value.q_per_channel_scales(), tensors, seen),
            zero_points=_store(f"{name}.zero_point", value.q_per_channel_zero_points(), tensors, seen),
        )
    return {"quantized": record}


def _store(name: str, tensor: torch.Tensor, tensors: dict[str, torch.Tensor], seen: _Seen) -> str:
    """Store once per distinct memory view; a second name for the same view becomes an alias.

    `seen` keeps each view it names alive until the encoding ends: a temporary (`int_repr()` of a
    channels-last quantized weight, copied to a contiguous tensor and then dropped) would otherwise free
    its memory for the next temporary of the same shape, which would then be taken for an alias of it.
    """
    identity = (tensor.device.type, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
    if tensor.numel() and identity in seen:
        return seen[identity][0]
    seen[identity] = (name, tensor)
    tensors[name] = tensor.detach().to("cpu").contiguous()
    return name


def _decode_value(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    (kind, payload), = entry.items()
    if kind == "tensor":
        return tensors[payload]
    if kind == "quantized":
        return _decode_quantized(payload, tensors)
    if kind in ("tuple", "list"):
        items = [_decode_value(item, tensors) for item in payload]
        return tuple(items) if kind == "tuple" else items
    if kind == "dtype":
        if payload not in _DTYPES:
            raise StorageError(f"Unknown dtype '{payload}' in the weights spec.")
        return _DTYPES[payload]
    if kind == "value":
        return payload
    if kind == "size":
        return torch.Size(payload)
    if kind == "script_object":
        return _decode_script_object(payload, tensors)
    raise StorageError(f"Unknown entry kind '{kind}' in the weights spec: it was written by a newer pdo-hub.")


def mixed_up_weights(entries: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Why a file is refused when two quantized entries share int8 values but not their scales; else None.

    Tied weights share both. Before `_store` kept the tensors it named alive, a layer's weights could be
    written as an alias of another layer's of the same shape (its own scales kept): such a file loads
    without error and computes garbage. `decode_state_dict` refuses it as damaged (the cache then
    rebuilds it) and `pdo-hub cache verify` reports it. `tensors` is read only for entries that share
    values, so a lazy mapping over the file keeps this cheap.
    """
    quantizers: dict[str, tuple[str, dict[str, Any]]] = {}
    for path, record in _quantized_records(entries, ""):
        values = record["int_repr"]
        if values not in quantizers:
            quantizers[values] = (path, record)
            continue
        first, other = quantizers[values]
        if not _same_quantizer(other, record, tensors):
            return (f"The weights file stores '{path}' as a copy of the int8 values of '{first}', with other scales: it "
                    "was written by a pdo-hub whose encoder could save one layer's weights in place of another's. "
                    "Optimize the model again (the cache rebuilds such an entry by itself when online).")
    return None


def _quantized_records(value: Any, path: str):
    """(path, record) of every quantized tensor in an encoded entry tree."""
    if isinstance(value, dict):
        if isinstance(value.get("quantized"), dict):
            yield path, value["quantized"]
            return
        for key, item in value.items():
            yield from _quantized_records(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _quantized_records(item, f"{path}[{index}]")


def _same_quantizer(a: dict[str, Any], b: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> bool:
    if a["scheme"] != b["scheme"]:
        return False
    if a["scheme"] == "per_tensor":
        return (a["scale"], a["zero_point"]) == (b["scale"], b["zero_point"])
    return a["axis"] == b["axis"] and all(a[name] == b[name] or torch.equal(tensors[a[name]], tensors[b[name]])
                                          for name in ("scales", "zero_points"))


def _decode_quantized(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    qdtype = _QDTYPES.get(record["qdtype"])
    if qdtype is None:
        raise StorageError(f"Unknown quantized dtype '{record['qdtype']}' in the weights spec.")
    data = tensors[record["int_repr"]]
    if record["scheme"] == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(data, record["scale"], record["zero_point"])
    return torch._make_per_channel_quantized_tensor(
        data, tensors[record["scales"]], tensors[record["zero_points"]], record["axis"]
    )


def _jsonable_metadata(metadata: Any) -> dict[str, dict[str, Any]] | None:
    if metadata is None:
        return None
    return {name: {k: v for k, v in dict(value).items() if isinstance(v, (bool, int, float, str)) or v is None} for name, value in metadata.items()}


# TorchScript objects that torch.ao keeps in quantized RNN state dicts. Only these allow-listed types
# are stored, as their tensors plus a JSON description, and rebuilt through torch's own constructors.
_LINEAR_PACKED = "__torch__.torch.classes.quantized.LinearPackedParamsBase"
_CELL_PARAMS = "__torch__.torch.classes.rnn.CellParamsBase"


def _encode_script_object(name: str, value: torch.ScriptObject, tensors: dict[str, torch.Tensor], seen: _Seen) -> dict[str, Any]:
    kind = value._type().qualified_name()
    state = value.__getstate__()
    if kind == _LINEAR_PACKED:
        weight, bias = state[0]  # state is ((weight, bias), version)
        return {"type": "linear_packed", "weight": _encode_value(f"{name}{_SEP}w", weight, tensors, seen), "bias": _encode_value(f"{name}{_SEP}b", bias, tensors, seen)}
    if kind == _CELL_PARAMS and state[0][0] == "quantized_dynamic":
        _, biases, _, longs, packed = state[0]
        return {
            "type": "cell_params_dynamic",
            "reduce_range": bool(longs[0]) if longs else False,
            "biases": [_encode_value(f"{name}{_SEP}b{i}", bias, tensors, seen) for i, bias in enumerate(biases)],
            "packed": [_encode_script_object(f"{name}{_SEP}p{i}", item, tensors, seen) for i, item in enumerate(packed)],
        }
    raise StorageError(f"State entry '{name}' is a TorchScript object of type {kind}, which pdo-hub cannot store without pickle.")


def _decode_script_object(payload: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.ScriptObject:
    if payload["type"] == "linear_packed":
        return torch.ops.quantized.linear_prepack(_decode_value(payload["weight"], tensors), _decode_value(payload["bias"], tensors))
    if payload["type"] == "cell_params_dynamic":
        w_ih, w_hh = (_decode_script_object(item, tensors) for item in payload["packed"])
        b_ih, b_hh = (_decode_value(item, tensors) for item in payload["biases"])
        return torch.ops.quantized.make_quantized_cell_params_dynamic(w_ih, w_hh, b_ih, b_hh, payload["reduce_range"])
    raise StorageError(f"Unknown TorchScript object type '{payload['type']}' in the weights spec: written by a newer pdo-hub?")
