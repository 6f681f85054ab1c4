"""Auto-selection on real models, judged on real held-out data, with and without the user's data.

For each preset, on the digits-trained ResNet-18 (`digits_resnet.py`):
- `data-free`: no calibration data (inputs distilled from the BatchNorm statistics), example input N(0, 1);
- `noise`: seeded Gaussian noise as calibration data (what pdo-hub did before distillation; default preset only);
- `user data`: 128 training images in batches of 8.
Then a small digits CNN (`data-free` and `user data`, default preset), and all-MiniLM-L6-v2 calibrated on
pdo-hub's built-in sentences (what `mirror` uses without user data) and on the demo's 16 sentences
(accuracy: cosine of pooled embeddings on 16 other sentences).

Each row: chosen chain, size ratio, speedup (the optimizer's interleaved timing, batch 1), top-1 on the
400 held-out digits (FP32 and variant), search time. Then, for every candidate the optimizer measured,
the accuracy loss it estimated without labels against the top-1 loss on the 400 real held-out digits:
`ok` when within 0.5 pt or the report marks the estimate uncertain. Last, three runs of the default
preset, data-free: chosen methods and the sha256 of the stored safetensors.

Usage:
    python scripts/bench_autoselect.py                 # everything (~25 min on 2 cores)
    python scripts/bench_autoselect.py digits          # digits ResNet-18 only
    python scripts/bench_autoselect.py cnn minilm repro
    python scripts/bench_autoselect.py minilm-conservative  # the default search on all-MiniLM-L6-v2 alone (its "search s")
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import pdo_hub  # noqa: E402
from pdo_hub.core.config import PostDownloadOptimizationConfig  # noqa: E402
from pdo_hub.optimizers import create_post_download_optimizer, optimizer as optimizer_module  # noqa: E402

PRESETS = ("conservative", "aggressive", "quality")
TOLERANCE = 0.005  # half a point of top-1


def digits_cnn() -> nn.Module:
    """A small BatchNorm CNN for 3x32x32 digits (the second model of the estimate check)."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 16, 10))


def trained_digits_cnn() -> nn.Module:
    from digits_resnet import load_digits_split, train

    torch.manual_seed(0)
    model = digits_cnn()
    x_train, y_train, _, _ = load_digits_split()
    return train(model, x_train, y_train, epochs=4, seed=0)


