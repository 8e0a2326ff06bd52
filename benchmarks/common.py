"""Shared helpers of the benchmark scripts: machine description and result recording."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def machine() -> dict[str, object]:
    """Where a benchmark ran: CPU model, cores, torch threads, GPU if any, date."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def record(path: str | os.PathLike, result: dict[str, object]) -> None:
    """Append one JSON line to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(result) + "\n")


def split_engine_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the engine options after ``--``) of ``argv``."""
    if "--" not in argv:
        return list(argv), []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]
