"""Locally aware patch features (PatchCore): neighbourhood aggregation of several stages.

Each selected stage is average-pooled over a ``p x p`` neighbourhood (stride 1), so a patch
feature describes its surroundings and not one cell; coarser stages are bilinearly upsampled to
the finest grid; optionally each stage is brought to the same width (PatchCore's per-layer
adaptive average pooling over channels), so every stage weighs equally in an L2 distance;
the stages are then concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.backbone import Features


def local_average(feature_map: torch.Tensor, neighbourhood: int) -> torch.Tensor:
    """Average over a ``neighbourhood`` x ``neighbourhood`` window, same spatial size."""
    if neighbourhood <= 1:
        return feature_map
    return F.avg_pool2d(
        feature_map, kernel_size=neighbourhood, stride=1, padding=neighbourhood // 2,
        count_include_pad=False,
    )


def equal_width(feature_map: torch.Tensor, width: int) -> torch.Tensor:
    """Resample the channel axis of (B, C, h, w) to ``width`` by adaptive average pooling."""
    b, c, h, w = feature_map.shape
    if c == width:
        return feature_map
    flat = feature_map.permute(0, 2, 3, 1).reshape(-1, 1, c)
    return F.adaptive_avg_pool1d(flat, width).reshape(b, h, w, width).permute(0, 3, 1, 2)


def aggregate(features: Features, neighbourhood: int, balance: bool = True
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return the concatenated (B, D, h, w) patch features on the finest grid, and the
    per-stage locally averaged maps at their own resolution (for multi-scale prototypes)."""
    pooled = [local_average(m, neighbourhood) for m in features.maps]
    finest = max(range(len(pooled)), key=lambda i: pooled[i].shape[-1])
    size = pooled[finest].shape[-2:]
    width = max(m.shape[1] for m in pooled)
    parts = []
    for m in pooled:
        up = m if m.shape[-2:] == size else F.interpolate(
            m, size=size, mode="bilinear", align_corners=False)
        parts.append(equal_width(up, width) if balance else up)
    return torch.cat(parts, dim=1), pooled
