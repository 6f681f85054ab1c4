"""Model size as pdo-hub reports it: the bytes of the serialized safetensors file."""

from __future__ import annotations

import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from ..core.tensor_codec import encode_state_dict

MB = 1024 * 1024  # the seed's MB (ResNet-18: 44.7 MB) and torchvision's file_size are binary megabytes


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors alone (cheap; for budgets)."""
    tensors, _ = encode_state_dict(model.state_dict())
    return sum(t.numel() * t.element_size() for t in tensors.values())


def serialized_bytes(model: nn.Module) -> int:
    """Exact size of the safetensors file `save_optimized` would write for the weights."""
    from .storage import file_payload  # storage needs the registry, which loads the methods that use sizing

    tensors, metadata = file_payload(model)
    return len(safetensors_bytes(tensors, metadata=metadata))
