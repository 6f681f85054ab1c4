"""The CPU kernel timings behind two design choices, at 2 threads (median microseconds).

1. Attention (`pdo_hub/optimizers/methods/_small_attention.py`): torch's SDPA against plain
   matmul-softmax-matmul with an additive mask, 12 heads, per call, by batch x sequence x head dim.
2. Conv widths (`prune._width_grid`): a 3x3 conv with C in and C out channels at the resolutions of
   the digits ResNet-18 stages, batch 1; widths off oneDNN's 16-channel blocks cost nearly as much as
   the next block.
3. Per-token int8 Linear (`pdo_hub/optimizers/methods/_token_int8_kernel.py`), built as `dynamic` builds
   it (7-bit weights, activations with a zero point per token): the ATen op sequence,
   the fused op on oneDNN's GEMM, the fused op's own VNNI GEMM (packed weights), and torch.ao's fbgemm
   dynamic Linear (per-tensor activations), by tokens x in x out, each call cycling through six layers
   of the shape (weights from L3, as in a model). The fused op takes its VNNI GEMM up to 512 tokens
   (more go through oneDNN, so the two fused columns time the same path there); on CPUs with AMX-INT8
   the packed column is the tile GEMM from 32 tokens, at every size. Each row also checks that the
   per-token paths agree bit for bit.
4. One-op attention (`pdo_hub/optimizers/methods/_small_attention_kernel.cpp`): the plain
   matmul-softmax-matmul ops as they run inside a trace (the scripted function) against the one op, 12
   heads, head dim 32, boolean padding mask, by batch x tokens; `_small_attention.FUSED_SCORES` is where
   the op stops winning. Each row also gives the largest difference between the two.

    flock /tmp/pdo-heavy.lock python scripts/bench_cpu_kernels.py [attention] [conv] [linear] [fused-attention]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

THREADS = 2
COPIES = 6  # per-token table: layers of one shape cycled per timed call


def median_us(fn, runs: int = 200) -> float:
    with torch.inference_mode():
        for _ in range(10):
            fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def attention() -> None:
    print("| batch x seq x head dim | scores | SDPA us | plain us |\n|---|---|---|---|")
    for batch, seq, dim in ((1, 32, 32), (1, 128, 32), (1, 192, 32), (2, 16, 32), (4, 32, 32), (16, 32, 32), (50, 13, 32), (2, 128, 32), (8, 128, 32)):
        q, k, v = (torch.randn(batch, 12, seq, dim) for _ in range(3))
        mask = torch.ones(batch, 1, seq, seq, dtype=torch.bool)
        additive = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)

        def plain():
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(dim ** -0.5).add_(additive)
            return torch.matmul(scores.softmax(-1), v)

        sdpa = median_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        print(f"| {batch} x {seq} x {dim} | {batch * 12 * seq * seq} | {sdpa:.0f} | {median_us(plain):.0f} |")


def conv_widths() -> None:
    print("\n| resolution | channels: us |\n|---|---|")
    for size, widths in ((32, (32, 40, 48, 56, 64)), (16, (64, 72, 80, 96, 104, 128)), (8, (128, 144, 160, 192, 256))):
        cells = []
        for width in widths:
            conv = torch.nn.Conv2d(width, width, 3, padding=1, bias=False).eval()
            x = torch.randn(1, width, size, size)
            cells.append(f"{width}: {median_us(lambda: conv(x)):.0f}")
        print(f"| {size}x{size} | {', '.join(cells)} |")


def per_token_linear() -> None:
    from pdo_hub.optimizers.methods import _token_int8_kernel
    from pdo_hub.optimizers.methods._int8_linear import FullRangeDynamicLinear, TokenInt8Linear, aten_per_token_int8_linear

    fused = _token_int8_kernel.op()
    if fused is None:
        print(f"\nfused per-token kernel: {_token_int8_kernel.status()}")
        return
    print("\n| tokens x in x out | ATen ops us | fused, oneDNN GEMM us | fused, packed GEMM (VNNI; AMX from 32 tokens) us | fbgemm per-tensor us | identical |\n|---|---|---|---|---|---|")
    for tokens in (1, 8, 32, 64, 128, 512, 1024, 2048, 4096):
        for k, n in ((384, 1152), (384, 1536), (1536, 384)):
            # Six layers of the shape, each call running all six: their weights come from L3, as in a model
            # (MiniLM has six of each), not from the L1/L2 that one layer timed alone would stay in.
            layers = [TokenInt8Linear.from_float(torch.nn.Linear(k, n), portable=True, asymmetric=True) for _ in range(COPIES)]  # as `dynamic` builds them
            packs = [_token_int8_kernel.packed_weights(layer, layer.weight_t) for layer in layers]
            fbgemm = [FullRangeDynamicLinear.portable_from_float(torch.nn.Linear(k, n)) for _ in range(COPIES)]
            x = torch.randn(tokens, k)
            args = [(x, layer.activation_levels, layer.weight_t, layer.scale, layer.bias) for layer in layers]
            outputs = [aten_per_token_int8_linear(*args[0]), fused(*args[0])] + ([fused(*args[0], *packs[0])] if packs[0][0] is not None else [])
            runs = max(10, 200 * 32 // max(32, tokens))
            time_all = lambda call: median_us(lambda: [call(i) for i in range(COPIES)], runs) / COPIES  # noqa: E731
            vnni = f"{time_all(lambda i: fused(*args[i], *packs[i])):.0f}" if packs[0][0] is not None else "no VNNI"
            print(f"| {tokens} x {k} x {n} | {time_all(lambda i: aten_per_token_int8_linear(*args[i])):.0f} | "
                  f"{time_all(lambda i: fused(*args[i])):.0f} | {vnni} | {time_all(lambda i: fbgemm[i](x)):.0f} | "
                  f"{all(torch.equal(outputs[0], o) for o in outputs[1:])} |", flush=True)


def fused_attention() -> None:
    from pdo_hub.optimizers.methods import _small_attention

    if not _small_attention.fused_kernel_here():
        print("\none-op attention: not built here (needs the kernel library on an AVX-512 CPU)")
        return
    plain = _small_attention._scripted(False)
    lowest = torch.finfo(torch.float32).min
    print("\n| batch x tokens | scores | SDPA us | plain ops (scripted) us | one op us | max difference |\n|---|---|---|---|---|---|")
    for batch, tokens in ((1, 8), (1, 16), (1, 32), (1, 48), (1, 64), (1, 96), (1, 128), (1, 256), (1, 512), (4, 32), (32, 8),
                          (32, 16), (32, 32), (32, 64), (8, 128), (32, 128)):
        q, k, v = (torch.randn(batch, tokens, 12, 32).transpose(1, 2) for _ in range(3))
        mask = torch.ones(batch, 1, tokens, tokens, dtype=torch.bool)
        mask[0, ..., tokens // 2:] = False  # one padded row of the batch
        args = (q, k, v, mask, 32 ** -0.5)
        gap = (plain(*args, 1 << 62, lowest) - torch.ops.pdo_hub.small_attention(*args, lowest)).abs().max()
        sdpa = median_us(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=32 ** -0.5).transpose(1, 2).contiguous())
        print(f"| {batch} x {tokens} | {batch * 12 * tokens * tokens} | {sdpa:.0f} | {median_us(lambda: plain(*args, 1 << 62, lowest)):.0f} | "
              f"{median_us(lambda: torch.ops.pdo_hub.small_attention(*args, lowest)):.0f} | {gap:.1e} |")


if __name__ == "__main__":
    torch.set_num_threads(THREADS)
    sections = {"attention": attention, "conv": conv_widths, "linear": per_token_linear, "fused-attention": fused_attention}
    for name in sys.argv[1:] or sections:  # e.g. `bench_cpu_kernels.py linear`: that table alone
        sections[name]()
