"""PRN-style multi-scale prototypes of normal features and per-patch residuals.

What is kept from PRN (Prototypical Residual Network, CVPR 2023) and why:

* **Multi-scale prototypes of normal patterns**: for every backbone stage, k-means centroids of
  the normal patch features (FAISS k-means). They are a compact model of "normal" per scale.
* **Residual features**: a patch's feature minus its nearest prototype at the same scale. For a
  normal patch the residual is small and unstructured; for a defect it describes *how* the patch
  departs from normal, independent of *where* on the product it lies. This is what the discovery
  engine clusters: two scratches on different parts of a bottle have different features but
  similar residuals.

PRN's trained part, the residual segmentation network with multi-size self-attention, is
:mod:`engine.residual_net` (trained by :mod:`engine.refine_train` on generated anomalies and
confirmed defects); it reads these residuals. Without it, the maps come from the PatchCore
detector, which needs no training.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from engine.patch_features import grid_size, resample_stage


@dataclass
class ResidualPrototypes:
    """One (K_i, C_i) float32 centroid array per stage, finest stage first."""

    centroids: list[np.ndarray]

    @classmethod
    def fit(
        cls, samples: list[np.ndarray], k: int, iterations: int, seed: int
    ) -> "ResidualPrototypes":
        """k-means per stage over (N_i, C_i) samples of normal patch features."""
        centroids = []
        for x in samples:
            x = np.ascontiguousarray(x, dtype=np.float32)
            n_clusters = int(min(k, len(x)))
            km = faiss.Kmeans(
                x.shape[1],
                n_clusters,
                niter=iterations,
                seed=seed,
                verbose=False,
                max_points_per_centroid=512,
            )
            km.train(x)
            centroids.append(np.ascontiguousarray(km.centroids, dtype=np.float32))
        return cls(centroids)

    def residual_maps(self, stage_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage, (B, C_i, h_i, w_i) residual: feature minus its nearest prototype."""
        if len(stage_maps) != len(self.centroids):
            raise ValueError(f"expected {len(self.centroids)} stages, got {len(stage_maps)}")
        out = []
        for fmap, cent in zip(stage_maps, self.centroids):
            b, c, h, w = fmap.shape
            flat = fmap.permute(0, 2, 3, 1).reshape(-1, c).float().cpu()
            protos = torch.from_numpy(cent)
            nearest = torch.cdist(flat, protos).argmin(dim=1)
            res = (flat - protos[nearest]).reshape(b, h, w, c).permute(0, 3, 1, 2)
            out.append(res)
        return out

    def residual_features(
        self, stage_maps: list[torch.Tensor], strides: list[int], offsets: list[float]
    ) -> torch.Tensor:
        """(B, sum C_i, h, w) residuals of all stages on the finest grid (each stage
        resampled at the finest cells' positions, :func:`engine.patch_features.resample_stage`)."""
        maps = self.residual_maps(stage_maps)
        finest = max(range(len(maps)), key=lambda i: maps[i].shape[-2] * maps[i].shape[-1])
        size = grid_size(maps[finest])
        ups = [
            resample_stage(m, s, o, size, strides[finest], offsets[finest])
            for m, s, o in zip(maps, strides, offsets)
        ]
        return torch.cat(ups, dim=1)
