"""Load: many reviewers at once through the named API while a batch is analysed.

Usage (from the repo root, inside the venv)::

    python benchmarks/bench_load.py [--reviewers 20] [--seconds 60] [--seed 0]
        [--images 400] [--types 16] [--batches 1] [--server process|thread]
        [--out bench-out/load.jsonl] [--tmp DIR]

A workspace of ``--images`` storage-built images (one region each, ``--types`` proposed
types; ``bench_webapp.build_workspace``) is served on loopback (``webapp.app.launch``), in a
child process by default (``--server thread``: in this process). ``--reviewers`` threads,
each with its own ``gradio_client.Client`` (its own session, so its own actor
``reviewer-<session>`` and its own undo), loop over seeded random actions until the
deadline: ``list_types``, ``type_detail``, confirm / rename / move through ``type_action``
(with the version they saw, sometimes a stale one), ``next_suggestion`` +
``answer_suggestion`` and ``undo``. Meanwhile an uploader client sends ``--batches`` real
batches through ``upload_batch`` (the engine at 128 px with a short head training: the
first one fits the detector on its normals and discovers types, later ones are sorted in).

Recorded: per action and overall, count, p50/p95/max latency (ms, the client's round trip),
errors by kind, conflicts (``conflict: true`` in the answer), tracebacks or 5xx answers; on
the server side the time inside the handlers and the wait for the workspace's writer lock.
Checked afterwards (the server stopped): every acknowledged action is in the audit log
exactly once, under its reviewer, in the time of its call (no lost, no doubled), no refused
one left an entry, the audit log replays without a break (``storage.replay``) to the
current tables, and ``doctor`` finds nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The engine settings of the uploaded batches: what the tests use to keep discovery fast.
ENGINE = {
    "backbone": {"image_size": 128, "batch_size": 8},
    "crops": {"output_size": 96},
    "discovery": {"head_epochs": 5, "n_references": 2},
}
#: The reviewers' mix of actions (weights).
MIX = {
    "list_types": 1,
    "type_detail": 2,
    "confirm": 2,
    "rename": 2,
    "move": 3,
    "answer": 2,
    "undo": 2,
}
WRITES = ("confirm", "rename", "move", "answer", "undo")
SESSION_TAG = 6  # webapp.app.SESSION_TAG (not imported: the client side needs no gradio app)
SERVER_STATS = "server-stats.json"


# ----------------------------------------------------------------------------- server
class Probe:
    """Server-side timings: each wrapped handler's duration and the writer lock's wait
    and hold (``Workspace.transaction``), collected from the server's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.times[key].append(seconds)

    def wrap(self, obj: Any, name: str, key: str | None = None) -> None:
        fn = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key or name, time.perf_counter() - t0)

        setattr(obj, name, timed)

    def install(self, app: Any) -> None:
        views = app.views
        for name in ("type_action", "answer", "next_question", "types_table", "type_members"):
            self.wrap(views, name, f"handler:{name}")
        ws = app.service.ws
        original = ws.transaction
        lock = ws._h.lock

        @contextmanager
        def transaction():
            t0 = time.perf_counter()
            with lock:
                t1 = time.perf_counter()
                with original() as con:
                    yield con
            t2 = time.perf_counter()
            self.add("writer_lock_wait", t1 - t0)
            self.add("writer_lock_hold", t2 - t1)

        ws.transaction = transaction  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {k: _stats(v) for k, v in sorted(self.times.items())}


def engine_service(home: Path, name: str = "default"):
    from engine.config import ProtoAtlasConfig
    from protoatlas.service import WorkspaceService

    config = ProtoAtlasConfig(device="cpu", seed=0).with_overrides(**ENGINE)
    return WorkspaceService(home, name, config=config)


