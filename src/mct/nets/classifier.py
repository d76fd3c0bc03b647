"""A small CNN classifier whose penultimate layer is the feature space of the embedded
FID/KID/precision/recall (the role Inception-v3's pool features play at paper scale).

``SmallCNN(in_channels, img_resolution, num_classes, width, feature_dim)``;
``trunk(x)`` gives the (N, feature_dim) penultimate activations, ``forward(x)`` the
logits, and ``features(x)`` the penultimate activations times ``feature_scale`` (a
buffer set once after training so that the training images' features have unit
mean square per dimension: FID then has a fixed, readable unit instead of one that
depends on the scale the classifier happened to learn). Input: float images in [-1, 1], NCHW. :meth:`SmallCNN.arch` returns the
kwargs that rebuild it (checkpoints store them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1, img_resolution: int = 8, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 64, dropout: float = 0.2):
        super().__init__()
        if min(in_channels, img_resolution, num_classes, width, feature_dim) < 1:
            raise ConfigError("SmallCNN needs positive in_channels, img_resolution, num_classes, width, feature_dim")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self._arch = dict(in_channels=in_channels, img_resolution=img_resolution, num_classes=num_classes,
                          width=width, feature_dim=feature_dim, dropout=dropout)
        w = width
        self.conv0 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.conv1 = nn.Conv2d(w, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.pool_size = 2 if img_resolution <= 16 else 3
        self.fc = nn.Linear(2 * w * self.pool_size**2, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def arch(self) -> dict:
        return dict(self._arch)

    def trunk(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv0(x))
        h = F.relu(self.conv1(h))
        h = F.max_pool2d(h, 2)
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        h = F.adaptive_avg_pool2d(h, self.pool_size)
        return F.relu(self.fc(h.flatten(1)))

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x) * self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.trunk(x)))

    @torch.no_grad()
    def calibrate(self, images: Tensor, batch_size: int = 500) -> float:
        """Set ``feature_scale`` so that ``features(images)`` has unit mean square per dimension."""
        ms = torch.cat([self.trunk(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]).pow(2).mean()
        self.feature_scale.fill_(float(ms.clamp_min(1e-12).rsqrt()))
        return float(self.feature_scale)
