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
    #: Write rotating snapshots of the database under ``<workspace>/snapshots/`` (DuckDB
    #: ``EXPORT DATABASE`` to Parquet, from a read snapshot): after every ingested batch and
    #: every ``snapshot_every_decisions`` reviewer decisions. ``protoatlas restore`` rebuilds
    #: the database from one. A failed snapshot is logged and never fails the action.
    snapshots: bool = True
    #: Reviewer decisions (audit rows of reviewer actions: confirm, rename, move, answer,
    #: undo, ...) between two snapshots. 50: at most 49 decisions to redo after a restore,
    #: for one snapshot (43 ms at 3 000 regions, 0.84 s at 10^5, measured) per 50 actions.
    snapshot_every_decisions: int = 50
    #: Snapshots kept; the oldest beyond this is removed. Each holds the whole database
    #: (3.7 MB at 3 000 regions, 113 MB at 10^5 256-d regions: the vectors barely compress).
    snapshot_keep: int = 5
    #: Write snapshots in a worker thread, so the action that triggers one does not wait
    #: (its read snapshot never blocks the writer); ``Workspace.close`` waits for it.
    #: ``False`` writes them inline (deterministic; tests).
    snapshot_in_background: bool = True
    #: At open, read every column of every table once and look a key up in every index
    #: (DuckDB verifies a block's checksum as it reads it), through a read-only connection,
    #: so a damaged file is reported at open with the snapshots to restore it from. Adds
    #: 75 ms to an open at 3 000 regions (12 MB file), 0.24 s at 10^5 (120 MB).
    verify_on_open: bool = True

    def __post_init__(self) -> None:
        if self.snapshot_every_decisions < 1:
            raise ValueError("snapshot_every_decisions must be at least 1")
        if self.snapshot_keep < 1:
            raise ValueError("snapshot_keep must be at least 1")