def serve(home: Path, probe: Probe, auto_retrain: bool = False):
    """(app, url, service) of a launched app on loopback over ``home``'s workspace."""
    from webapp.app import launch

    service = engine_service(home)
    app, url = launch(
        service, port=None, quiet=True, prevent_thread_lock=True, auto_retrain=auto_retrain
    )
    probe.install(app)
    return app, url, service


def _child(home: Path, auto_retrain: bool) -> None:
    """``--serve HOME``: serve until stdin closes, then write the server's stats."""
    probe = Probe()
    app, url, service = serve(home, probe, auto_retrain)
    print(f"URL {url}", flush=True)
    sys.stdin.read()
    app.close()
    service.close()
    (home / SERVER_STATS).write_text(json.dumps(probe.summary()))


class Server:
    """The app over ``home``: in a child process (``process``) or in this one (``thread``)."""

    def __init__(self, home: Path, mode: str, auto_retrain: bool = False) -> None:
        self.home, self.mode = home, mode
        self.proc: subprocess.Popen | None = None
        self.stats: dict[str, Any] = {}
        self.startup_s = 0.0
        t0 = time.perf_counter()
        if mode == "thread":
            self.probe = Probe()
            self.app, self.url, self.service = serve(home, self.probe, auto_retrain)
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(home)]
            if auto_retrain:
                cmd.append("--auto-retrain")
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if not line.startswith("URL "):
                self.proc.kill()
                raise RuntimeError(f"the server did not start: {line!r}")
            self.url = line.split(" ", 1)[1].strip()
        self.startup_s = time.perf_counter() - t0

    def stop(self) -> None:
        if self.mode == "thread":
            self.app.close()
            self.service.close()
            self.stats = self.probe.summary()
            return
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        path = self.home / SERVER_STATS
        self.stats = json.loads(path.read_text()) if path.exists() else {}
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- clients
@dataclass
class Call:
    """One API call of a reviewer: wall-clock window, outcome and what it expects in the
    audit log (``expect``: (action, key) or None for none; an answer: its suggestion)."""

    action: str
    start: float
    end: float = 0.0
    ok: bool = False
    conflict: bool = False
    error: str | None = None  # kind of failure: refused / transport / traceback / 5xx
    message: str = ""
    expect: tuple | None = None


