"""Tiny models defined in code, including the problem cases real models have."""

from __future__ import annotations

import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class KitchenSink(nn.Module):
    """Conv + BN + one ReLU module called three times (like torchvision's BasicBlock) + Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.pool(x).flatten(1)
        return self.fc2(self.relu(self.fc1(x)))


class TiedLM(nn.Module):
    """Embedding whose weight is shared with the output head (tied weights)."""

    def __init__(self, vocab: int = 120, dim: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))))


class SharedBlock(nn.Module):
    """One Linear registered under two names and used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(40, 40)
        self.second = self.first
        self.out = nn.Linear(40, 5)

    def forward(self, x):
        return self.out(self.second(torch.relu(self.first(x))))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


EXAMPLES = {
    "MLP": lambda: torch.randn(4, 32),
    "KitchenSink": lambda: torch.randn(2, 3, 16, 16),
    "TiedLM": lambda: torch.randint(0, 120, (2, 12)),
    "SharedBlock": lambda: torch.randn(3, 40),
    "Recurrent": lambda: torch.randn(2, 7, 16),
}
MODELS = {"MLP": MLP, "KitchenSink": KitchenSink, "TiedLM": TiedLM, "SharedBlock": SharedBlock, "Recurrent": Recurrent}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]()
    if name == "KitchenSink":  # give BatchNorm real statistics so folding/fusion is exercised
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 3, 16, 16))
    return model.eval()


def example(name: str, seed: int = 1):
    torch.manual_seed(seed)
    return EXAMPLES[name]()
