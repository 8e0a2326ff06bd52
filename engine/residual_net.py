"""PRN's residual segmentation network: multi-size window attention over residual features.

The torch model only (the training wrapper is :mod:`engine.refine`). Inputs are, per
backbone stage, the residual of every cell against its nearest normal prototype
(:class:`engine.prototypes.ResidualPrototypes`), with the cells that hold image content; the
output is one logit per cell of the finest grid: "this cell is part of a defect".

* :class:`MultiSizeAttention`: self-attention within non-overlapping windows of several
  sizes (PRN's multi-size self-attention: the whole grid, 1/2, 1/4, 1/8 of it), each window
  attending only to its content cells; the outputs of all sizes are fused by a 1x1 conv.
* :class:`ResidualSegmenter`: per stage a 1x1 projection and a multi-size attention block;
  the stages resampled onto the finest grid (at each stage's measured cell positions),
  optionally with the detector's patch distance as one more channel, and a small conv head.
* :func:`focal_loss` and :func:`smooth_l1_loss`: PRN's two mask losses, over content cells,
  with soft targets (the share of a cell the defect covers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.patch_features import resample_stage


def window_side(cells: int, fraction: float, max_cells: int) -> int:
    """Window side (cells) for a grid side of ``cells`` at ``fraction`` of it, in [1, max]."""
    return max(1, min(max_cells, cells, math.ceil(cells * fraction)))


def partition(
    x: torch.Tensor, valid: torch.Tensor, window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Cut (B, C, h, w) into windows of ``window`` cells (the grid padded with invalid cells).

    Returns ``tokens`` (B * n_windows, wh * ww, C), their bool ``valid`` (same leading
    shape, no channel) and the padded grid size.
    """
    b, c, h, w = x.shape
    wh, ww = window
    ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    x = F.pad(x, (0, pw - w, 0, ph - h))
    v = F.pad(valid, (0, pw - w, 0, ph - h), value=False)
    x = x.view(b, c, ph // wh, wh, pw // ww, ww).permute(0, 2, 4, 3, 5, 1)
    v = v.view(b, ph // wh, wh, pw // ww, ww).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, wh * ww, c), v.reshape(-1, wh * ww), (ph, pw)


def merge(
    tokens: torch.Tensor, batch: int, padded: tuple[int, int], window: tuple[int, int], size
) -> torch.Tensor:
    """Inverse of :func:`partition`: (B * n, wh * ww, C) back to (B, C, h, w)."""
    ph, pw = padded
    wh, ww = window
    c = tokens.shape[-1]
    x = tokens.view(batch, ph // wh, pw // ww, wh, ww, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, c, ph, pw)[:, :, : size[0], : size[1]]


class MultiSizeAttention(nn.Module):
    """Self-attention within windows of several sizes over a (B, C, h, w) grid.

    A depth-wise 3x3 conv gives the tokens their position; each window size runs one
    multi-head attention in which a query sees only the content cells of its window; the
    outputs of all sizes are concatenated, fused by a 1x1 conv and added to the input.
    Cells outside the content come out as 0.
    """

    def __init__(
        self, channels: int, heads: int, fractions: Sequence[float], max_window_cells: int
    ) -> None:
        super().__init__()
        if not fractions:
            raise ValueError("MultiSizeAttention needs at least one window fraction")
        self.fractions = tuple(float(f) for f in fractions)
        self.max_window_cells = int(max_window_cells)
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(channels, heads, batch_first=True) for _ in self.fractions
        )
        self.fuse = nn.Conv2d(channels * len(self.fractions), channels, 1)

    def windows(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The (wh, ww) window of every fraction for a grid of ``size`` cells."""
        return [
            (
                window_side(size[0], f, self.max_window_cells),
                window_side(size[1], f, self.max_window_cells),
            )
            for f in self.fractions
        ]

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, h, w), ``valid`` (B, h, w) bool -> (B, C, h, w)."""
        b, _, h, w = x.shape
        keep = valid[:, None].to(x.dtype)
        x = x * keep
        x = x + self.position(x) * keep
        outs = []
        for window, attn in zip(self.windows((h, w)), self.attention):
            tokens, tvalid, padded = partition(x, valid, window)
            tokens = self.norm(tokens)
            # a window without content attends to itself (its output is masked anyway)
            empty = ~tvalid.any(dim=1)
            ignore = ~tvalid
            ignore[empty] = False
            out, _ = attn(tokens, tokens, tokens, key_padding_mask=ignore, need_weights=False)
            outs.append(merge(out, b, padded, window, (h, w)))
        return (x + self.fuse(torch.cat(outs, dim=1))) * keep


class ResidualSegmenter(nn.Module):
    """Residual features of every stage -> one defect logit per finest-grid cell.

    ``stage_channels``, ``strides`` and ``offsets`` describe the backbone's stages, finest
    first (``offsets``: the input pixel of cell 0's centre, :mod:`engine.backbone`).
    ``scales`` (one per stage, set by training) divides each stage's residual so that a
    normal residual has unit size.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        strides: Sequence[int],
        offsets: Sequence[float],
        *,
        width: int = 32,
        heads: int = 2,
        fractions: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        max_window_cells: int = 32,
        use_distance: bool = True,
    ) -> None:
        super().__init__()
        if not (len(stage_channels) == len(strides) == len(offsets)):
            raise ValueError("one channel count, stride and offset per stage")
        self.stage_channels = [int(c) for c in stage_channels]
        self.strides = [int(s) for s in strides]
        self.offsets = [float(o) for o in offsets]
        self.use_distance = bool(use_distance)
        self.width, self.heads = int(width), int(heads)
        self.fractions = tuple(float(f) for f in fractions)
        self.max_window_cells = int(max_window_cells)
        #: (n_stages,) divisor of each stage's residual (set by training)
        self.scales: torch.Tensor
        self.register_buffer("scales", torch.ones(len(self.stage_channels)))
        self.project: nn.ModuleList = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1), nn.GELU()) for c in self.stage_channels
        )
        self.attend: nn.ModuleList = nn.ModuleList(
            MultiSizeAttention(width, heads, fractions, max_window_cells)
            for _ in self.stage_channels
        )
        fused = width * len(self.stage_channels) + (1 if self.use_distance else 0)
        self.head = nn.Sequential(
            nn.Conv2d(fused, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 1, 1),
        )

    def forward(
        self,
        residuals: Sequence[torch.Tensor],
        valid: Sequence[torch.Tensor],
        distance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, 1, h, w) on the finest grid.

        ``residuals``: per stage (B, C_k, h_k, w_k); ``valid``: per stage (B, h_k, w_k)
        bool content cells; ``distance``: (B, 1, h, w) patch distance / threshold on the
        finest grid (required when the model uses it).
        """
        if len(residuals) != len(self.stage_channels) or len(valid) != len(residuals):
            raise ValueError(f"expected {len(self.stage_channels)} stages of residuals and masks")
        finest = 0
        size = (int(residuals[finest].shape[-2]), int(residuals[finest].shape[-1]))
        parts = []
        for k, (res, val) in enumerate(zip(residuals, valid)):
            scale = self.scales[k].clamp_min(1e-6)
            x = self.project[k](res / scale)
            x = self.attend[k](x, val)
            parts.append(
                resample_stage(
                    x, self.strides[k], self.offsets[k], size, self.strides[0], self.offsets[0]
                )
            )
        if self.use_distance:
            if distance is None:
                raise ValueError("this segmenter reads the patch distance: pass distance")
            parts.append(distance)
        keep = valid[finest][:, None].to(parts[0].dtype)
        return self.head(torch.cat(parts, dim=1) * keep)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, gamma: float = 2.0
) -> torch.Tensor:
    """Mean focal loss over the ``valid`` cells (soft ``target`` in [0, 1]); ``valid`` may
    be a float weight per cell (a weighted mean).

    ``bce * |target - p| ** gamma``: with hard targets this is Lin et al.'s focal loss.
    """
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = bce * (target - prob).abs().pow(gamma)
    weight = valid.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def smooth_l1_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean smooth-L1 between the predicted probability and ``target`` over ``valid`` cells
    (bool, or a float weight per cell)."""
    loss = F.smooth_l1_loss(torch.sigmoid(logits), target, reduction="none", beta=1.0)
    weight = valid.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)
