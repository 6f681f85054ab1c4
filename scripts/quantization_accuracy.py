"""Real accuracy of each pdo-hub int8 method: digits-trained ResNet-18 (32x32), 400 held-out images.

Trains (or loads from the dev cache) the fixed-seed ResNet-18 of `digits_resnet.py`, quantizes it with
`static`, `fx` and `qat` through the method registry with 512 training images as calibration data
and the held-out accuracy as the optimizer's loss measure, and prints top-1 for FP32 and each method.

    flock /tmp/pdo-heavy.lock python scripts/quantization_accuracy.py [--threshold 0.01]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_resnet import load_digits_split, top1_accuracy, trained_digits_resnet18  # noqa: E402

from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.optimizers import get_method  # noqa: E402
from pdo_hub.optimizers.context import MethodContext  # noqa: E402

METHODS = ("static", "fx", "qat")


def quantize_digits(methods=METHODS, *, threshold: float = 0.01, qat_steps: int = 24, calibration_images: int = 512) -> dict:
    """{name: {"accuracy", "seconds", "model", "record"}} for "fp32" and each method."""
    model = trained_digits_resnet18()
    x_train, y_train, x_test, y_test = load_digits_split()
    picks = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))[:calibration_images]
    calibration = list(x_train[picks].split(64))
    labelled = list(zip(calibration, y_train[picks].split(64)))
    base = top1_accuracy(model, x_test, y_test)
    results = {"fp32": {"accuracy": base, "seconds": 0.0, "model": model, "record": {}}}
    for name in methods:
        config = PostDownloadOptimizationConfig(preserve_accuracy_threshold=threshold, recovery_steps=qat_steps)
        ctx = MethodContext(config=config, example_inputs=x_test[:1], calibration_inputs=calibration,
                            device=torch.device("cpu"), original_model=model)
        ctx.measure_loss = lambda m: max(0.0, base - top1_accuracy(m, x_test, y_test))
        if name == "qat":
            ctx.extras["labelled_data"] = labelled
        start = time.perf_counter()
        quantized, records = get_method(name).apply(copy.deepcopy(model), ctx)
        results[name] = {"accuracy": top1_accuracy(quantized, x_test, y_test), "seconds": time.perf_counter() - start,
                         "model": quantized, "record": records[0] if records else {}, "notes": ctx.notes}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.01, help="preserve_accuracy_threshold (fx keeps a quarter of it)")
    parser.add_argument("--qat-steps", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = quantize_digits(threshold=args.threshold, qat_steps=args.qat_steps)
    base = results["fp32"]["accuracy"]
    print("| variant | top-1 % | drop (pt) | seconds | notes |\n|---|---|---|---|---|")
    for name, item in results.items():
        notes = "; ".join(item.get("notes", []))[:160]
        print(f"| {name} | {100 * item['accuracy']:.2f} | {100 * (base - item['accuracy']):.2f} | {item['seconds']:.1f} | {notes} |")


if __name__ == "__main__":
    main()
