"""The safetensors codec: every state entry comes back with its own values, aliases only where memory is shared."""

from __future__ import annotations

import torch

from pdo_hub.core.tensor_codec import decode_state_dict, encode_state_dict


def _channels_last_weight(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-64, 65, (32, 16, 3, 3), generator=generator).float() * 0.01
    scales, zero_points = torch.rand(32, generator=generator) * 0.01 + 0.005, torch.zeros(32, dtype=torch.long)
    quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
    return quantized.contiguous(memory_format=torch.channels_last)  # how FBGEMM unpacks a conv's weights


def test_channels_last_quantized_weights_of_one_shape_each_keep_their_values():
    """`int_repr()` of a channels-last tensor is a temporary: one freed and the next allocated in its place
    must not be taken for the same memory (which stored every such layer as an alias of the first)."""
    state = {f"layer{i}.weight": _channels_last_weight(i) for i in range(6)}
    tensors, spec = encode_state_dict(state)
    decoded = decode_state_dict(tensors, spec)
    for key, value in state.items():
        assert torch.equal(decoded[key].int_repr(), value.int_repr()), key
        assert torch.equal(decoded[key].q_per_channel_scales(), value.q_per_channel_scales()), key
    assert len({name for name in tensors if name.endswith(".weight")}) == 6


def test_views_of_one_tensor_are_stored_once():
    shared = torch.arange(12.0)
    tensors, spec = encode_state_dict({"a": shared, "b": shared, "c": shared.view(3, 4)})
    decoded = decode_state_dict(tensors, spec)
    assert len(tensors) == 2 and torch.equal(decoded["b"], shared) and torch.equal(decoded["c"], shared.view(3, 4))
