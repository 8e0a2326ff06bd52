"""The demo workspace: the seeded synthetic set (engine.synth), discovered on first start.

Sized to be ready in well under 90 s on 2 CPU cores (see docs/webapp.md for the timing):
128 px images and network input, 20 known-good images, 5 images of each of the 5 defect
types and 3 good test images, 4 reference normals per crop.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from engine.config import ProtoAtlasConfig
from engine.synth import SynthConfig, write_mvtec

DEMO_SIDE = 128
DEMO_TRAIN = 20
DEMO_TEST_GOOD = 3
DEMO_PER_TYPE = 5
#: Reference normals per crop for the residual tokens (the engine default is 8): half the
#: crop-token work, the main cost of a first discovery on a CPU.
DEMO_REFERENCES = 4


def demo_config(device: str | None = "auto") -> ProtoAtlasConfig:
    """The engine configuration of a demo workspace (small network input: fast on a CPU)."""
    return ProtoAtlasConfig(device=device or "auto").with_overrides(
        backbone={"image_size": DEMO_SIDE}, discovery={"n_references": DEMO_REFERENCES}
    )


def write_demo_set(
    root: str | Path,
    *,
    seed: int = 0,
    n_train: int = DEMO_TRAIN,
    n_test_good: int = DEMO_TEST_GOOD,
    n_per_type: int = DEMO_PER_TYPE,
    side: int = DEMO_SIDE,
) -> Path:
    """The synthetic demo set in the MVTec layout (``train/good``, ``test/<type>``)."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    return write_mvtec(
        root,
        SynthConfig(size=(side, side)),
        n_train=n_train,
        n_test_good=n_test_good,
        n_per_type=n_per_type,
        seed=seed,
    )


def zip_folder(folder: str | Path, out: str | Path) -> Path:
    """Zip ``folder`` (member names relative to it, any depth)."""
    folder, out = Path(folder), Path(out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return out


def prepare_demo(service, home: str | Path, *, say: Callable[[str], None] = print):
    """Write the demo set under ``home/demo-data`` and upload it as the first batch."""
    root = write_demo_set(Path(home) / "demo-data")
    last = [-1]

    def progress(stage: str, fraction: float) -> None:
        pct = int(fraction * 100)
        if pct >= last[0] + 10 or stage == "done":
            last[0] = pct
            say(f"  demo: {stage} {pct}%")

    report = service.upload_batch(
        root / "test",
        root / "train" / "good",
        clusters="auto",
        actor="demo",
        batch_name="demo batch",
        progress=progress,
    )
    try:
        service.refresh_suggestions()
    except Exception as exc:  # questions are optional for the demo to open
        say(f"  demo: questions not prepared ({exc})")
    return report
