"""Shared fixtures: a small synthetic data set and a detector fitted on it (once per run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import ProtoAtlasConfig
from engine.synth import SynthConfig, SynthSample, generate

#: Network input side used by the fast tests (the product default is 256).
TEST_IMAGE_SIZE = 128
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """Path of a shared real data set, or skip the test with a clear reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"shared data set not available: {path} (only present beside the repo)")
    return path


@pytest.fixture(scope="session")
def small_config() -> ProtoAtlasConfig:
    return ProtoAtlasConfig(device="cpu").with_overrides(
        backbone={"image_size": TEST_IMAGE_SIZE, "batch_size": 8},
        detector={"prototypes_per_scale": 16},
    )


@pytest.fixture(scope="session")
def synth_samples() -> list[SynthSample]:
    cfg = SynthConfig(size=(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE))
    return generate(cfg, n_normal=24, n_per_type=3, seed=7)


@pytest.fixture(scope="session")
def fitted(small_config, synth_samples):
    from engine.detector import PatchCoreDetector

    normals = [s.image for s in synth_samples if s.label == "good"][:16]
    det = PatchCoreDetector(small_config)
    report = det.fit(normals)
    return det, report


def held_out(samples: list[SynthSample]) -> list[SynthSample]:
    """Test samples: the normals not used for fitting plus every defect sample."""
    normals = [s for s in samples if s.label == "good"][16:]
    return normals + [s for s in samples if s.label != "good"]


def as_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)
