"""The simulated reviewer: the oracle's rules, the metric, and ``simulate-review`` (which
must learn labels only through the oracle)."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import pytest

from protoatlas import cli, simulate
from protoatlas.cli import main
from protoatlas.simulate import CURVE_COLUMNS, NONE, Oracle, Reply, reply_clicks, score_state
from tests.service_fixtures import data_root, fast_cli, shared_base


class LabelLeak(BaseException):
    """Labels read outside the oracle and the metric (BaseException: nothing swallows it)."""


class Labels(Mapping):
    """A labels dict that refuses to be read unless ``open`` (and records the reads)."""

    def __init__(self, data: dict[str, str]) -> None:
        self._data = dict(data)
        self.open = 0
        self.reads: list[str] = []
        self.leaks: list[str] = []

    def _check(self, what: str) -> None:
        if not self.open:
            self.leaks.append(what)
            raise LabelLeak(f"labels read outside the oracle and the metric: {what}")

    def __getitem__(self, key: str) -> str:
        self._check(f"[{key!r}]")
        self.reads.append(key)
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        self._check("iter")
        return iter(self._data)

    def __len__(self) -> int:
        self._check("len")
        return len(self._data)


@contextlib.contextmanager
def opened(labels: Labels):
    labels.open += 1
    try:
        yield
    finally:
        labels.open -= 1


class FakeView:
    """What the reviewer is shown: image names per type and per region."""

    def __init__(
        self,
        types: dict[int, list[str]],
        regions: dict[int, str],
        names: dict[str, int] | None = None,
    ) -> None:
        self.types, self.regions = types, regions
        self.names = names or {}
        self.shown: set[str] = set()

    def type_ids(self) -> list[int]:
        return sorted(self.types)

    def type_named(self, name: str) -> int | None:
        return self.names.get(name)

    def type_name(self, type_id: int | None) -> str | None:
        names = {v: k for k, v in self.names.items()}
        return None if type_id is None else names.get(type_id, f"T{type_id}")

    def type_images(self, type_id: int) -> list[str]:
        self.shown |= set(self.types[type_id])
        return list(self.types[type_id])

    def shown_members(self, type_id: int) -> list[tuple[int, str]]:
        """Member i of type t is region 100 * t + i."""
        self.shown |= set(self.types[type_id])
        return [(100 * type_id + i, name) for i, name in enumerate(self.types[type_id])]

    def region_images(self, region_ids) -> list[str]:
        names = [self.regions[int(r)] for r in region_ids if int(r) in self.regions]
        self.shown |= set(names)
        return names


# ================================================================================ oracle
TRUTH = (
    {f"s{i}": "scratch" for i in range(10)}
    | {f"p{i}": "spot" for i in range(10)}
    | {f"g{i}": "good" for i in range(3)}
)


@pytest.mark.parametrize(
    "kind, target, expected",
    [
        ("confirm", {"type_id": 1}, Reply("yes", "scratch")),  # 5/5 scratch
        # 4/5 scratch: at the purity; the spot is picked out (member 204)
        ("confirm", {"type_id": 2}, Reply("yes", "scratch", (204,))),
        # 3/5: mixed; the two spots are picked as not belonging (members 303 and 304)
        ("confirm", {"type_id": 3}, Reply("no", None, (303, 304))),
        ("confirm", {"type_id": 4}, Reply("no")),  # false alarms are not a type
        ("confirm", {"type_id": 6}, Reply("no")),  # mostly false alarms: no pick
        # an unlabelled member is not picked (the reviewer cannot tell)
        ("confirm", {"type_id": 7}, Reply("no", None, (703,))),
        ("merge", {"type_ids": [1, 2]}, Reply("yes")),
        ("merge", {"type_ids": [1, 5]}, Reply("no")),
        ("split", {"type_id": 3, "groups": [[1, 2], [3, 4]]}, Reply("yes")),
        ("split", {"type_id": 1, "groups": [[1, 2], [5]]}, Reply("no")),
        ("label", {"region_id": 3}, Reply("5")),  # type 5 is all spot: pick it
        ("label", {"region_id": 5}, Reply("1")),  # the largest pure scratch type
        ("label", {"region_id": 10}, Reply("good")),  # a false alarm
        ("label", {"region_id": 9}, Reply("skip")),  # an image without a label
        ("new_type", {"region_ids": [3, 4, 6]}, Reply("yes", "spot")),
        ("new_type", {"region_ids": [1, 3]}, Reply("no")),
        ("unknown-kind", {}, Reply("skip")),
    ],
)
def test_oracle_answers_only_from_the_questions_images(kind, target, expected) -> None:
    view = FakeView(
        types={
            1: ["s0", "s1", "s2", "s3", "s4"],
            2: ["s5", "s6", "s7", "s8", "p0"],
            3: ["s0", "s1", "s2", "p1", "p2"],
            4: ["g0", "g1", "g2"],
            5: ["p3", "p4", "p5"],
            6: ["g0", "g1", "g2", "s0", "s1"],
            7: ["s0", "s1", "unlabelled.png", "p0"],
        },
        regions={
            1: "s0",
            2: "s1",
            3: "p6",
            4: "p7",
            5: "s9",
            6: "p8",
            9: "unlabelled.png",
            10: "g0",
        },
    )
    labels = Labels(TRUTH)
    oracle = Oracle(labels)  # type: ignore[arg-type]
    with opened(labels):
        assert oracle.answer(kind, target, view) == expected  # type: ignore[arg-type]
    assert set(labels.reads) <= view.shown  # it looked only at what the question shows
    assert oracle.questions == 1


# ================================================================================ metric
def test_oracle_label_prefers_the_type_named_so_and_else_gives_a_new_name() -> None:
    view = FakeView(
        types={1: ["s0", "s1", "p0"], 2: ["s2", "s3", "s4", "s5"]},
        regions={1: "s9", 2: "p9"},
        names={"scratch": 1},
    )
    labels = Labels(TRUTH)
    oracle = Oracle(labels)  # type: ignore[arg-type]
    with opened(labels):
        # a type already named "scratch" wins over a purer unnamed one
        assert oracle.answer("label", {"region_id": 1}, view) == Reply("1")
        # no type is mostly spot: the reviewer names a new one
        assert oracle.answer("label", {"region_id": 2}, view) == Reply("spot")


def _fake_service(live: list[tuple[int, str, int]]):
    types = [SimpleNamespace(id=i, status=s, n_regions=n) for i, s, n in live]
    return SimpleNamespace(ws=SimpleNamespace(list_types=lambda: types))


@pytest.mark.parametrize(
    "reply,clicks",
    [
        (Reply("yes"), 1),
        (Reply("no", regions=(4, 5, 6)), 4),
        (Reply("yes", name="scratch", regions=(1,)), 3),
        (Reply("7"), 1),
        (Reply("good"), 1),
        (Reply("spot"), 2),
    ],
)
def test_a_reply_costs_the_answer_plus_each_member_picked_and_each_name_typed(
    reply, clicks
) -> None:
    assert reply_clicks(reply) == clicks


def test_score_state_counts_untyped_anomalous_images_as_a_wrong_cluster(monkeypatch) -> None:
    labels = {
        "a": "scratch",
        "b": "scratch",
        "c": "spot",
        "d": "spot",
        "g": "good",
        "x": "spot",
    }  # "x" is not in the workspace, "g" is normal: both left out
    image_ids = {"a": 1, "b": 2, "c": 3, "d": 4, "g": 5}
    service = _fake_service(
        [(7, "proposed", 2), (8, "confirmed", 1), (9, "proposed", 0), (10, "rejected", 3)]
    )
    seen = []
    real = simulate.metrics.cluster_metrics

    def spy(truth, pred):
        seen.append((list(truth), list(pred)))
        return real(truth, pred)

    monkeypatch.setattr(simulate.metrics, "cluster_metrics", spy)
    monkeypatch.setattr(simulate, "image_types", lambda svc: {1: 7, 2: 7, 3: 8, 4: 8})
    perfect = score_state(service, labels, image_ids, step=3, actions=2)  # type: ignore
    assert (perfect.step, perfect.actions, perfect.n_types) == (3, 2, 2)
    assert perfect.ari == pytest.approx(1.0) and perfect.f1 == pytest.approx(1.0)

    monkeypatch.setattr(simulate, "image_types", lambda svc: {1: 7, 2: 7, 3: 8})
    missing = score_state(service, labels, image_ids, step=4, actions=2)  # type: ignore
    assert seen[-1] == (["scratch", "scratch", "spot", "spot"], ["7", "7", "8", NONE])
    assert missing.ari < 1.0 and missing.f1 < 1.0

    monkeypatch.setattr(simulate, "image_types", lambda svc: {})
    none = score_state(service, labels, image_ids, step=0, actions=0)  # type: ignore
    assert seen[-1][1] == [NONE] * 4 and none.ari == pytest.approx(0.0)


# ============================================================================ simulation
def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return data_root(shared_base(tmp_path_factory), "tiny")


@pytest.mark.parametrize("strategy", ["ranked", "random"])
def test_simulate_review_learns_labels_only_through_the_oracle(
    strategy, tiny, tmp_path, monkeypatch
) -> None:
    budget = 2
    guarded: list[Labels] = []
    real_read = simulate.read_labels

    def read_labels(path):
        guarded.append(Labels(real_read(path)))
        return guarded[-1]

    asked: list[tuple[str, dict, set[str], list[str]]] = []

    class RecordingOracle(Oracle):
        def answer(self, kind, target, view):
            spy = FakeView({}, {})
            spy.type_images = lambda t: _note(spy, view.type_images(t))  # type: ignore
            spy.region_images = lambda r: _note(spy, view.region_images(r))  # type: ignore
            spy.shown_members = lambda t: _note_members(spy, view.shown_members(t))  # type: ignore
            spy.type_ids = view.type_ids  # type: ignore
            spy.type_named = view.type_named  # type: ignore
            spy.type_name = view.type_name  # type: ignore
            labels = guarded[-1]
            start = len(labels.reads)
            with opened(labels):
                got = super().answer(kind, target, spy)  # type: ignore[arg-type]
            asked.append((kind, target, spy.shown, labels.reads[start:]))
            return got

    real_score = simulate.score_state

    def scored(service, labels, *args, **kwargs):
        with opened(labels):
            return real_score(service, labels, *args, **kwargs)

    monkeypatch.setattr(simulate, "read_labels", read_labels)
    monkeypatch.setattr(simulate, "Oracle", RecordingOracle)
    monkeypatch.setattr(simulate, "score_state", scored)
    monkeypatch.setattr(cli, "_config_from", fast_cli(cli._config_from))

    out = tmp_path / "curve.csv"
    code, stdout, err = _run(
        [
            "simulate-review",
            "--normals",
            str(tiny / "train" / "good"),
            "--images",
            str(tiny / "test"),
            "--labels",
            str(tiny / "labels.csv"),
            "--budget",
            str(budget),
            "--out",
            str(out),
            "--strategy",
            strategy,
            "--image-size",
            "128",
            "--device",
            "cpu",
            "--quiet",
            "--home",
            str(tmp_path / "home"),
        ]
    )
    assert code == 0, err
    assert stdout.startswith(f"{strategy}: ARI ") and str(out) in stdout

    assert len(guarded) == 1 and guarded[0].leaks == []
    assert 1 <= len(asked) <= budget
    for kind, target, shown, reads in asked:
        assert set(reads) <= shown, (kind, target)  # only the images the question shows

    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CURVE_COLUMNS
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == list(range(budget + 1))
    actions = [int(r["actions"]) for r in rows]
    assert actions[0] == 0 and actions == sorted(actions)
    assert all(a <= s for a, s in zip(actions, range(budget + 1)))
    clicks = [int(r["clicks"]) for r in rows]  # at least one per answer, picks and names more
    assert clicks[0] == 0 and clicks == sorted(clicks)
    assert all(c >= a for c, a in zip(clicks, actions))
    for r in rows:
        assert all(-1.0 <= float(r[c]) <= 1.0 for c in ("nmi", "ari", "f1"))
        assert int(r["n_types"]) >= 1


def _note(spy: FakeView, names: list[str]) -> list[str]:
    spy.shown |= set(names)
    return names


def _note_members(spy: FakeView, members: list[tuple[int, str]]) -> list[tuple[int, str]]:
    spy.shown |= {name for _, name in members}
    return members


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            "file,kind\nscratch/000.png,scratch\n",
            ["expected a header with columns 'image' and 'label'"],
        ),
        # a file naming none of the batch's images is refused before the discovery
        (
            "image,label\nother/000.png,crack\nother/001.png,good\n",
            ["none of its 2 image names matches", "'other/000.png'"],
        ),
    ],
)
def test_simulate_review_refuses_a_bad_labels_file_before_the_work(
    tiny, tmp_path, content, expected
) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text(content)
    code, out, err = _run(
        [
            "simulate-review",
            "--normals",
            str(tiny / "train" / "good"),
            "--images",
            str(tiny / "test"),
            "--labels",
            str(bad),
            "--budget",
            "2",
            "--out",
            str(tmp_path / "curve.csv"),
            "--quiet",
            "--home",
            str(tmp_path / "home"),
        ]
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("protoatlas: error: ") and str(bad) in err
    for part in expected:
        assert part in err
    assert not (tmp_path / "curve.csv").exists() and not (tmp_path / "home").exists()


def test_simulate_refuses_an_unknown_strategy(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        simulate.simulate(
            tiny / "train" / "good",
            tiny / "test",
            tiny / "labels.csv",
            None,
            budget=1,
            strategy="greedy",
        )  # type: ignore[arg-type]


# ============================================================== labels named another way
@pytest.mark.parametrize(
    "keys, expected",
    [
        # relative to the images folder (the usual case); separators and "./" do not matter
        (
            ["crack/000.png", "./spot\\001.png"],
            {"crack/000.png": "crack/000.png", "spot/001.png": "./spot\\001.png"},
        ),
        # relative to a folder above it, or absolute
        (
            ["test/crack/000.png", "/data/mvtec/test/spot/001.png"],
            {
                "crack/000.png": "test/crack/000.png",
                "spot/001.png": "/data/mvtec/test/spot/001.png",
            },
        ),
        # a bare file name that only one image has
        (["001.png"], {"spot/001.png": "001.png"}),
        # a bare file name several images have: which one is meant is unknown
        (["000.png"], {}),
        # the longest agreeing tail wins over a shorter, ambiguous one
        (["000.png", "test/crack/000.png"], {"crack/000.png": "test/crack/000.png"}),
        # a different folder is not a match, however the file is named
        (["fold/000.png", "train/good/001.png"], {}),
    ],
)
def test_match_names_pairs_labels_with_the_batch_images(keys, expected) -> None:
    from protoatlas.service.labels import match_names

    names = ["crack/000.png", "good/000.png", "spot/001.png"]
    assert match_names(names, keys) == expected


def test_simulate_review_takes_labels_named_from_a_folder_above(tiny, tmp_path) -> None:
    rows = (tiny / "labels.csv").read_text().splitlines()
    assert rows[0] == "image,label" and len(rows) > 4
    other = tmp_path / "labels-from-above.csv"
    other.write_text(
        "\n".join([rows[0]] + ["test\\" + r.replace("/", "\\") for r in rows[1:]]) + "\n"
    )
    curves = []
    for i, labels in enumerate((tiny / "labels.csv", other)):
        out = tmp_path / f"curve{i}.csv"
        code, _, err = _run(
            [
                "simulate-review",
                "--normals",
                str(tiny / "train" / "good"),
                "--images",
                str(tiny / "test"),
                "--labels",
                str(labels),
                "--budget",
                "2",
                "--out",
                str(out),
                "--image-size",
                "128",
                "--device",
                "cpu",
                "--quiet",
                "--home",
                str(tmp_path / f"h{i}"),
            ]
        )
        assert code == 0, err
        curves.append(out.read_text())
    assert curves[0] == curves[1]
    assert "nan" not in curves[0]


def test_the_simulated_reviewer_refines_the_detector_after_n_confirmations(
    tiny, tmp_path, monkeypatch
) -> None:
    """With --refine-after 1 the loop refines once, when the first type is confirmed; the
    detector column says which detector is in force from then on."""
    from tests.service_fixtures import fast_config

    calls: list[int] = []
    real = simulate._refine

    def counted(service, progress):
        calls.append(sum(t.status == "confirmed" for t in service.ws.list_types()))
        return real(service, progress)

    monkeypatch.setattr(simulate, "_refine", counted)
    config = fast_config().with_overrides(
        refine={"n_samples": 8, "epochs": 1, "batch_size": 4, "calibration_normals": 2}
    )
    curve = simulate.simulate(
        tiny / "train" / "good",
        tiny / "test",
        tiny / "labels.csv",
        config,
        budget=6,
        home=tmp_path / "home",
        refine_after=1,
    )
    assert len(calls) <= 1 and all(c >= 1 for c in calls)
    detectors = [c.detector for c in curve]
    assert set(detectors) <= {"patchcore", "refined"}
    # once refined, always refined (it refines once and never rolls back)
    if "refined" in detectors:
        first = detectors.index("refined")
        assert set(detectors[first:]) == {"refined"}
    if calls:
        assert any((tmp_path / "home" / "simulation" / "refine").glob("candidate-*.json"))
