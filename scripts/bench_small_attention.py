"""The one-op attention's effect on a whole model: all-MiniLM-L6-v2 `dynamic` at batch 1, side by side.

Two copies of one variant (built once by the public optimizer on 32 generated sentences), each with its
own frozen trace: one built with the one-op attention kernel (`_small_attention_kernel.cpp`), one with
the plain ops. Batch-1 latency by token count, best of 3 interleaved rounds, 2 threads; then, per
length, the largest difference between the two copies' hidden states and each copy's cosine to the
float model (mean-pooled).

    flock /tmp/pdo-heavy.lock python scripts/bench_small_attention.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_workloads as workloads  # noqa: E402

from pdo_hub.optimizers.methods import _small_attention  # noqa: E402


def main() -> None:
    torch.set_num_threads(workloads.THREADS)
    if not _small_attention.fused_kernel_here():
        raise SystemExit("the one-op attention is not built here (needs the kernel library on an AVX-512 CPU)")
    model, fused, lengths = workloads.minilm_dynamic_variant((8, 16, 32, 48, 64, 128))
    plain = copy.deepcopy(fused)
    available = _small_attention.fused_kernel_here

    def runner(variant, use_kernel: bool):
        def run(x):  # the switch decides which path each copy's trace (and eager call) takes
            _small_attention.fused_kernel_here = available if use_kernel else (lambda: False)
            return variant(**x).last_hidden_state
        return run

    copies = {"one-op attention": lambda: runner(fused, True), "plain ops": lambda: runner(plain, False)}
    print(workloads.latency_by_length(copies, lengths, peer="plain ops"))
    # The op agrees with the plain ops to float rounding; in the int8 model such a difference can move a
    # per-token activation across a rounding boundary in a later layer, which then spreads through attention.
    # So: the largest difference between the copies, and each copy's fidelity to the float model.
    print("\n| tokens | largest hidden-state difference | cosine to FP32, one-op attention | cosine to FP32, plain ops |\n|---|---|---|---|")
    pooled = lambda h: h.mean(1)  # noqa: E731
    with torch.inference_mode():
        for n, x in lengths.items():
            one_op, ops, reference = runner(fused, True)(x), runner(plain, False)(x), model(**x).last_hidden_state
            cosine = lambda h: float(torch.nn.functional.cosine_similarity(pooled(h), pooled(reference)))  # noqa: E731
            print(f"| {n} | {float((one_op - ops).abs().max()):.1e} | {cosine(one_op):.5f} | {cosine(ops):.5f} |")


if __name__ == "__main__":
    main()
