"""A fused op's effect on a whole model: all-MiniLM-L6-v2 `dynamic` at batch 1, side by side.

Two copies of one variant (built once by the public optimizer on 32 generated sentences), each with its
own frozen trace: one as pdo-hub runs it, one with the op under test unfused. `--op gelu` (the default):
the feed-forward GELUs inside the int8 op (`_fused_activation`) against torch's own GELU; `--op norm`:
the blocks' output projection, residual add and LayerNorm as one op (`_fused_norm`) against the int8
layer followed by torch's add and LayerNorm. Batch-1 latency by token count, best of 3 interleaved
rounds, 2 threads; then, per length, the largest difference between the copies' hidden states and each
copy's cosine to the float model (mean-pooled).

    flock /tmp/pdo-heavy.lock python scripts/bench_fused_gelu.py [--op gelu|norm]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_workloads as workloads  # noqa: E402

from pdo_hub.optimizers.methods._fused_activation import unfuse  # noqa: E402
from pdo_hub.optimizers.methods._fused_norm import _AddNorm, unfuse_norms  # noqa: E402
from pdo_hub.optimizers.methods._int8_linear import GELU, TokenInt8Linear  # noqa: E402

OPS = {  # op: (name of the fused copy, of the other, undo, what counts as fused)
    "gelu": ("fused GELU", "torch's GELU", unfuse, lambda m: isinstance(m, TokenInt8Linear) and m.activation == GELU),
    "norm": ("fused add + LayerNorm", "torch's add + LayerNorm", unfuse_norms, lambda m: isinstance(m.__dict__.get("forward"), _AddNorm)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", choices=sorted(OPS), default="gelu")
    fused_name, plain_name, undo, is_fused = OPS[parser.parse_args().op]
    torch.set_num_threads(workloads.THREADS)
    model, fused, lengths = workloads.minilm_dynamic_variant((8, 16, 32, 64, 128))
    plain = copy.deepcopy(fused)
    with torch.inference_mode():  # each copy's first call groups siblings and fuses
        fused(**lengths[8])
        plain(**lengths[8])
    undo(plain.modules())
    plain.forward.cache.clear()  # its traces are rebuilt unfused; the first-call probe does not run again
    count = lambda m: sum(map(is_fused, m.modules()))  # noqa: E731
    print(f"modules fused: {count(fused)} in the fused copy, {count(plain)} in the other")
    hidden = lambda m: (lambda x: m(**x).last_hidden_state)  # noqa: E731
    copies = {fused_name: lambda: hidden(fused), plain_name: lambda: hidden(plain)}
    print(workloads.latency_by_length(copies, lengths, peer=plain_name))
    print(f"\n| tokens | largest hidden-state difference | cosine to FP32, {fused_name} | cosine to FP32, {plain_name} |\n|---|---|---|---|")
    with torch.inference_mode():
        for n, x in lengths.items():
            one, other, reference = fused(**x).last_hidden_state, plain(**x).last_hidden_state, model(**x).last_hidden_state
            cosine = lambda h: float(torch.nn.functional.cosine_similarity(h.mean(1), reference.mean(1)))  # noqa: E731
            print(f"| {n} | {float((one - other).abs().max()):.1e} | {cosine(one):.5f} | {cosine(other):.5f} |")


if __name__ == "__main__":
    main()
