"""The int8 table lookup and channel-gate kernels (`_int8_lookup`) against the ATen ops they replace.

On EfficientNet-B0's shapes at batch 8 (channels-last int8 maps, as torch.ao's convolutions return them):
SiLU between int8 layers as dequantize -> F.silu -> quantize (what torch.ao runs) against
`pdo_hub::int8_lookup`, and the squeeze-excitation product of a map and an (N, C, 1, 1) gate as
`quantized::mul` against `pdo_hub::int8_scale_channels`. Interleaved, median of 7 rounds of 10 calls, 2
threads; each pair is checked bit-identical first. Then the whole-model effect: `python
scripts/bench_workloads.py --models resnet --cnn efficientnet_b0`.

    flock /tmp/pdo-heavy.lock python scripts/bench_int8_elementwise.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from pdo_hub.core import cpu
from pdo_hub.optimizers.methods import _int8_lookup, _token_int8_kernel

SHAPES = ((8, 96, 112, 112), (8, 144, 56, 56), (8, 672, 14, 14), (8, 1152, 7, 7))  # EfficientNet-B0 maps
ROUNDS, CALLS = 7, 10


def int8_map(shape: tuple[int, ...], scale: float, zero_point: int) -> torch.Tensor:
    x = torch.quantize_per_tensor(torch.randn(shape) * 3, scale, zero_point, torch.quint8)
    return x.contiguous(memory_format=torch.channels_last)


def side_by_side(runs: dict) -> dict[str, float]:
    """Median ms per call of each callable, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(CALLS):
                run()
            times[name].append((time.perf_counter() - start) * 1000 / CALLS)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    torch.set_num_threads(2)
    if _token_int8_kernel.op() is None:
        raise SystemExit(f"pdo-hub's kernel library is unavailable here: {_token_int8_kernel.status()}")
    print(f"cpu flags: {sorted(f for f in cpu.cpu_flags() if f.startswith(('avx512', 'amx')))}, 2 threads")
    print("| map (N, C, H, W) | SiLU: ATen ms | lookup ms | ATen / lookup | gate: quantized::mul ms | int8_scale_channels ms | mul / ours |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    out_scale, out_zero = torch.tensor(0.021), torch.tensor(13)
    for shape in SHAPES:
        x = int8_map(shape, 0.05, 128)
        table = _int8_lookup.table_for(F.silu, 0.05, 128, out_scale, out_zero)
        aten_silu = lambda: torch.quantize_per_tensor(F.silu(x.dequantize()), out_scale, out_zero, torch.quint8)  # noqa: E731
        lookup = lambda: torch.ops.pdo_hub.int8_lookup(x, table, float(out_scale), int(out_zero))  # noqa: E731
        gate = torch.quantize_per_tensor(torch.rand(shape[0], shape[1], 1, 1), 1 / 256, 0, torch.quint8)
        aten_mul = lambda: torch.ops.quantized.mul(x, gate, 0.031, 121)  # noqa: E731
        ours_mul = lambda: torch.ops.pdo_hub.int8_scale_channels(x, gate, 0.031, 121)  # noqa: E731
        for name, (a, b) in {"lookup": (aten_silu, lookup), "gate": (aten_mul, ours_mul)}.items():
            if not torch.equal(a().int_repr(), b().int_repr()):
                raise SystemExit(f"{name} on {shape}: not bit-identical to the ATen ops")
        t = side_by_side({"aten silu": aten_silu, "lookup": lookup, "aten mul": aten_mul, "ours mul": ours_mul})
        print(f"| {shape} | {t['aten silu']:.3f} | {t['lookup']:.3f} | {t['aten silu'] / t['lookup']:.1f}x "
              f"| {t['aten mul']:.3f} | {t['ours mul']:.3f} | {t['aten mul'] / t['ours mul']:.1f}x |")


if __name__ == "__main__":
    main()
