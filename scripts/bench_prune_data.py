"""How much of the user's text `prune` needs: held-out fidelity of pruned all-MiniLM-L6-v2 by calibration size.

The text is real prose that ships with every Python: the sentences of `pydoc_data.topics` (the language
reference's help topics), shuffled with a fixed seed; the first 150 are held out, calibration takes the
next N. Each row prunes the float model with the `prune` method itself (whole heads and FFN neurons,
compensation, then `--recovery-steps` of its distillation), to a size target with the accuracy bound off
(`preserve_accuracy_threshold: 0`), so every N gets the same cut and only the data differ. It reports the
multiply-add ratio of the cut, the heads kept per layer, and the mean-pooled embedding cosine against FP32
on the 150 held-out prose sentences and on 40 everyday sentences of another kind (`bench_head_pruning`),
which no calibration set contains. `dynamic` after it loses about 0.003 more (`bench_head_pruning.py`).

    flock /tmp/pdo-heavy.lock python scripts/bench_prune_data.py --sizes 48,192,768 --targets 0.9,0.85
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from bench_head_pruning import HELD_OUT as EVERYDAY  # noqa: E402
from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.demo import embedding_cosine, minilm_folder, tokenized_sentences  # noqa: E402
from pdo_hub.hub.examples import text_inputs  # noqa: E402
from pdo_hub.optimizers.context import MethodContext  # noqa: E402
from pdo_hub.optimizers.registry import get_method  # noqa: E402

HELD_OUT_COUNT = 150


def prose_sentences() -> list[str]:
    """Sentences of 8-40 words from the language reference's help topics, without code-like ones, shuffled."""
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    found = [part.strip() for part in re.split(r"(?<=[.!?])\s+", text)]
    found = [s for s in found if 8 <= len(s.split()) <= 40 and s[0].isupper() and not any(c in s for c in "{}[]=>*_`|")]
    random.Random(0).shuffle(found)
    return found


def prune_row(model, tokenizer, texts: list[str], target: float, steps: int, held: dict) -> dict:
    config = PostDownloadOptimizationConfig(preserve_accuracy_threshold=0.0, recovery_steps=steps, recovery_max_seconds=3600.0)
    inputs = text_inputs(tokenizer, model, len(texts), texts)
    ctx = MethodContext(config=config, example_inputs=inputs[0], calibration_inputs=inputs, device=torch.device("cpu"),
                        original_model=model, target_ratio=target)
    start = time.perf_counter()
    pruned, records = get_method("prune").apply(copy.deepcopy(model), ctx)
    seconds = time.perf_counter() - start
    pruned.eval()
    heads = [layer.attention.self.num_attention_heads for layer in pruned.encoder.layer]
    ffn = [layer.intermediate.dense.out_features for layer in pruned.encoder.layer]
    recovery = [note for note in ctx.notes if "recovery" in note]
    return {"calibration": len(texts), "size_target": target, "recovery_steps": steps,
            "multiply_add_ratio": records[0]["multiply_add_ratio"] if records else 1.0, "heads": heads, "ffn": ffn,
            **{f"cosine_{name}": round(embedding_cosine(model, pruned, batches), 4) for name, batches in held.items()},
            "seconds": round(seconds, 1), "recovery": recovery[0][-90:] if recovery else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="48,192,768", help="calibration sentence counts")
    parser.add_argument("--targets", default="0.9,0.85", help="prune size targets (all-MiniLM-L6-v2: 0.9 keeps ~0.79 of the multiply-adds)")
    parser.add_argument("--recovery-steps", default="0", help="distillation steps after the cut, e.g. 0,100")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    prose = prose_sentences()
    held = {"prose": tokenized_sentences(tokenizer, prose[:HELD_OUT_COUNT]), "everyday": tokenized_sentences(tokenizer, EVERYDAY)}
    pool = prose[HELD_OUT_COUNT:]
    for size in (int(s) for s in args.sizes.split(",")):
        if size > len(pool):
            raise SystemExit(f"--sizes {size}: the prose has {len(pool)} sentences besides the held-out ones")
        for target in (float(t) for t in args.targets.split(",")):
            for steps in (int(s) for s in args.recovery_steps.split(",")):
                print(json.dumps(prune_row(model, tokenizer, pool[:size], target, steps, held)), flush=True)


if __name__ == "__main__":
    main()
