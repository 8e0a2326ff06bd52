"""Schema versions: every earlier version migrates forward with its data intact."""

from __future__ import annotations

import datetime

import duckdb
import pytest

from storage import SchemaError, Workspace, doctor, schema, summary
from storage.audit import GENESIS, canonical, row_hash, verify_chain


def _make_at_version(tmp_path, k: int) -> None:
    """A workspace file created by applying migrations 1..k only, with data of that era."""
    root = tmp_path / "w"
    root.mkdir(parents=True)
    con = duckdb.connect(str(root / "workspace.duckdb"))
    schema.migrate(con, dim=4, upto=k)
    ts = "2024-01-02 03:04:05"
    con.execute(f"INSERT INTO batches VALUES (1, 'old', '{{}}', '{ts}', 1)")
    con.execute(f"INSERT INTO model_versions VALUES (1, NULL, 'discover', '{ts}', NULL, '{{}}')")
    con.execute(f"INSERT INTO images VALUES (1, '{'a' * 64}', 'png', 8, 6, 3, '{ts}')")
    con.execute("INSERT INTO batch_images VALUES (1, 1, 'x/a.png', 0.7, true, NULL, NULL, NULL)")
    con.execute(
        "INSERT INTO regions VALUES (1, 1, 1, 0, 0, 2, 2, 4, 0.5, NULL), "
        "(2, 1, 1, 3, 3, 5, 6, 6, 0.4, NULL)"
    )
    con.execute("INSERT INTO embeddings VALUES (1, 1, [1, 0, 0, 0]), (2, 1, [0, 1, 0, 0])")
    con.execute(
        f"INSERT INTO types (id, name, status, created_at) VALUES "
        f"(1, 'T1', 'proposed', '{ts}'), (2, 'scratch', 'confirmed', '{ts}')"
    )
    con.execute(
        "INSERT INTO assignments (region_id, type_id, confidence, model_version) "
        "VALUES (1, 1, 0.9, 1), (2, 2, 0.8, 1)"
    )
    con.execute("INSERT INTO prototypes VALUES (1, 1, [1, 0, 0, 0], 1)")
    if k >= 2:  # the review era: the ingest and a reviewer action with their audit rows
        created = {
            str(i): {"name": n, "status": s, "origin": "model", "merged_into": None, "version": 1}
            for i, n, s in [(1, "T1", "proposed"), (2, "scratch", "confirmed")]
        }
        _audit_row(con, k, 1, "model", "ingest_batch", [1, 2], {"types": created})
        con.execute("UPDATE types SET version = 2, origin = 'model' WHERE id = 2")
        con.execute(
            "UPDATE assignments SET source = 'reviewer', confidence = 1.0, "
            "model_version = NULL WHERE region_id = 2"
        )
        after = {
            "types": {
                "2": {
                    "name": "scratch",
                    "status": "confirmed",
                    "origin": "model",
                    "merged_into": None,
                    "version": 2,
                }
            },
            "assignments": {
                "2": {
                    "type_id": 2,
                    "is_normal": False,
                    "source": "reviewer",
                    "confidence": 1.0,
                    "model_version": None,
                }
            },
        }
        _audit_row(con, k, 2, "ann", "move_regions", [2], after)
    if k >= 3:
        con.execute(
            f"INSERT INTO suggestions VALUES (1, 'merge', '{{\"type_ids\": [1, 2]}}', "
            f"0.8, 'close prototypes', 'open', NULL, NULL, NULL, '{ts}', 1)"
        )
    if k >= 4:
        summary.rebuild(con)
    con.close()


def _audit_row(con, k, seq, actor, action, type_ids, after) -> None:
    """An audit row as the code of schema version k wrote it (hash-chained from v3 on)."""
    ts = datetime.datetime(2024, 1, 2, 3, 4, seq)
    after_s = canonical(after)
    con.execute(
        "INSERT INTO audit_log (seq, ts, actor, action, target, type_ids, before, after)"
        " VALUES (?, ?, ?, ?, '{}', ?, '{}', ?)",
        [seq, ts, actor, action, type_ids, after_s],
    )
    if k >= 3:
        prev = con.execute(
            "SELECT coalesce(max(hash), ?) FROM audit_log WHERE seq = ?", [GENESIS, seq - 1]
        ).fetchone()[0]
        digest = row_hash(prev, seq, ts.isoformat(), actor, action, "{}", type_ids, "{}", after_s)
        con.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", [prev, digest, seq]
        )
        con.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)", [f"{seq}:{digest}"])


