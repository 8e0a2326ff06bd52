"""Configuration of the storage layer (one documented dataclass, like ``engine.config``).

Every tunable number of ``storage`` lives here with its default and the reason for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorageConfig:
    """How a workspace is opened and written."""

    #: Embedding dimension recorded when a workspace is created without one. The first
    #: ingest may still change it while no vector is stored (see docs/decisions.md).
    embedding_dim: int = 256
    #: Rows per INSERT statement during an ingest or a retrain. Bounds the memory of the
    #: numpy -> DuckDB vector conversion (50 000 x 256 floats = 51 MB) and is the grain at
    #: which ``progress`` callbacks fire.
    insert_chunk_rows: int = 50_000
    #: When the writer opens a workspace after an ingest/retrain that did not finish (its
    #: ``pending/`` marker is still there), delete files under ``images/`` and ``blobs/``
    #: that no row references (written before a commit that never happened). Safe because
    #: DuckDB lets only one process open the file. ``Workspace.clean_orphans()`` forces it.
    clean_orphans_on_open: bool = True
    #: Call ``os.sync()`` once after writing new image/blob files and before the commit that
    #: references them, so a power loss cannot leave rows pointing at lost files. One call
    #: instead of one fsync per file (0.5 ms per file measured, i.e. minutes per 10^5 files).
    sync_files: bool = True
    #: DuckDB worker threads; ``None`` keeps DuckDB's default (all cores).
    threads: int | None = None
    #: DuckDB ``memory_limit`` such as ``"4GB"``; ``None`` keeps DuckDB's default (80 % of RAM).
    memory_limit: str | None = None
