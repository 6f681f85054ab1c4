"""The per-token op's AMX tile GEMM against its VNNI loop, at pruned and unpruned MiniLM widths, in one process.

On a CPU with AMX-INT8 the op takes the tiles from 32 tokens; `allow_amx(False)` sends the same call to the
VNNI loop (what pruned widths, not multiples of 64, got before the packed weights were padded to whole
tiles). Calls alternate between the two paths; the outputs must be bit-identical. Prints the median time of
each and their ratio per (input width, output width, rows).

    flock /tmp/pdo-heavy.lock python scripts/bench_amx_widths.py
"""

import statistics
import sys
import time

import torch

from pdo_hub.core import cpu
from pdo_hub.optimizers.methods import _token_int8_kernel as kernel

SHAPES = [(1216, 384), (1104, 384), (352, 384), (1536, 384), (384, 1216)]  # pruned FFN down, attention out, FFN up; unpruned
ROWS = (32, 64, 128, 256)


class _Owner:  # holds a layer's packed weights, as the layer itself would
    pass


def main() -> None:
    torch.set_num_threads(2)
    if kernel.op() is None or not torch.ops.pdo_hub.allow_amx(True):
        sys.exit(f"no AMX tile path here (cpu flags: {sorted(f for f in cpu.cpu_flags() if 'amx' in f)}, kernel: {kernel.status()})")
    for k, n in SHAPES:
        weight = torch.randint(-127, 128, (k, n), dtype=torch.int8)
        packed, sums = kernel.packed_weights(_Owner(), weight)
        scale, bias = torch.rand(n) * 0.01, torch.randn(n)
        for m in ROWS:
            x = torch.randn(m, k)
            times, outputs = {True: [], False: []}, {}
            for _ in range(30):
                for amx in (True, False):
                    torch.ops.pdo_hub.allow_amx(amx)
                    start = time.perf_counter()
                    for _ in range(5):
                        outputs[amx] = torch.ops.pdo_hub.per_token_int8_linear(x, 127, weight, scale, bias, packed, sums, 0)
                    times[amx].append((time.perf_counter() - start) / 5)
            assert torch.equal(outputs[True], outputs[False]), "the two paths disagree"
            tiles, loop = statistics.median(times[True]), statistics.median(times[False])
            print(f"{k} -> {n}, {m} rows: AMX {tiles * 1e6:.0f} us, VNNI {loop * 1e6:.0f} us, AMX / VNNI {tiles / loop:.2f}", flush=True)
    torch.ops.pdo_hub.allow_amx(cpu.onednn_allows_amx())


if __name__ == "__main__":
    main()
