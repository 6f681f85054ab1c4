"""The safetensors codec: every state entry comes back with its own values, aliases only where memory is shared."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import apply_method, reload_identical

from pdo_hub.core.errors import StorageError
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


class Stage(nn.Module):
    """Four 3x3 convolutions of one shape, as in a ResNet stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.convs = nn.Sequential(*(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()) for _ in range(4)))
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.convs(self.stem(x)))


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
def test_static_convolutions_of_one_shape_reload_with_their_own_weights(tmp_path, engine):
    """On a CPU without AVX512-VNNI torch.ao packs every convolution for FBGEMM (`fbgemm` here makes any CPU
    do so), which unpacks weights channels-last: each layer must still be saved with its own weights."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        torch.manual_seed(0)
        optimized, _ = apply_method("static", Stage().eval(), torch.randn(1, 3, 12, 12))
        reloaded = reload_identical(optimized, tmp_path, Stage(), torch.randn(4, 3, 12, 12))
        saved, loaded = _conv_weights(optimized), _conv_weights(reloaded)
        assert len(saved) == 6 and saved.keys() == loaded.keys()
        for name, weight in saved.items():
            assert torch.equal(loaded[name], weight), f"{name} came back with other int8 weights"
    finally:
        torch.backends.quantized.engine = previous


def _conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each int8 convolution's int8 weight values, by layer name."""
    return {name: module.weight().int_repr() for name, module in model.named_modules()
            if isinstance(module, torch.ao.nn.quantized.Conv2d)}


def _per_channel(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(8, generator=generator) * 0.01 + 0.005
    return torch.quantize_per_channel(torch.randn(8, 4, generator=generator), scales, torch.zeros(8, dtype=torch.long), 0, torch.qint8)


def test_a_file_whose_layer_shares_another_layers_int8_values_but_not_its_scales_is_refused():
    """What the encoder before b5117f5 could write: loading it would run one layer with another's weights."""
    tensors, spec = encode_state_dict({"a.weight": _per_channel(0), "b.weight": _per_channel(1)})
    mixed_up = spec["entries"]["b.weight"]["quantized"]
    del tensors[mixed_up["int_repr"]]
    mixed_up["int_repr"] = spec["entries"]["a.weight"]["quantized"]["int_repr"]
    with pytest.raises(StorageError, match="'b.weight' as a copy of the int8 values of 'a.weight'.*Optimize the model again"):
        decode_state_dict(tensors, spec)


def test_entries_sharing_int8_values_and_scales_decode_as_tied_weights():
    tied = _per_channel(0)
    tensors, spec = encode_state_dict({"encoder.weight": tied, "decoder.weight": tied})
    second = spec["entries"]["decoder.weight"]["quantized"]
    del tensors[second["int_repr"]]
    second["int_repr"] = spec["entries"]["encoder.weight"]["quantized"]["int_repr"]  # one copy of the values, two scale tensors
    decoded = decode_state_dict(tensors, spec)
    for key in ("encoder.weight", "decoder.weight"):
        assert torch.equal(decoded[key].int_repr(), tied.int_repr()) and torch.equal(decoded[key].q_per_channel_scales(), tied.q_per_channel_scales())
