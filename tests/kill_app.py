"""The kill trials of the served app (``tests/test_kill.py``, ``benchmarks/bench_kill.py
--mode app``): ``protoatlas serve`` runs as its own process on a copy of a discovered
workspace; a reviewer drives it through the named API endpoints (``gradio_client``):
``/type_action`` (confirm, reject, rename, merge, split, move), ``/undo``,
``/next_suggestion`` + ``/answer_suggestion`` (each answer starts a background retrain),
``/export``, ``/retrain`` and ``/upload_batch`` (engine work in the server). The server
is SIGKILLed at a seeded moment.

The reviewer's log (one JSON line each, flushed and fsynced): a ``start`` line before each
request, an ``ack`` line as soon as a response said the decision was applied, then a
``seqs`` line with the audit entries the server wrote for it, read back through
``/audit``. A trial then checks the workspace as the kill left it, restarts ``serve`` on
it (the dead server's lock must not refuse it), does one more action there, stops it and
checks the workspace again.

``python -m tests.kill_app URL LOG SEED DATA`` runs the reviewer until the server is gone.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.kill_engine import write_batch
from tests.kill_workload import append, read_log, spawn, wait_for_step
from tests.service_fixtures import fast_config

WS = "default"
KINDS = {
    "answer": 3,
    "upload": 2,
    "retrain": 2,
    "confirm": 1,
    "reject": 1,
    "rename": 1,
    "merge": 1,
    "split": 1,
    "move": 1,
    "undo": 1,
    "export": 1,
}
ENGINE_KINDS = ("upload", "retrain")


def prepare_home(folder: Path, seed: int = 0) -> Path:
    """A home holding workspace ``default`` with its first batch discovered (fast settings,
    128 px); copy it for each trial."""
    from protoatlas.service import WorkspaceService

    home = folder / "home"
    batch = write_batch(folder / "first", seed, first=True)
    with WorkspaceService(home, WS, config=fast_config(seed)) as service:
        service.upload_batch(batch / "test", batch / "train" / "good", clusters=3, actor="setup")
    return home


def _audit_rows(client) -> list[list]:
    """The audit log's newest rows: [seq, time, actor, action, type ids, ...]."""
    return client.predict("", "", "", "", api_name="/audit")["data"]