class RealAccuracy:
    """Records every measured candidate's top-1 on the real held-out digits, by pipeline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels, self.top1 = images, labels, {}
        self._original = optimizer_module.measure_candidate

    def __enter__(self) -> "RealAccuracy":
        from digits_resnet import top1_accuracy

        def measure(candidate, ctx, original):
            self._original(candidate, ctx, original)
            self.top1["+".join(candidate.methods)] = top1_accuracy(candidate.model, self.images, self.labels)

        optimizer_module.measure_candidate = measure
        return self

    def __exit__(self, *exc: object) -> None:
        optimizer_module.measure_candidate = self._original


def stored_sha256(model: nn.Module) -> str:
    with tempfile.TemporaryDirectory() as folder:
        pdo_hub.save_optimized(model, folder)
        return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def digits_case(model: nn.Module, label: str, preset: str, mode: str, estimates: list) -> dict:
    from digits_resnet import load_digits_split, top1_accuracy

    from pdo_hub.hub import examples

    x_train, _, x_test, y_test = load_digits_split()
    kwargs: dict = {"example_inputs": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    if mode == "noise":
        kwargs["calibration_data"] = examples.image_inputs(16, size=32)
    elif mode == "user data":
        kwargs = {"example_inputs": x_train[:1], "calibration_data": list(x_train[:128].split(8))}
    config = PostDownloadOptimizationConfig.from_preset(preset)
    start = time.perf_counter()
    with RealAccuracy(x_test, y_test) as real:
        optimized, report = create_post_download_optimizer(config).optimize_model(model=model, model_name=label, **kwargs)
    seconds = time.perf_counter() - start
    fp32 = top1_accuracy(model, x_test, y_test)
    for candidate in report["candidates"]:
        name = "+".join(candidate["methods"])
        if name in real.top1 and "accuracy_loss" in candidate:
            estimates.append((label, preset, mode, name, candidate["accuracy_loss"], fp32 - real.top1[name],
                              candidate.get("estimate_uncertain", False), candidate["status"]))
    return row(label, preset, mode, report, seconds, fp32, top1_accuracy(optimized, x_test, y_test))


def row(label: str, preset: str, mode: str, report: dict, seconds: float, before: float, after: float) -> dict:
    size, perf = report["model_size_metrics"], report["performance_metrics"]
    return {"model": label, "preset": preset, "data": mode, "chosen": "+".join(report["selection"]["selected"] or ["original"]),
            "size": size["optimized_size_bytes"] / size["original_size_bytes"], "speedup": perf.get("speedup"),
            "before": before, "after": after, "seconds": seconds, "metric": report["accuracy_metrics"]["metric"]}


def minilm_case(preset: str, mode: str) -> dict:
    """`mode`: "built-in sentences" (what `mirror` calibrates on without user data) or "16 sentences" (the demo's)."""
    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.demo import embedding_cosine, minilm_folder, tokenized_sentences
    from pdo_hub.hub import examples
    from pdo_hub.mirror_demo import HELD_OUT_SENTENCES

    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if mode == "built-in sentences":
        batches = examples.text_inputs(tokenizer, model, PostDownloadOptimizationConfig().calibration_samples)
    else:
        batches = tokenized_sentences(tokenizer)
    held_out = tokenized_sentences(tokenizer, list(HELD_OUT_SENTENCES))  # none of them calibrates
    start = time.perf_counter()
    optimized, report = create_post_download_optimizer(PostDownloadOptimizationConfig.from_preset(preset)).optimize_model(
        model=model, model_name="all-MiniLM-L6-v2", example_inputs=batches[0], calibration_data=batches)
    seconds = time.perf_counter() - start
    return row("all-MiniLM-L6-v2", preset, mode, report, seconds, 1.0, embedding_cosine(model, optimized, held_out))


def print_rows(rows: list[dict]) -> None:
    print("| model | preset | calibration | chosen | size ratio | × FP32 | accuracy before → after (real held-out) | drop (pt) | search s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cosine = r["model"].startswith("all-MiniLM")
        accuracy = f"cosine {r['after']:.4f}" if cosine else f"{100 * r['before']:.2f}% → {100 * r['after']:.2f}%"
        drop = "" if cosine else f"{100 * (r['before'] - r['after']):.2f}"
        print(f"| {r['model']} | {r['preset']} | {r['data']} | {r['chosen']} | {r['size']:.3f} | {r['speedup']}x | "
              f"{accuracy} | {drop} | {r['seconds']:.0f} |", flush=True)


def print_estimates(estimates: list) -> None:
    print("\n| model | preset | calibration | candidate | status | estimated loss (pt) | real top-1 loss (pt) | gap (pt) | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, preset, mode, name, estimate, real, uncertain, status in estimates:
        gap = abs(estimate - real)
        verdict = "within 0.5 pt" if gap <= TOLERANCE else ("marked uncertain" if uncertain else "**off**")
        print(f"| {label} | {preset} | {mode} | {name} | {status} | {100 * estimate:.2f} | {100 * real:.2f} | {100 * gap:.2f} | {verdict} |")


def main() -> None:
    parts = sys.argv[1:] or ["digits", "cnn", "minilm", "repro"]
    torch.set_num_threads(2)
    rows: list[dict] = []
    estimates: list = []
    if "digits" in parts:
        from digits_resnet import trained_digits_resnet18

        resnet = trained_digits_resnet18()
        rows.append(digits_case(resnet, "digits ResNet-18", "conservative", "noise", estimates))
        for preset in PRESETS:
            for mode in ("data-free", "user data"):
                rows.append(digits_case(resnet, "digits ResNet-18", preset, mode, estimates))
    if "cnn" in parts:
        cnn = trained_digits_cnn()
        for mode in ("data-free", "user data"):
            rows.append(digits_case(cnn, "digits CNN", "conservative", mode, estimates))
    if "minilm" in parts:
        rows.extend(minilm_case(preset, mode) for mode in ("built-in sentences", "16 sentences") for preset in PRESETS)
    if "minilm-conservative" in parts:  # the default search alone: what `mirror` runs without user data
        rows.append(minilm_case("conservative", "built-in sentences"))
    print_rows(rows)
    if estimates:
        print_estimates(estimates)
    if "repro" in parts:
        from digits_resnet import trained_digits_resnet18

        resnet, runs = trained_digits_resnet18(), []
        for _ in range(3):
            optimized, report = create_post_download_optimizer("conservative").optimize_model(
                model=resnet, model_name="digits", example_inputs=torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
            runs.append((tuple(report["selection"]["selected"] or ()), stored_sha256(optimized)))
        same = len(set(runs)) == 1
        print(f"\nreproducibility (conservative, data-free, 3 runs): methods {[r[0] for r in runs]}, "
              f"safetensors sha256 {[r[1][:12] for r in runs]}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
