"""Large batches whole against sub-batches: the measurement behind `_sub_batches.TOKENS_PER_PASS`.

all-MiniLM-L6-v2 `dynamic` (real weights, built by the public optimizer on 32 generated sentences), at
2 threads, one process: each batch of B sequences of L tokens runs whole and cut into sub-batches of
at most N tokens (the product's own path, with `TOKENS_PER_PASS` set to N), the settings interleaved
in rotating order for `--rounds` rounds; the table gives the median time per call and each setting's
speed as a multiple of the whole batch's (the median of the per-round ratios, so a drift of the host's
speed hits both sides). It also checks that every setting returns the whole batch's output up to int8
roundings (`_sub_batches.close`) and prints the largest difference as a share of the output's norm.

    flock /tmp/pdo-heavy.lock python scripts/bench_sub_batches.py [--shapes 64x256,64x128,32x128] [--tokens 4096,2048,1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workloads import THREADS, minilm_dynamic_variant, sentences  # noqa: E402

from pdo_hub.core import cpu  # noqa: E402
from pdo_hub.optimizers.methods import _sub_batches  # noqa: E402

WHOLE = 1 << 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="64x256,32x256,64x128,128x32,32x128,64x16", help="batch x tokens, comma-separated")
    parser.add_argument("--tokens", default="4096,2048,1024", help="tokens per sub-batch to compare with whole batches")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(THREADS)
    from transformers import AutoTokenizer

    from pdo_hub.demo import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    _, variant, _ = minilm_dynamic_variant(())
    settings = {"whole": WHOLE, **{f"{n} tokens": int(n) for n in args.tokens.split(",")}}
    words = " ".join(sentences(400, 3)).split()
    print(f"CPU flags: {', '.join(cpu.reported_flags())}; {THREADS} threads\n")
    print("| batch x tokens | " + " | ".join(f"{name} ms" for name in settings) + " | "
          + " | ".join(f"{name} x whole" for name in settings if name != "whole") + " | largest difference |")
    print("|---" * (2 * len(settings) + 1) + "|")
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.split("x"))
        inputs = dict(tokenizer([" ".join(words[i * 7:i * 7 + length]) for i in range(batch)], padding="max_length",
                                truncation=True, max_length=length, return_tensors="pt"))
        times, gaps = {name: [] for name in settings}, {}
        with torch.inference_mode():
            _sub_batches.TOKENS_PER_PASS = WHOLE
            reference = variant(**inputs).last_hidden_state
            for name, tokens in settings.items():
                _sub_batches.TOKENS_PER_PASS = tokens
                got = variant(**inputs).last_hidden_state  # also the warm-up (and the one-time probe)
                assert _sub_batches.close(got, reference), f"{name}: the output differs from the whole batch's"
                gaps[name] = max(gaps.get(name, 0.0), float((got - reference).norm() / reference.norm()))
            for round_ in range(args.rounds):
                names = list(settings)
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    _sub_batches.TOKENS_PER_PASS = settings[name]
                    time.sleep(0.05)
                    start = time.perf_counter()
                    variant(**inputs)
                    times[name].append((time.perf_counter() - start) * 1e3)
        whole = times["whole"]
        cells = [f"{statistics.median(times[name]):.0f}" for name in settings]
        ratios = [f"{statistics.median(w / t for w, t in zip(whole, times[name])):.2f}" for name in settings if name != "whole"]
        print(f"| {batch} x {length} | " + " | ".join(cells + ratios) + f" | {max(gaps.values()):.1e} |", flush=True)


if __name__ == "__main__":
    main()
