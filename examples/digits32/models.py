"""Architectures of the digits32 demo ensemble (32x32 grayscale digits, 10 classes).

The members differ in cost by two orders of magnitude (multiply-adds per image):
`mlp` ~66 k, `small` ~45 k, `wide` ~4.3 M, `deep` ~4.6 M. A confidence cascade that answers
most images with the cheap members saves most of the compute.
"""

from torch import nn


def mlp() -> nn.Module:
    """A 1024-64-10 perceptron on the flattened image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 10))


def small() -> nn.Module:
    """Two strided 3x3 convolutions and global average pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def wide() -> nn.Module:
    """Full-resolution 3x3 convolutions (16-16-32-32 channels) with batch norm."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def deep() -> nn.Module:
    """A 5x5 stem, then 3x3 convolutions at 16x16 and 8x8 (24-48-48 channels)."""
    return nn.Sequential(
        nn.Conv2d(1, 24, 5, padding=2), nn.BatchNorm2d(24), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(48, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 10),
    )