@pytest.mark.parametrize("k", range(1, schema.LATEST + 1))
def test_every_earlier_version_migrates_with_data_intact(tmp_path, k):
    _make_at_version(tmp_path, k)
    with Workspace.open(tmp_path, "w") as ws:
        assert ws.schema_version() == schema.LATEST
        types = {t.name: t for t in ws.list_types()}
        assert set(types) == {"T1", "scratch"}
        assert types["T1"].n_regions == 1 and types["scratch"].n_regions == 1
        assert types["scratch"].status == "confirmed"
        assert types["T1"].version == 1
        ids, mat = ws.embeddings(1)
        assert ids.tolist() == [1, 2] and mat[1].tolist() == [0, 1, 0, 0]
        detail = ws.image_detail(1)
        assert detail.batches[0].name == "x/a.png" and len(detail.regions) == 2
        regions = {r.id: r for r in detail.regions}
        assert regions[2].source == ("reviewer" if k >= 2 else "model")
        assert regions[1].is_normal is False
        if k >= 3:
            assert [s.reason for s in ws.open_suggestions()] == ["close prototypes"]
        with ws.read() as cur:
            versions = [
                r[0]
                for r in cur.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
            ]
            assert versions == list(range(1, schema.LATEST + 1))
            assert verify_chain(cur) == []
        # the audit chain covers rows written before it existed, and adopted old types
        entries = ws.audit()
        assert entries[0].action == ("adopt_types" if k == 1 else "move_regions")
        problems = [
            p for p in doctor(ws) if p.severity == "error" and "files are missing" not in p.what
        ]  # the old image has no file
        assert problems == []


def test_migration_is_resumable_after_a_failed_step(tmp_path, monkeypatch):
    _make_at_version(tmp_path, 2)

    def boom(con, dim):
        con.execute("CREATE TABLE half_done(x INT)")
        raise RuntimeError("power cut")

    steps = list(schema.MIGRATIONS)
    monkeypatch.setattr(
        schema, "MIGRATIONS", steps[:2] + [schema.Migration(3, "x", boom)] + steps[3:]
    )
    with pytest.raises(RuntimeError, match="power cut"):
        Workspace.open(tmp_path, "w")
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    with Workspace.open(tmp_path, "w") as ws:
        assert ws.schema_version() == schema.LATEST
        with ws.read() as cur:  # the failed step left nothing behind
            assert (
                cur.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'half_done'"
                ).fetchone()[0]
                == 0
            )


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    Workspace.open(tmp_path, "w").close()
    con = duckdb.connect(str(tmp_path / "w" / "workspace.duckdb"))
    con.execute("INSERT INTO schema_version VALUES (99, 'future', NULL)")
    con.close()
    with pytest.raises(SchemaError, match="schema version 99 .* upgrade ProtoAtlas"):
        Workspace.open(tmp_path, "w")


def test_read_only_refuses_an_unmigrated_file(tmp_path):
    _make_at_version(tmp_path, 2)
    with pytest.raises(SchemaError, match="open it once for writing"):
        Workspace.open(tmp_path, "w", read_only=True)


def test_duckdb_alter_rules_the_migrations_rely_on():
    """Written down in schema.py: ADD COLUMN works on PK/indexed tables, RENAME does not."""
    con = duckdb.connect()
    con.execute("CREATE TABLE pk(id BIGINT PRIMARY KEY, name VARCHAR UNIQUE)")
    con.execute("INSERT INTO pk VALUES (1, 'a')")
    con.execute("ALTER TABLE pk ADD COLUMN v BIGINT NOT NULL DEFAULT 1")
    assert con.execute("SELECT v FROM pk").fetchall() == [(1,)]
    con.execute("CREATE TABLE ix(id BIGINT, x INT)")
    con.execute("CREATE INDEX ix_x ON ix(x)")
    con.execute("ALTER TABLE ix ADD COLUMN y INT")
    with pytest.raises(duckdb.Error):
        con.execute("ALTER TABLE ix RENAME COLUMN x TO z")
    with pytest.raises(duckdb.Error):
        con.execute("ALTER TABLE ix DROP COLUMN x")
