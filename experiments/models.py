"""Classifiers, each with its last layer ``fc`` (an ``nn.Linear`` with K outputs): an MLP and a small CNN
for the embedded real data, ResNet-18 (3x3 stem, no max-pool) for CIFAR, a tiny CNN for smoke tests."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F


class MLP(nn.Module):
    """Flatten, then ``hidden`` ReLU layers, then the classifier ``fc``."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (16, 32 channels), global average pooling, a 64-wide layer, ``fc``: 1-D or 2-D inputs."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"SmallCNN takes (C, L) or (C, H, W) inputs, got input_shape={tuple(input_shape)}")
        conv, pool = (nn.Conv1d, nn.AdaptiveAvgPool1d) if len(input_shape) == 2 else (nn.Conv2d, nn.AdaptiveAvgPool2d)
        channels, width = input_shape[0], width or max(64, num_classes)  # hadamard_ needs width >= K
        self.body = nn.Sequential(
            conv(channels, 16, 3, padding=1), nn.ReLU(), conv(16, 32, 3, padding=1), nn.ReLU(),
            pool(2), nn.Flatten(), nn.Linear(32 * 2 ** (len(input_shape) - 1), width), nn.ReLU(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 512-d features, classifier ``fc``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


class TinyCNN(nn.Module):
    """A few-thousand-parameter CNN with the same interface (classifier ``fc``), for tests and smoke runs."""

    def __init__(self, num_classes: int = 10, width: int = 8, feature_dim: int | None = None) -> None:
        super().__init__()
        feature_dim = feature_dim or max(32, num_classes)  # hadamard_ needs d >= K
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


ARCHS = ("mlp", "cnn", "resnet18", "tiny")


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The architecture ``name`` (one of :data:`ARCHS`) for K classes and inputs of ``input_shape``."""
    if name == "mlp":
        return MLP(num_classes, input_shape)
    if name == "cnn":
        return SmallCNN(num_classes, input_shape)
    if name in ("resnet18", "tiny"):
        if tuple(input_shape) != (3, 32, 32):
            raise ValueError(f"{name} is built for 3 x 32 x 32 images, got input_shape={tuple(input_shape)}")
        return CifarResNet18(num_classes) if name == "resnet18" else TinyCNN(num_classes)
    raise ValueError(f"unknown model {name!r}; expected one of {ARCHS}")
