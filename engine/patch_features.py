"""Locally aware patch features (PatchCore): neighbourhood aggregation of several stages.

Each selected stage is averaged over a ``p x p`` neighbourhood (stride 1) of the cells that
hold image content, so a patch feature describes its surroundings and not one cell, and no
padding leaks into the content next to it. Coarser stages are resampled onto the finest grid
with each stage's measured cell positions (:func:`resample_stage`), so a defect lies in the
same cell at every scale; optionally each stage is brought to the same width (PatchCore's
per-layer adaptive average pooling over channels), so every stage weighs equally in an L2
distance; the stages are then concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def local_average(
    feature_map: torch.Tensor, neighbourhood: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Average over a ``neighbourhood`` x ``neighbourhood`` window, same spatial size.

    ``feature_map`` is (B, C, h, w); ``valid`` (B, h, w) bool limits the average to content
    cells (other cells come out as 0).
    """
    if neighbourhood <= 1:
        return feature_map if valid is None else feature_map * valid[:, None]
    pad = neighbourhood // 2
    if valid is None:
        return F.avg_pool2d(
            feature_map, kernel_size=neighbourhood, stride=1, padding=pad, count_include_pad=False
        )
    weight = valid[:, None].to(feature_map.dtype)
    num = F.avg_pool2d(feature_map * weight, neighbourhood, stride=1, padding=pad)
    den = F.avg_pool2d(weight, neighbourhood, stride=1, padding=pad)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num)) * weight


def equal_width(feature_map: torch.Tensor, width: int) -> torch.Tensor:
    """Resample the channel axis of (B, C, h, w) to ``width`` by adaptive average pooling."""
    b, c, h, w = feature_map.shape
    if c == width:
        return feature_map
    flat = feature_map.permute(0, 2, 3, 1).reshape(-1, 1, c)
    return F.adaptive_avg_pool1d(flat, width).reshape(b, h, w, width).permute(0, 3, 1, 2)


def grid_size(feature_map: torch.Tensor) -> tuple[int, int]:
    """(h, w): the spatial size of a (..., h, w) feature map."""
    height, width = feature_map.shape[-2:]
    return (height, width)


def resample_stage(
    feature_map: torch.Tensor,
    stride: int,
    offset: float,
    size: tuple[int, int],
    target_stride: int,
    target_offset: float,
) -> torch.Tensor:
    """Bilinear samples of a (B, C, h, w) stage at the cell centres of another grid.

    Cell ``j`` of a stage lies at input pixel ``stride * j + offset``; the target grid has
    ``size`` cells of ``target_stride`` starting at ``target_offset``. Edges are replicated.
    """
    h, w = feature_map.shape[-2:]
    if (h, w) == tuple(size) and stride == target_stride and offset == target_offset:
        return feature_map

    def axis(n_src: int, n_dst: int) -> torch.Tensor:
        u = (
            torch.arange(n_dst, dtype=torch.float32) * target_stride + target_offset - offset
        ) / stride
        return 2.0 * u / (n_src - 1) - 1.0 if n_src > 1 else torch.zeros(n_dst)

    gy, gx = axis(h, size[0]), axis(w, size[1])
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid[None].expand(feature_map.shape[0], -1, -1, -1).to(feature_map.device)
    return F.grid_sample(
        feature_map, grid, mode="bilinear", padding_mode="border", align_corners=True
    )


def aggregate(
    maps: Sequence[torch.Tensor],
    strides: Sequence[int],
    offsets: Sequence[float],
    neighbourhood: int | Sequence[int],
    valid: Sequence[torch.Tensor] | None = None,
    balance: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The concatenated (B, D, h, w) patch features on the finest grid, and the per-stage
    locally averaged maps at their own resolution (for multi-scale prototypes).

    ``maps`` are (B, C_k, h_k, w_k) per stage; ``neighbourhood`` one window side for all
    stages or one per stage; ``valid`` (optional) the per-stage (B, h_k, w_k) bool content
    cells.
    """
    sides = (
        [int(neighbourhood)] * len(maps)
        if isinstance(neighbourhood, (int, float))
        else [int(n) for n in neighbourhood]
    )
    if len(sides) != len(maps):
        raise ValueError(f"{len(sides)} neighbourhood sides for {len(maps)} stages")
    pooled = [
        local_average(m, p, None if valid is None else v)
        for m, p, v in zip(maps, sides, valid if valid is not None else [None] * len(maps))
    ]
    finest = max(range(len(pooled)), key=lambda i: pooled[i].shape[-1])
    size = grid_size(pooled[finest])
    width = max(m.shape[1] for m in pooled)
    parts = []
    for m, s, o in zip(pooled, strides, offsets):
        up = resample_stage(m, s, o, size, strides[finest], offsets[finest])
        parts.append(equal_width(up, width) if balance else up)
    return torch.cat(parts, dim=1), pooled
