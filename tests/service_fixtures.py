"""Shared, cached fixtures of the service-layer tests: small synthetic data sets and a
workspace discovered once per test session (tests mutate copies of it).

Run as ``python -m tests.service_fixtures crash-retrain <home> <name>`` from the repo root:
the child process of the service-level SIGKILL test.
"""

from __future__ import annotations

import shutil
import sys
import time
import zipfile
from pathlib import Path

from engine.config import ProtoAtlasConfig
from engine.synth import SynthConfig, write_mvtec
from tests.conftest import TEST_IMAGE_SIZE

S = TEST_IMAGE_SIZE
#: Engine settings that keep discovery fast where the quality of the types is not the point:
#: 128 px network input, 96 px crops, 2 reference normals per crop, 5 head epochs.
FAST = {
    "backbone": {"image_size": S, "batch_size": 8},
    "crops": {"output_size": 96},
    "discovery": {"head_epochs": 5, "n_references": 2},
}
TYPES = ("scratch", "spot", "missing")
#: Defect type absent from the first batch (the second batch brings a few of it).
NOVEL = "crack"
MARKER = "KILL-POINT"
WS = "w"


def fast_config(seed: int = 0) -> ProtoAtlasConfig:
    return ProtoAtlasConfig(device="cpu", seed=seed).with_overrides(**FAST)


def fast_cli(config_from):
    """Wrap ``protoatlas.cli._config_from``: the command's config plus the FAST settings
    (the CLI has no options for crop size, references or epochs)."""

    def inner(args):
        return config_from(args).with_overrides(**FAST)

    return inner


_CACHE: dict[str, Path] = {}


def shared_base(tmp_path_factory) -> Path:
    """The session's folder for the cached data sets and workspaces."""
    base = Path(tmp_path_factory.getbasetemp()) / "service-shared"
    base.mkdir(exist_ok=True)
    return base


def data_root(base: Path, key: str) -> Path:
    """A synthetic MVTec-layout folder, written once per session under ``base``."""
    if key not in _CACHE:
        root = base / f"data-{key}"
        if key == "first":  # 12 normals; 2 good + 3 types x 4 test images
            write_mvtec(
                root,
                SynthConfig(size=(S, S)),
                n_train=12,
                n_test_good=2,
                n_per_type=4,
                types=TYPES,
                seed=11,
            )
        elif key == "second":  # same types, new images (and a novel type)
            write_mvtec(
                root,
                SynthConfig(size=(S, S)),
                n_train=2,
                n_test_good=1,
                n_per_type=2,
                types=TYPES,
                seed=23,
            )
            novel = root / "novel"
            write_mvtec(
                novel,
                SynthConfig(size=(S, S)),
                n_train=1,
                n_test_good=0,
                n_per_type=4,
                types=(NOVEL,),
                seed=31,
            )
            shutil.move(str(novel / "test" / NOVEL), str(root / "test" / NOVEL))
        elif key == "tiny":  # for the CLI runs: 8 normals; 1 good + 3 types x 3
            write_mvtec(
                root,
                SynthConfig(size=(S, S)),
                n_train=8,
                n_test_good=1,
                n_per_type=3,
                types=TYPES,
                seed=5,
            )
        else:
            raise KeyError(key)
        _CACHE[key] = root
    return _CACHE[key]


def zip_folder(folder: Path, out: Path, extra: dict[str, Path] | None = None) -> Path:
    """Zip every file of ``folder`` (names relative to it) plus ``extra`` name -> file."""
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        for name, path in (extra or {}).items():
            zf.write(path, name)
    return out


def discovered_home(base: Path) -> tuple[Path, list[tuple[str, float]]]:
    """A home holding workspace ``w``: the "first" batch discovered (3 clusters); and the
    progress calls of that upload. Made once per session; copy it before mutating."""
    from protoatlas.service import WorkspaceService

    if "home" not in _CACHE:
        data = data_root(base, "first")
        home = base / "discovered"
        calls: list[tuple[str, float]] = []
        with WorkspaceService(home, WS, config=fast_config()) as service:
            service.upload_batch(
                data / "test",
                data / "train" / "good",
                clusters=3,
                batch_name="first",
                progress=lambda stage, f: calls.append((stage, f)),
            )
        _CACHE["home"] = home
        _CACHE["progress"] = calls  # type: ignore[assignment]
    return _CACHE["home"], _CACHE["progress"]  # type: ignore[return-value]


def copy_home(home: Path, dest: Path) -> Path:
    """A private copy of a (closed) home folder."""
    shutil.copytree(home, dest)
    return dest


# ------------------------------------------------------------------- crash child process
def _crash_retrain(home: Path) -> None:
    """Retrain, printing the service stages; SIGKILLed by the parent inside the storage
    transaction (the first embeddings chunk of ``apply_retrain`` is written)."""
    from protoatlas.service import WorkspaceService

    service = WorkspaceService(home, WS, config=fast_config())
    original = service.ws.apply_retrain

    def kill_point(stage: str, done: int, total: int) -> None:
        print(MARKER, stage, done, total, flush=True)
        time.sleep(120)  # the parent SIGKILLs us here, inside the transaction

    def apply_retrain(*args, **kwargs):
        kwargs["progress"] = kill_point
        return original(*args, **kwargs)

    service.ws.apply_retrain = apply_retrain  # type: ignore[method-assign]
    service.retrain(progress=lambda stage, f: print("STAGE", stage, flush=True))
    print("FINISHED-WITHOUT-KILL", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "crash-retrain":
        _crash_retrain(Path(sys.argv[2]))
