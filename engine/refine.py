"""The fitted PRN refinement of a detector: its residual segmenter, score scale and threshold.

:class:`ResidualRefiner` turns one image's stage features (the same ones the PatchCore
detector computes) into a per-cell defect probability on the finest grid; the detector then
upsamples, smooths and restores that grid exactly like its own distance grid
(:meth:`engine.detector.PatchCoreDetector.iter_score`). Training is
:func:`engine.refine_train.fit_refiner`; this module is inference and persistence only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.config import RefineConfig
from engine.prototypes import ResidualPrototypes
from engine.residual_net import ResidualSegmenter

#: Image-score modes of :attr:`RefineConfig.image_score`.
IMAGE_SCORES: tuple[str, ...] = ("refined", "patchcore")
#: Map modes of :attr:`RefineConfig.combine`.
COMBINES: tuple[str, ...] = ("refined", "fused")


@dataclass
class RefinerInputs:
    """One image's segmenter inputs (no batch axis)."""

    residuals: list[torch.Tensor]  # per stage (C_k, h_k, w_k)
    valid: list[torch.Tensor]  # per stage (h_k, w_k) bool
    distance: torch.Tensor  # (1, h, w) patch distance / distance_scale, finest grid


@dataclass
class ResidualRefiner:
    """A trained :class:`ResidualSegmenter` with what scoring needs around it.

    ``distance_scale`` divides the detector's patch distance (its calibrated PatchCore
    threshold at training time); ``base_threshold`` and ``base_calibration`` are the
    PatchCore threshold and calibration scores it replaced (restored on removal).
    """

    net: ResidualSegmenter
    distance_scale: float
    image_score: str
    base_threshold: float
    base_calibration: np.ndarray
    report: dict[str, object] = field(default_factory=dict)
    combine: str = "fused"
    #: The refined image scores of the calibration normals and their threshold (what the
    #: ``refined`` image score is judged by), set by training.
    refined_calibration: np.ndarray | None = None
    refined_threshold: float | None = None
    #: ``fused``: distance * (1 + fuse_weight * probability).
    fuse_weight: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.fuse_weight) or self.fuse_weight < 0:
            raise ValueError(f"RefineConfig.fuse_weight must be >= 0, got {self.fuse_weight!r}")
        if self.combine not in COMBINES:
            raise ValueError(
                f"RefineConfig.combine must be one of {COMBINES}, got {self.combine!r}"
            )
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(
                f"RefineConfig.image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}"
            )
        self.net.eval()

    @classmethod
    def new(
        cls,
        stage_channels: Sequence[int],
        strides: Sequence[int],
        offsets: Sequence[float],
        config: RefineConfig,
        distance_scale: float,
        base_threshold: float,
        base_calibration: np.ndarray,
    ) -> "ResidualRefiner":
        net = ResidualSegmenter(
            stage_channels,
            strides,
            offsets,
            width=config.width,
            heads=config.heads,
            fractions=config.window_fractions,
            max_window_cells=config.max_window_cells,
            use_distance=config.use_distance,
        )
        return cls(
            net,
            float(distance_scale),
            config.image_score,
            float(base_threshold),
            np.asarray(base_calibration, np.float32),
            combine=config.combine,
            fuse_weight=float(config.fuse_weight),
        )

    def inputs(
        self,
        prototypes: ResidualPrototypes,
        stage_maps: Sequence[torch.Tensor],
        stage_valid: Sequence[np.ndarray],
        distance: np.ndarray,
    ) -> RefinerInputs:
        """Residuals of one image's per-stage (C_k, h_k, w_k) maps against ``prototypes``,
        its content cells, and its (h, w) patch-distance grid (filled outside the content)."""
        res = prototypes.residual_maps([m[None].float().cpu() for m in stage_maps])
        return RefinerInputs(
            [r[0] for r in res],
            [torch.from_numpy(np.asarray(v, bool)) for v in stage_valid],
            torch.from_numpy(np.asarray(distance, np.float32) / self.distance_scale)[None],
        )

    def combined(self, prob: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """The map values of one (h, w) grid: ``prob`` (``refined``) or the patch
        ``distance`` / :attr:`distance_scale` times ``1 + fuse_weight * prob`` (``fused``)."""
        if self.combine == "refined":
            return prob
        scaled = np.asarray(distance, np.float32) / self.distance_scale
        return scaled * (1.0 + self.fuse_weight * np.asarray(prob, np.float32))

    @torch.no_grad()
    def probability(self, inputs: Sequence[RefinerInputs]) -> np.ndarray:
        """(B, h, w) float32 defect probability of images whose inputs share one grid size."""
        self.net.eval()
        logits = self.net(*stack(inputs))
        return torch.sigmoid(logits[:, 0]).numpy().astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        arrays = {
            f"refiner.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()
        }
        arrays["refiner_base_calibration"] = self.base_calibration
        if self.refined_calibration is not None:
            arrays["refiner_refined_calibration"] = self.refined_calibration
        net = self.net
        meta = {
            "stage_channels": net.stage_channels,
            "strides": net.strides,
            "offsets": net.offsets,
            "width": net.width,
            "heads": net.heads,
            "fractions": list(net.fractions),
            "max_window_cells": net.max_window_cells,
            "use_distance": net.use_distance,
            "distance_scale": self.distance_scale,
            "image_score": self.image_score,
            "combine": self.combine,
            "fuse_weight": self.fuse_weight,
            "refined_threshold": self.refined_threshold,
            "base_threshold": self.base_threshold,
            "report": self.report,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "ResidualRefiner":
        net = ResidualSegmenter(
            meta["stage_channels"],
            meta["strides"],
            meta["offsets"],
            width=int(meta["width"]),
            heads=int(meta["heads"]),
            fractions=meta["fractions"],
            max_window_cells=int(meta["max_window_cells"]),
            use_distance=bool(meta["use_distance"]),
        )
        state = {
            k.removeprefix("refiner."): torch.from_numpy(np.array(v))
            for k, v in arrays.items()
            if k.startswith("refiner.")
        }
        net.load_state_dict(state)
        return cls(
            net,
            float(meta["distance_scale"]),
            str(meta["image_score"]),
            float(meta["base_threshold"]),
            np.asarray(arrays["refiner_base_calibration"], np.float32),
            dict(meta.get("report") or {}),
            str(meta.get("combine", "refined")),
            arrays.get("refiner_refined_calibration"),
            meta.get("refined_threshold"),
            # files saved before fuse_weight existed fused with weight 1
            float(meta.get("fuse_weight", 1.0)),
        )


def stack(
    inputs: Sequence[RefinerInputs],
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Batch the inputs of images that share one grid size: (residuals, valid, distance)."""
    n_stages = len(inputs[0].residuals)
    residuals = [torch.stack([x.residuals[k].float() for x in inputs]) for k in range(n_stages)]
    valid = [torch.stack([x.valid[k] for x in inputs]) for k in range(n_stages)]
    distance = torch.stack([x.distance.float() for x in inputs])
    return residuals, valid, distance
