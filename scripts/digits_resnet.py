"""A real, trained model and real labelled data for accuracy measurements, offline.

No pretrained CNN weights can be downloaded here, and a random-weight CNN says nothing about
accuracy, so benchmarks and accuracy tests use a torchvision ResNet-18 adapted to 32x32 input
(3x3 stem, no max-pool) trained on scikit-learn's bundled digits (1,797 8x8 images, 10 classes),
with a fixed seed and a fixed 400-image held-out split. The trained weights are kept as safetensors
in `$PDO_HUB_DEV_CACHE` (default `~/.cache/pdo_hub_dev`) so later runs skip the ~90 s of training.

Usage from a test or script:
    from digits_resnet import load_digits_split, trained_digits_resnet18, top1_accuracy
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

HELD_OUT = 400
SIZE = 32


def dev_cache() -> Path:
    return Path(os.environ.get("PDO_HUB_DEV_CACHE", "~/.cache/pdo_hub_dev")).expanduser()


def digits_resnet18() -> nn.Module:
    """torchvision's ResNet-18 (BasicBlock reuses one ReLU module twice) with a 32x32-friendly stem."""
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): 3x32x32 float images normalized to mean 0 / std 1."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    return images[train], labels[train], images[test], labels[test]


@torch.inference_mode()
def top1_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 100) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / len(labels)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(labels) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def trained_digits_resnet18(seed: int = 0, epochs: int = 3) -> nn.Module:
    """The trained model, from the dev cache or trained now (deterministic for a seed)."""
    path = dev_cache() / f"digits_resnet18_seed{seed}_epochs{epochs}.safetensors"
    model = digits_resnet18()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    torch.manual_seed(seed)
    model = digits_resnet18()
    x_train, y_train, _, _ = load_digits_split(seed)
    train(model, x_train, y_train, epochs=epochs, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return model


if __name__ == "__main__":
    start = time.perf_counter()
    net = trained_digits_resnet18()
    _, _, x_test, y_test = load_digits_split()
    print(f"digits ResNet-18: top-1 {100 * top1_accuracy(net, x_test, y_test):.2f}% on {HELD_OUT} held-out images "
          f"({time.perf_counter() - start:.1f} s incl. training if not cached)")
