"""Network architectures an artifact can name, rebuilt at load time from the manifest's ``model.config``.

Weights travel as safetensors, never as pickles, so the serving side must be able to construct the module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with a shortcut (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-style CNN sized for small images (the 8x8 digits): stem, residual stages, pooled linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (32, 64)):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        c_in = widths[0]
        for i, width in enumerate(widths):
            layers.append(ResidualBlock(c_in, width, stride=1 if i == 0 else 2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class StagedResNet(nn.Module):
    """A ResNet for images of any size: a 3x3 stem at full resolution, then one stage per halving, each a stride-2
    residual block, then global average pooling and a linear head.

    ``widths[0]`` is the stem's width and ``widths[1:]`` one per stage; the trainer picks as many stages as take the
    input down to about 4x4 (``stage_widths``), so the receptive field covers the whole image before pooling. With
    ``dropout`` the pooled features are dropped out in training (a no-op when serving).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128),
                 dropout: float = 0.0):  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers.append(ResidualBlock(c_in, c_out, stride=2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))


def stage_widths(height: int, width: int, stem: int = 16, cap: int = 256, smallest: int = 4) -> list[int]:
    """``StagedResNet`` widths for an H x W input: halve until the shorter side is about ``smallest``, doubling the
    width at each stage up to ``cap`` (32x32 -> [16, 32, 64, 128]: 16, 8, 4; 8x8 -> [16, 32]: one stage)."""
    side, widths = min(height, width), [stem]
    while side // 2 >= smallest:
        side //= 2
        widths.append(min(widths[-1] * 2, cap))
    return widths if len(widths) > 1 else [stem, stem * 2]  # at least one stage, even below 8x8


class FeedForward(nn.Module):
    """A feed-forward network for tables: ``hidden`` Linear+ReLU(+dropout) layers, then a linear head.

    With ``hidden=()`` it is a single Linear layer: softmax regression over ``n_outputs`` classes, or linear
    regression with ``n_outputs=1``. Inputs are standardised features (the task does that, see tasks/tabular.py).
    """

    def __init__(self, n_features: int, n_outputs: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LogisticRegression(FeedForward):
    """Binary logistic regression: one logit ``z``, returned as the two logits ``(0, z)``.

    Softmax over ``(0, z)`` is ``(1 - sigmoid(z), sigmoid(z))``, so a binary model keeps one weight vector yet
    answers with the same two-class probabilities (and the same ``Classifier`` answer shape) as any classifier.
    """

    def __init__(self, n_features: int):
        super().__init__(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layers(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "small_resnet": SmallResNet,
    "resnet_stages": StagedResNet,
    "feed_forward": FeedForward,
    "logistic_regression": LogisticRegression,
}


def build_module(architecture: str, config: dict) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**config)