def _request(client, rng: random.Random, kind: str, n: int, data: Path, seed: int):
    """One reviewer request; the response when the server applied a decision, else None."""
    from gradio_client import handle_file

    if kind == "upload":
        batch = write_batch(data / f"b{n}", seed * 1000 + n)
        files = [handle_file(str(p)) for p in sorted((batch / "test").rglob("*.png"))]
        report, _ = client.predict(
            files, None, "", "auto", "auto", f"b{n}", api_name="/upload_batch"
        )
        return report
    if kind == "retrain":
        out = client.predict(api_name="/retrain")
        return out if out.get("ok") and out.get("model_version") is not None else None
    if kind == "undo":
        out = client.predict(api_name="/undo")
        return out if out.get("ok") else None
    if kind == "export":
        client.predict("csv", "", [], api_name="/export")
        return None  # no decision
    if kind == "answer":
        q = client.predict(api_name="/next_suggestion")
        answers = [a for a in (q or {}).get("answers") or [] if a != "skip"]
        if not q or not q.get("id") or not answers:
            return None
        out = client.predict(
            q["id"], str(rng.choice(answers)), "", None, api_name="/answer_suggestion"
        )
        return out if out.get("ok") and out.get("applied", True) else None
    types = [row for row in client.predict(api_name="/list_types")["data"] if row[3] > 0]
    if len(types) < 2:
        return None
    t = rng.choice(types)
    others = [row for row in types if row[0] != t[0]]
    argument, region_ids = "", None
    if kind == "rename":
        argument = f"name-{n}"
    elif kind == "merge":
        argument = str(rng.choice(others)[0])
    elif kind in ("split", "move"):
        members = [m["region_id"] for m in client.predict(t[0], api_name="/type_detail")["members"]]
        if len(members) < 2:
            return None
        region_ids = members[: max(1, len(members) // 2)]
        if kind == "move":
            argument = str(rng.choice(others)[0])
    out = client.predict(t[0], kind, argument, region_ids, -1, api_name="/type_action")
    return out if out.get("ok") else None


def run(url: str, log: Path, seed: int, data: Path) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    client = Client(url, verbose=False)
    seen = max((row[0] for row in _audit_rows(client)), default=0)
    kinds, weights = list(KINDS), list(KINDS.values())
    with open(log, "a", encoding="utf-8") as fh:
        n = 0
        while True:
            n += 1
            kind = rng.choices(kinds, weights)[0]
            append(fh, {"start": kind, "step": n, "t": round(time.time(), 3)})
            try:
                done = _request(client, rng, kind, n, data, seed)
            except Exception as exc:  # refused (gr.Error), or the server is gone
                if not _alive(url):
                    return
                append(fh, {"refused": kind, "step": n, "error": str(exc)[:200]})
                continue
            if done is None:
                continue
            append(fh, {"ack": kind, "step": n, "t": round(time.time(), 3)})
            new = [row[:5] for row in _audit_rows(client) if row[0] > seen]
            mine = [row for row in new if str(row[2]).startswith("reviewer")]
            seen = max([seen] + [row[0] for row in new])
            append(fh, {"seqs": mine, "step": n})


def _alive(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=5).close()
        return True
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(home: Path, out: Path, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str | None]:
    """``protoatlas serve --home home`` on a free loopback port; (process, its URL or None
    when it did not come up within ``timeout_s``: its output is in ``out``)."""
    port = _free_port()
    repo = Path(__file__).resolve().parents[1]
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "protoatlas",
                "serve",
                "--home",
                str(home),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--quiet",
            ],
            cwd=repo,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
        if b"is running at" in out.read_bytes():
            return proc, f"http://127.0.0.1:{port}/"
        time.sleep(0.05)
    return proc, None


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _acks(entries: list[dict]) -> list[dict]:
    """The acknowledged decisions: {step, kind, seqs (rows read back, or None)}."""
    acks: dict[int, dict] = {}
    for e in entries:
        if "ack" in e:
            acks[e["step"]] = {"step": e["step"], "kind": e["ack"], "seqs": None}
        elif "seqs" in e and e["step"] in acks:
            acks[e["step"]]["seqs"] = e["seqs"]
    return list(acks.values())


def lost_decisions(acks: list[dict], audit: dict[int, tuple[str, str, str]]) -> list[dict]:
    """The acknowledged decisions the audit log does not hold: an entry read back must be
    there with the same actor, action and types; a decision acknowledged just before the
    kill (its entries never read back) needs as many new reviewer entries after the last
    one read back."""
    lost = [
        a
        for a in acks
        if a["seqs"] is not None
        and any(audit.get(row[0]) != (row[2], row[3], row[4]) for row in a["seqs"])
    ]
    read = [row[0] for a in acks if a["seqs"] for row in a["seqs"]]
    last = max(read, default=0)
    unread = [a for a in acks if a["seqs"] is None]
    later = [s for s, (actor, _, _) in audit.items() if s > last and actor.startswith("reviewer")]
    if len(later) < len(unread):
        lost += unread
    return lost


def _audit_map(ws) -> dict[int, tuple[str, str, str]]:
    return {
        e.seq: (e.actor, e.action, ", ".join(str(t) for t in e.type_ids))
        for e in ws.audit(limit=10**7)
    }


def trial(
    folder: Path,
    seed: int,
    seed_home: Path,
    steps: int = 12,
    within_s: float = 1.0,
    kind: str | None = None,
    restart: bool = True,
) -> dict:
    """One trial: serve a copy of ``seed_home``, run the reviewer, SIGKILL the server at a
    seeded moment (up to ``within_s`` seconds after the reviewer's request k began, k drawn
    from 1..``steps``; ``kind``: the k-th request of that kind), then check
    the workspace as left (doctor with hashes), restart ``serve`` on it and apply one more
    decision there (``restart``), stop it (SIGINT) and check again: no doctor error, every
    acknowledged decision in the audit log. Returns the figures."""
    from gradio_client import Client

    from protoatlas.service import WorkspaceService
    from storage import Workspace, doctor

    home, log = shutil.copytree(seed_home, folder / "home"), folder / "log.jsonl"
    (folder / "data").mkdir(exist_ok=True)
    server, url = serve(home, folder / "serve-1.out")
    if url is None:
        _stop(server)
        raise RuntimeError(f"serve did not start: {(folder / 'serve-1.out').read_text()[-2000:]}")
    client = spawn("tests.kill_app", url, str(log), str(seed), str(folder / "data"))
    rng = random.Random(seed)
    step, delay = rng.randint(1, steps), rng.uniform(0, within_s)
    reached = wait_for_step(log, step, lambda: client.poll() is None, 300, kind)
    time.sleep(delay)
    alive = server.poll() is None and client.poll() is None
    _stop(server)  # SIGKILL
    try:
        _, err = client.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        client.kill()
        _, err = client.communicate(timeout=30)
    entries = read_log(log)
    acks = _acks(entries)
    last_start = [e for e in entries if "start" in e or "ack" in e or "refused" in e]
    killed_in = (
        str(last_start[-1]["start"]) if last_start and "start" in last_start[-1] else "between"
    )
    root = home / WS
    markers = len(list((root / "pending").iterdir())) if (root / "pending").is_dir() else 0
    with Workspace.open(home, WS, read_only=True) as ws:
        before = doctor(ws, verify_hashes=True)
        lost_as_left = lost_decisions(acks, _audit_map(ws))
    restarted = restart_ok = None
    after_restart: list = []
    restart_s = None
    if restart:  # the same home at once: the killed server's lock must not refuse it
        t0 = time.perf_counter()
        again, url2 = serve(home, folder / "serve-2.out")
        restarted = url2 is not None
        restart_s = round(time.perf_counter() - t0, 1)
        try:
            if url2 is not None:
                c = Client(url2, verbose=False)
                types = [row for row in c.predict(api_name="/list_types")["data"] if row[3] > 0]
                out = c.predict(
                    types[0][0], "rename", f"after-{seed}", None, -1, api_name="/type_action"
                )
                restart_ok = bool(out.get("ok"))
                after_restart = [r[:5] for r in _audit_rows(c) if r[3] == "rename_type"][:1]
        finally:
            _stop(again, signal.SIGINT)
        if not restarted:
            err += (folder / "serve-2.out").read_bytes()[-2000:]
    service = WorkspaceService(home, WS, config=fast_config(seed))
    try:
        audit = _audit_map(service.ws)
        lost = lost_decisions(acks, audit)
        after = {(p.severity, p.what) for p in service.doctor()}
        after |= {(p.severity, p.what) for p in doctor(service.ws, verify_hashes=True)}
        kept = all(audit.get(r[0]) == (r[2], r[3], r[4]) for r in after_restart)
    finally:
        service.close()
    return {
        "seed": seed,
        "kill_step": step,
        "kill_step_reached": reached,
        "killed_after_s": round(delay, 2),
        "alive_when_killed": alive,
        "killed_in": killed_in,
        "requests": sum("start" in e for e in entries),
        "acknowledged": len(acks),
        "acknowledged_engine": sum(a["kind"] in ENGINE_KINDS for a in acks),
        "acknowledged_unread": sum(a["seqs"] is None for a in acks),
        "audit_entries": len(audit),
        "lost": len(lost),
        "lost_as_left": len(lost_as_left),
        "pending_markers": markers,
        "doctor_errors_as_left": sum(p.severity == "error" for p in before),
        "doctor_warnings_as_left": sorted({p.what.split("(")[0].strip() for p in before}),
        "restarted": restarted,
        "restart_s": restart_s,
        "action_after_restart": restart_ok,
        "action_after_restart_kept": bool(after_restart) and kept if restart else None,
        "doctor_errors": sum(severity == "error" for severity, _ in after),
        "doctor_warnings": sorted(what for severity, what in after if severity != "error"),
        "stderr": err.decode(errors="replace")[-800:] if not alive or restarted is False else "",
    }


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    run(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