@dataclass
class Reviewer:
    index: int
    seed: int
    url: str
    calls: list[Call] = field(default_factory=list)
    actor: str = ""
    crashed: str | None = None

    def connect(self) -> None:
        from gradio_client import Client

        self.client = Client(self.url, verbose=False)
        self.actor = f"reviewer-{self.client.session_hash[:SESSION_TAG]}"
        self.rng = random.Random(self.seed)
        self.types: list[dict[str, Any]] = []
        self.seen: dict[int, dict[str, Any]] = {}  # type id -> last type_detail
        self.n_names = 0

    # one timed call; the result, or None when it failed
    def call(self, action: str, api: str, *args: Any) -> tuple[Call, Any]:
        c = Call(action, time.time())
        t0 = time.perf_counter()
        try:
            out = self.client.predict(*args, api_name=api)
        except Exception as exc:  # the server answered with an error, or the transport broke
            c.end = c.start + (time.perf_counter() - t0)
            text = str(exc)
            c.message = text[:300]
            if "Traceback" in text or 'File "' in text:
                c.error = "traceback"
            elif any(code in text for code in ("500", "502", "503", "504")):
                c.error = "5xx"
            elif type(exc).__name__ == "AppError":
                c.error = "refused"  # gr.Error: a clear message to the user
            else:
                c.error = f"transport:{type(exc).__name__}"
            self.calls.append(c)
            return c, None
        c.end = c.start + (time.perf_counter() - t0)
        if isinstance(out, dict) and "ok" in out:
            c.ok = bool(out.get("ok"))
            c.conflict = bool(out.get("conflict"))
            c.message = str(out.get("message", ""))[:300]
            if "Traceback" in c.message:
                c.error = "traceback"
        else:
            c.ok = True
        self.calls.append(c)
        return c, out

    def list_types(self) -> None:
        _, out = self.call("list_types", "/list_types")
        if out:
            heads = out["headers"]
            self.types = [dict(zip(heads, row)) for row in out["data"]]

    def detail(self, tid: int) -> dict[str, Any] | None:
        _, out = self.call("type_detail", "/type_detail", tid)
        if out:
            self.seen[tid] = out
        return out

    def pick_view(self) -> dict[str, Any] | None:
        """A type as this reviewer saw it: half the time read again now, else the view it
        read before (maybe stale: someone else changed the type since)."""
        if not self.types:
            self.list_types()
        if not self.types:
            return None
        known = [t for t in self.seen.values() if t.get("regions")]
        if known and self.rng.random() < 0.5:
            return self.rng.choice(known)
        return self.detail(int(self.rng.choice(self.types)["id"]))

    def step(self) -> None:
        action = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if action == "list_types":
            self.list_types()
        elif action == "type_detail":
            if not self.types:
                self.list_types()
            if self.types:
                self.detail(int(self.rng.choice(self.types)["id"]))
        elif action == "confirm":
            t = self.pick_view()
            if t is None:
                return
            c, _ = self.call("confirm", "/type_action", t["id"], "confirm", "", None, t["version"])
            # the version matched, so the type was as seen: already confirmed is a no-op
            c.expect = None if t["status"] == "confirmed" else ("confirm_type", t["id"])
        elif action == "rename":
            t = self.pick_view()
            if t is None:
                return
            self.n_names += 1
            name = f"{self.actor} {self.n_names}"  # unique: never the same name twice
            c, _ = self.call("rename", "/type_action", t["id"], "rename", name, None, t["version"])
            c.expect = ("rename_type", name)
        elif action == "move":
            t = self.pick_view()
            others = [
                o for o in self.types if t and o["id"] != t["id"] and o["status"] != "rejected"
            ]
            if t is None or not t["members"] or not others:
                return
            regions = sorted(
                {m["region_id"] for m in self.rng.sample(t["members"], min(2, len(t["members"])))}
            )
            dest = int(self.rng.choice(others)["id"])
            c, _ = self.call(
                "move", "/type_action", t["id"], "move", str(dest), regions, t["version"]
            )
            c.expect = ("move_regions", (tuple(regions), dest))
        elif action == "answer":
            _, q = self.call("next_suggestion", "/next_suggestion")
            if not q or q.get("id") is None:
                return
            answers = q.get("answers") or ["skip"]
            answer = self.rng.choice(answers)
            c, _ = self.call("answer", "/answer_suggestion", q["id"], answer, "", None)
            c.expect = ("answer_suggestion", int(q["id"]))
        elif action == "undo":
            c, _ = self.call("undo", "/undo")
            c.expect = ("undo", None)

    def run(self, start: threading.Barrier, deadline: list[float]) -> None:
        try:
            start.wait()
            while time.monotonic() < deadline[0]:
                self.step()
        except Exception:  # a bug of this script, not of the server: say so in the result
            self.crashed = traceback.format_exc(limit=4)


def uploader(
    url: str, folder: Path, batches: int, deadline: float, out: list[dict], per_type: int = 4
) -> None:
    """Upload ``batches`` real batches through ``upload_batch``, one after the other, the
    first with its normals; stop starting new ones 20 s before the deadline."""
    from gradio_client import Client, handle_file

    from webapp.demo import write_demo_set, zip_folder

    client = Client(url, verbose=False)
    for k in range(batches):
        if k and time.monotonic() > deadline - 20:
            break
        demo = write_demo_set(
            folder / f"set{k}",
            seed=100 + k,
            n_train=12,
            n_test_good=2,
            n_per_type=per_type,
            side=128,
        )
        images = zip_folder(demo / "test", folder / f"batch{k}.zip")
        normals = zip_folder(demo / "train" / "good", folder / f"normals{k}.zip")
        t0 = time.perf_counter()
        started = time.time()
        try:
            report, _ = client.predict(
                [handle_file(str(images))],
                [handle_file(str(normals))] if k == 0 else None,
                "",
                "auto",
                "auto",
                f"load batch {k}",
                api_name="/upload_batch",
            )
            ok, message = "✔" in report, report.splitlines()[0][:200]
        except Exception as exc:
            ok, message = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        out.append(
            {
                "batch": k,
                "ok": ok,
                "seconds": round(time.perf_counter() - t0, 2),
                "start": started,
                "end": time.time(),
                "message": message,
            }
        )


