"""engine.config is light: importing it loads no compute library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("cv2", "scipy", "torch", "sklearn", "faiss", "timm")


def test_importing_config_loads_no_compute_library() -> None:
    code = f"import engine.config, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_step_configs_keep_their_old_import_paths() -> None:
    from engine import config, crops, mebin, prior

    assert crops.CropConfig is config.CropConfig
    assert mebin.MEBinConfig is config.MEBinConfig
    assert prior.PriorConfig is config.PriorConfig
    assert prior.PRIOR_BACKENDS is config.PRIOR_BACKENDS