# ----------------------------------------------------------------------------- checks
def _stats(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * scale
    return {
        "n": int(len(a)),
        "p50": round(float(np.percentile(a, 50)), 1 if scale > 1 else 4),
        "p95": round(float(np.percentile(a, 95)), 1 if scale > 1 else 4),
        "max": round(float(a.max()), 1 if scale > 1 else 4),
    }


def _shape(message: str) -> str:
    """A refusal's message without its names, numbers and times (to count its kinds)."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    text = re.sub(r"reviewer-\w+", "R", text)
    text = re.sub(r"\d[\d:.\- ]*", "N", text)
    return text[:110]


def _key(action: str, target: dict[str, Any]) -> tuple:
    if action == "confirm_type":
        return ("confirm_type", target.get("type_id"))
    if action == "rename_type":
        return ("rename_type", target.get("name"))
    if action == "move_regions":
        return ("move_regions", (tuple(target.get("region_ids", ())), target.get("to_type_id")))
    if action == "answer_suggestion":
        return ("answer_suggestion", target.get("suggestion_id"))
    if action == "undo":
        return ("undo", None)
    return (action, None)


def check_audit(ws: Any, reviewers: list[Reviewer]) -> dict[str, Any]:
    """Every acknowledged action exactly once in the audit log: each reviewer's entries are
    matched to its calls by time (a reviewer makes one call at a time, and an entry's
    timestamp is taken inside the call); an answer may bring the entries of what it
    applied (a confirm, a merge, ...) before its own."""
    epoch = dt.datetime(1970, 1, 1)
    by_actor: dict[str, list[tuple[float, int, str, dict]]] = defaultdict(list)
    with ws.read() as cur:
        for seq, ts, actor, action, target in cur.execute(
            "SELECT seq, ts, actor, action, target FROM audit_log ORDER BY seq"
        ).fetchall():
            if action != "replace_suggestions":
                by_actor[actor].append(
                    ((ts - epoch).total_seconds(), seq, action, json.loads(target))
                )
    out = Counter()
    examples: list[str] = []
    actors = {r.actor for r in reviewers}
    out["actors_distinct"] = len(actors) == len(reviewers)
    for r in reviewers:
        entries = by_actor.get(r.actor, [])
        used = set()
        for c in r.calls:
            if c.action not in WRITES:
                continue
            mine = [e for e in entries if c.start - 0.001 <= e[0] <= c.end + 0.001]
            used.update(e[1] for e in mine)
            keys = [_key(e[2], e[3]) for e in mine]
            if c.action == "answer" and c.ok:
                # one answer entry (its suggestion may be the successor of a renewed one)
                hits = sum(1 for k in keys if k[0] == "answer_suggestion")
            elif c.ok:
                want = [c.expect] if c.expect else []
                hits = sum(1 for k in keys if k == c.expect)
                if want and keys and hits == 0:
                    out["wrong_entry"] += 1
                    examples.append(f"{r.actor} {c.action}: expected {c.expect}, got {keys}")
                if not want and keys:
                    out["entry_for_noop"] += 1
                    examples.append(f"{r.actor} {c.action} (no-op): got {keys}")
                    continue
            if c.ok and c.expect is not None:
                out["acknowledged"] += 1
                if hits == 0:
                    out["lost"] += 1
                    examples.append(f"{r.actor} {c.action} {c.expect}: no audit entry")
                elif hits > 1:
                    out["doubled"] += 1
                    examples.append(f"{r.actor} {c.action} {c.expect}: {hits} entries")
            elif c.ok:
                out["acknowledged_noop"] += 1
            elif mine and c.error and c.error.startswith("transport"):
                out["applied_unacknowledged_transport"] += 1
            elif mine:
                out["applied_though_refused"] += 1
                examples.append(f"{r.actor} {c.action} refused ({c.message[:80]}) wrote {keys}")
        orphans = [e for e in entries if e[1] not in used]
        out["orphan_entries"] += len(orphans)
        examples.extend(f"{r.actor}: entry #{e[1]} {e[2]} outside every call" for e in orphans[:3])
    result: dict[str, Any] = {
        k: out.get(k, 0)
        for k in (
            "acknowledged",
            "acknowledged_noop",
            "lost",
            "doubled",
            "wrong_entry",
            "entry_for_noop",
            "applied_though_refused",
            "applied_unacknowledged_transport",
            "orphan_entries",
        )
    }
    result["actors_distinct"] = bool(out["actors_distinct"])
    result["examples"] = examples[:10]
    return result


def check_workspace(home: Path) -> dict[str, Any]:
    """The audit log replayed against the tables, and doctor, on the stopped server's
    workspace."""
    from storage import Workspace, doctor
    from storage.replay import differences, replay

    ws = Workspace.open(home, "default")
    try:
        with ws.read() as cur:
            folded = replay(cur)
            diffs = differences(cur, folded)
        problems = doctor(ws)
    finally:
        ws.close()
    return {
        "audit_entries": folded.n_entries,
        "replay_breaks": len(folded.breaks),
        "replay_break_examples": [f"#{s} {w}" for s, w in folded.breaks[:5]],
        "state_differs": len(diffs),
        "state_diff_examples": diffs[:5],
        "doctor_errors": [f"{p.what} ({p.where})" for p in problems if p.severity == "error"],
    }


# ----------------------------------------------------------------------------- the run
def run_load(
    *,
    reviewers: int = 20,
    seconds: float = 60.0,
    seed: int = 0,
    images: int = 400,
    types: int = 16,
    batches: int = 1,
    batch_per_type: int = 4,
    server: str = "process",
    tmp: str | None = None,
    auto_retrain: bool = False,
) -> dict[str, Any]:
    """One load run; returns the result (see the module docstring)."""
    from benchmarks.bench_webapp import build_workspace
    from engine.config import ProtoAtlasConfig

    dim = ProtoAtlasConfig().discovery.vector_dim  # the engine's, so batches can follow
    base = Path(tempfile.mkdtemp(prefix="load-", dir=tmp))
    result: dict[str, Any] = {
        "bench": "load",
        "reviewers": reviewers,
        "seconds": seconds,
        "seed": seed,
        "images": images,
        "types": types,
        "batches": batches,
        "batch_per_type": batch_per_type,
        "server": server,
    }
    try:
        home = base / "home"
        build_workspace(home, n_images=images, n_types=types, seed=seed, dim=dim).close()
        srv = Server(home, server, auto_retrain)
        result["server_startup_s"] = round(srv.startup_s, 1)
        try:
            team = [Reviewer(i, seed * 1000 + i, srv.url) for i in range(reviewers)]
            connects = [threading.Thread(target=r.connect) for r in team]
            for t in connects:
                t.start()
            for t in connects:
                t.join()
            deadline = [0.0]
            start = threading.Barrier(reviewers + 1)
            threads = [threading.Thread(target=r.run, args=(start, deadline)) for r in team]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            deadline[0] = t0 + seconds
            uploads: list[dict] = []
            up = threading.Thread(
                target=uploader,
                args=(srv.url, base / "upload", batches, t0 + seconds, uploads, batch_per_type),
            )
            (base / "upload").mkdir()
            start.wait()
            up.start()
            for t in threads:
                t.join()
            result["reviewing_s"] = round(time.monotonic() - t0, 1)
            up.join()
            result["wall_s"] = round(time.monotonic() - t0, 1)
        finally:
            srv.stop()
        result["server"] = {"mode": server, **srv.stats}
        result["uploads"] = uploads
        result.update(summarise(team, uploads))
        from storage import Workspace

        ws = Workspace.open(home, "default")
        try:
            result["audit_check"] = check_audit(ws, team)
        finally:
            ws.close()
        result["workspace_check"] = check_workspace(home)
        result["crashed_reviewers"] = [r.crashed for r in team if r.crashed]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return result


def summarise(team: list[Reviewer], uploads: list[dict]) -> dict[str, Any]:
    """Latency per action and overall; outcomes; the same while a batch was stored."""
    calls = [c for r in team for c in r.calls]
    per: dict[str, Any] = {}
    for action in sorted({c.action for c in calls}):
        mine = [c for c in calls if c.action == action]
        per[action] = {
            **_stats([c.end - c.start for c in mine], 1000.0),
            "ok": sum(c.ok for c in mine),
            "refused": sum(not c.ok and not c.error for c in mine),
            "conflicts": sum(c.conflict for c in mine),
            "errors": dict(Counter(c.error for c in mine if c.error)),
        }
    windows = [(u["start"], u["end"]) for u in uploads]
    during = [c for c in calls if any(a <= c.start <= b for a, b in windows)]
    outside = [c for c in calls if not any(a <= c.start <= b for a, b in windows)]
    span = max((c.end for c in calls), default=0) - min((c.start for c in calls), default=0)
    conflict_msgs = [c.message for c in calls if c.conflict]
    return {
        "actions": len(calls),
        "actions_per_s": round(len(calls) / span, 1) if span > 0 else 0.0,
        "all_ms": _stats([c.end - c.start for c in calls], 1000.0),
        "writes_ms": _stats([c.end - c.start for c in calls if c.action in WRITES], 1000.0),
        "during_upload_ms": _stats([c.end - c.start for c in during], 1000.0),
        "outside_upload_ms": _stats([c.end - c.start for c in outside], 1000.0),
        "per_action": per,
        "conflicts": len(conflict_msgs),
        # the loser's message says what happened: who changed the type, or that the
        # question was answered already
        "conflicts_told_why": sum(bool(re.search(r"changed|already", m)) for m in conflict_msgs),
        "errors": dict(Counter(c.error for c in calls if c.error)),
        "tracebacks": sum(c.error == "traceback" for c in calls),
        "http_5xx": sum(c.error == "5xx" for c in calls),
        "refused_kinds": dict(
            Counter(_shape(c.message) for c in calls if not c.ok).most_common(20)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reviewers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--types", type=int, default=16)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--batch-per-type", type=int, default=4, help="defect images per type")
    ap.add_argument("--server", choices=("process", "thread"), default="process")
    ap.add_argument("--auto-retrain", action="store_true")
    ap.add_argument("--out", default="bench-out/load.jsonl")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.serve:
        _child(Path(args.serve), args.auto_retrain)
        return
    from benchmarks.common import machine, record

    loadavg = (
        Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else []
    )
    result = run_load(
        reviewers=args.reviewers,
        seconds=args.seconds,
        seed=args.seed,
        images=args.images,
        types=args.types,
        batches=args.batches,
        batch_per_type=args.batch_per_type,
        server=args.server,
        tmp=args.tmp,
        auto_retrain=args.auto_retrain,
    )
    result["loadavg_before"] = loadavg
    result["machine"] = machine()
    print(json.dumps(result, indent=1))
    record(args.out, result)


if __name__ == "__main__":
    main()
