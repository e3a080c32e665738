"""The label store, run against SQLite and against a throwaway PostgreSQL 15 on loopback."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rlxf.data.io import write_records
from rlxf.data.label_store import (SCHEMA_VERSION, Conflict, LabelStore, NotFound, StoreError, export_records,
                                   hash_token, response_steps)
from rlxf.data.label_store import store as store_module
from rlxf.data.records import Comparison, Correction, Critique, Ranking, Rating

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses root: run the server binaries as the 'postgres' system user."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *cmd] if runuser else ["su", "postgres", "-c", " ".join(cmd)]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server in a temporary directory, listening on 127.0.0.1 only."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}; PostgreSQL storage tests skipped")
    pytest.importorskip("psycopg", reason="psycopg not installed; PostgreSQL storage tests skipped")
    root = Path(tempfile.mkdtemp(prefix="rlxf-pg-"))
    os.chmod(root, 0o777)
    data, port = root / "data", _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "--no-sync"]), check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                                 "-w", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = LabelStore.open(tmp_path / "labels.sqlite")
    else:
        s = LabelStore.open(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def _project(store, kind="preference", **settings):
    """A fresh project (unique name, so PostgreSQL tests can share one database)."""
    project, owner = store.create_project(f"p{next(_names)}-{time.time_ns()}", kind, **settings)
    return project, owner


def _labeler(store, project, name="ann"):
    token = store.add_labeler(project, name)
    return store.labeler_for_token(project, token), token


def test_preference_labels_round_trip_into_comparisons(store):
    project, _ = _project(store)
    ids = store.add_items(project, [("p1", ["r0", "r1", "r2"], {"src": "x"}), ("p2", ["s0", "s1"], {})])
    ann, _ = _labeler(store, project)
    items = {it.id: it for it in store.items(project)}
    assert sorted(items) == ids and items[ids[0]].meta == {"src": "x"}
    a1 = store.assign(project, ann, items[ids[0]], [2, 0])  # shown: A = r2, B = r0
    a2 = store.assign(project, ann, items[ids[1]], [0, 1])
    store.submit_label(project, ann, a1.id, ids[0], {"choice": "b"})
    store.submit_label(project, ann, a2.id, ids[1], {"choice": "tie"})
    records = export_records(store, project)
    # "b" picks the second shown response, r0, over the first, r2; the tie yields no comparison
    assert records == {"comparison": [Comparison("p1", "r0", "r2")]}
    assert store.counts(project) == {"items": 2, "assignments": 2, "labels": 2}


def test_refuses_double_foreign_forged_and_bad_labels(store):
    project, _ = _project(store)
    (i1, i2) = store.add_items(project, [("p", ["a", "b"], {}), ("q", ["c", "d"], {})])
    ann, _ = _labeler(store, project, "ann")
    bob, _ = _labeler(store, project, "bob")
    it1, it2 = store.items(project)
    a = store.assign(project, ann, it1, [0, 1])
    b = store.assign(project, bob, it2, [1, 0])
    with pytest.raises(NotFound, match="not one of your assignments"):
        store.submit_label(project, ann, b.id, i2, {"choice": "a"})  # bob's assignment
    with pytest.raises(StoreError, match="does not match"):
        store.submit_label(project, ann, a.id, i2, {"choice": "a"})  # forged item id
    with pytest.raises(StoreError, match="positive integers"):
        store.submit_label(project, ann, "1 OR 1=1", i1, {"choice": "a"})
    with pytest.raises(StoreError, match="'choice' must be one of"):
        store.submit_label(project, ann, a.id, i1, {"choice": "c"})
    store.submit_label(project, ann, a.id, i1, {"choice": "a"})
    with pytest.raises(Conflict, match="double submission"):
        store.submit_label(project, ann, a.id, i1, {"choice": "b"})
    (label,) = store.labels(project)
    assert label.value == {"choice": "a"} and label.labeler == "ann"


def test_queue_primitives_respect_overlap_and_never_repeat(store):
    project, _ = _project(store, overlap=2)
    store.add_items(project, [(f"p{i}", ["a", "b"], {}) for i in range(3)])
    ann, _ = _labeler(store, project, "ann")
    bob, _ = _labeler(store, project, "bob")
    cat, _ = _labeler(store, project, "cat")
    first = store.items(project)[0]
    store.assign(project, ann, first, [0, 1])
    with pytest.raises(Conflict, match="already assigned"):
        store.assign(project, ann, first, [1, 0])
    assert first.id not in {it.id for it in store.candidates(project, ann)}
    assert len(store.candidates(project, ann)) == 2
    store.assign(project, bob, first, [0, 1])
    # two labelers saw it: full at overlap 2, so a third labeler is never offered it
    assert first.id not in {it.id for it in store.candidates(project, cat)}
    with pytest.raises(Conflict, match="overlap 2"):
        store.assign(project, cat, first, [0, 1])
    assert store.open_assignment(project, ann).item.id == first.id


def test_candidates_are_uniform_over_eligible_items(store):
    import numpy as np

    project, _ = _project(store)
    ids = store.add_items(project, [(f"p{i}", ["a", "b"], {}) for i in range(120)])
    ann, _ = _labeler(store, project)
    for item in store.items(project)[:60]:  # ann has seen the first half
        store.assign(project, ann, item, [0, 1])
    rng = np.random.default_rng(0)
    counts = np.zeros(ids[-1] + 1, int)
    full_scan, scans = store.eligible, []
    store.eligible = lambda *a: scans.append(1) or full_scan(*a)
    for _ in range(150):
        drawn = [it.id for it in store.candidates(project, ann, limit=10, rng=rng)]
        assert len(drawn) == 10 and len(set(drawn)) == 10 and all(i >= ids[60] for i in drawn)
        counts[drawn] += 1
    store.eligible = full_scan
    assert len(scans) < 15  # the sampling path served almost every call without a full scan
    unseen = counts[ids[60]:]
    # each of the 60 eligible items is in a draw with probability 1/6: mean 25, sd ~4.6
    assert 8 < unseen.min() and unseen.max() < 42
    for item in store.items(project)[60:115]:
        store.assign(project, ann, item, [0, 1])
    # nearly finished: random draws find too few, and the full scan finds the last five
    assert [it.id for it in store.candidates(project, ann, limit=10, rng=rng)] == ids[115:]


def test_tokens_are_hashed_and_checked(store, tmp_path):
    project, owner = _project(store)
    ann, token = _labeler(store, project)
    assert store.labeler_for_token(project, token) == ann
    assert store.labeler_for_token(project, token + "x") is None
    assert store.labeler_for_token(project, None) is None
    assert store.is_owner(project, owner) and not store.is_owner(project, token)
    other, _ = _project(store)
    assert store.labeler_for_token(other, token) is None  # a token opens only its own project
    if store.dialect == "sqlite":
        raw = Path(store.where).read_bytes() + Path(store.where + "-wal").read_bytes()
        assert token.encode() not in raw and owner.encode() not in raw
        assert hash_token(token).encode() in raw


def test_hostile_text_is_stored_verbatim(store):
    project, _ = _project(store, kind="critique", max_critique_chars=50)
    evil = "x'); DROP TABLE labels; --"
    store.add_items(project, [(evil, ["<script>alert(1)</script>", "b"], {})])
    ann, _ = _labeler(store, project, "Robert'); DROP TABLE labelers;--")
    (item,) = store.items(project)
    a = store.assign(project, ann, item, [0])
    with pytest.raises(StoreError, match="limit is 50"):
        store.submit_label(project, ann, a.id, item.id, {"critique": "y" * 51})
    with pytest.raises(StoreError, match="non-empty"):
        store.submit_label(project, ann, a.id, item.id, {"critique": "   "})
    store.submit_label(project, ann, a.id, item.id, {"critique": evil, "corrected": "<b>fixed</b>"})
    records = export_records(store, project)
    assert records["critique"] == [Critique(evil, "<script>alert(1)</script>", evil)]
    assert records["correction"] == [Correction(evil, "<script>alert(1)</script>", "<b>fixed</b>")]
    assert store.labelers(project)[0].name == "Robert'); DROP TABLE labelers;--"


def test_ranking_and_rating_labels(store):
    rank, _ = _project(store, kind="ranking")
    rate, _ = _project(store, kind="rating", scale=[1, 7])
    for project in (rank, rate):
        store.add_items(project, [("p", ["a", "b", "c"], {})])
    ann, _ = _labeler(store, rank)
    (item,) = store.items(rank)
    a = store.assign(rank, ann, item, [2, 0, 1])
    with pytest.raises(StoreError, match="rank every shown position"):
        store.submit_label(rank, ann, a.id, item.id, {"order": [0, 0, 1]})
    store.submit_label(rank, ann, a.id, item.id, {"order": [1, 2, 0]})  # shown positions, best first
    assert export_records(store, rank)["ranking"] == [Ranking("p", ("c", "a", "b"), (1, 2, 0))]
    bob, _ = _labeler(store, rate)
    (item,) = store.items(rate)
    a = store.assign(rate, bob, item, [0, 1, 2])
    with pytest.raises(StoreError, match=r"within the scale \[1, 7\]"):
        store.submit_label(rate, bob, a.id, item.id, {"ratings": [1, 8, 3]})
    store.submit_label(rate, bob, a.id, item.id, {"ratings": [1, 7, 3]})
    assert [r.rating for r in export_records(store, rate)["rating"]] == [1.0, 7.0, 3.0]
    assert export_records(store, rate)["rating"][1] == Rating("p", "b", 7.0, (1.0, 7.0))


def test_bad_items_and_settings_add_nothing(store):
    project, _ = _project(store)
    with pytest.raises(StoreError, match="item 1: field 'responses'"):
        store.add_items(project, [("ok", ["a", "b"], {}), ("bad", ["only one"], {})])
    assert store.items(project) == []
    with pytest.raises(StoreError, match="unknown project setting"):
        store.create_project("z", "preference", overlpa=2)
    with pytest.raises(StoreError, match="kind"):
        store.create_project("z", "vibes")


def test_sqlite_is_wal_with_full_sync(tmp_path):
    s = LabelStore.open(tmp_path / "l.sqlite")
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s.integrity_check() == "ok"


def test_a_project_directory_can_point_at_postgresql(postgres_url, tmp_path):
    from rlxf.app.project import init_project
    from rlxf.data.label_store import open_project_dir, read_project_records

    name = f"dir-{time.time_ns()}"
    init_project(tmp_path / "proj", "preference", name=name, database=postgres_url)
    assert not (tmp_path / "proj" / "labels.sqlite").exists()
    store, project = open_project_dir(tmp_path / "proj")
    (item_id,) = store.add_items(project, [("p", ["a", "b"], {})])
    ann, _ = _labeler(store, project)
    a = store.assign(project, ann, store.items(project)[0], [1, 0])
    store.submit_label(project, ann, a.id, item_id, {"choice": "a"})
    store.close()
    assert read_project_records(tmp_path / "proj") == [Comparison("p", "b", "a")]


def _version_1_database(target: str) -> None:
    """A database as rlxf wrote it before schema versions, by raw SQL (SQLite path or PostgreSQL
    URL): version 1's tables and rows for a critique project with two old-style labels, one with
    a correction, and a preference project."""
    if target.startswith("postgresql://"):
        import psycopg

        conn, mark, pk = psycopg.connect(target), "%s", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    else:
        conn, mark, pk = sqlite3.connect(target), "?", "INTEGER PRIMARY KEY AUTOINCREMENT"
    for stmt in store_module._SCHEMA.format(pk=pk).split(";"):
        conn.execute(stmt)
    settings = json.dumps({"overlap": 1, "selection": "uniform", "scale": [1, 5], "max_critique_chars": 4000,
                           "nu": 1.0, "eps": 0.0, "seed": 0})
    rows = {
        "projects (name, kind, settings, owner_token_hash, created)": [
            ("crit", "critique", settings, "h1", 0), ("pref", "preference", settings, "h2", 0)],
        "items (project_id, prompt, responses, meta, created)": [
            (1, "2+3*4=", json.dumps(["3*4=12\n2+12=15\nanswer: 15", "x"]), "{}", 0),
            (1, "Say hi", json.dumps(["bye", "hi"]), "{}", 0), (2, "p", json.dumps(["a", "b"]), "{}", 0)],
        "labelers (project_id, name, token_hash, created)": [(1, "ann", "t1", 0), (2, "bob", "t2", 0)],
        "assignments (project_id, labeler_id, item_id, shown, created)": [
            (1, 1, 1, "[0]", 0), (1, 1, 2, "[1]", 0), (2, 2, 3, "[1, 0]", 0)],
        "labels (project_id, assignment_id, labeler_id, item_id, kind, value, created)": [
            (1, 1, 1, 1, "critique", json.dumps({"critique": "2+12 is 14", "corrected": "3*4=12\n2+12=14"}), 0),
            (1, 2, 1, 2, "critique", json.dumps({"critique": "Polite enough."}), 0),
            (2, 3, 2, 3, "preference", json.dumps({"choice": "a"}), 0)]}
    for table, values in rows.items():  # ids left to the database: 1, 2, 3 in order, as rlxf wrote them
        for row in values:
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join([mark] * len(row))})", row)
    conn.commit()
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request, tmp_path):
    """Where a version-1 database was written: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        target = str(tmp_path / "old.sqlite")
    else:
        import psycopg

        server, name = request.getfixturevalue("postgres_url"), f"old{time.time_ns()}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        target = server.rsplit("/", 1)[0] + "/" + name
    _version_1_database(target)
    return target


def test_a_version_1_database_is_migrated_and_exports_as_before(old_database, tmp_path):
    store = LabelStore.open(old_database)
    assert store.schema_version() == SCHEMA_VERSION == 2
    crit, pref = store.project("crit"), store.project("pref")
    records = export_records(store, crit)
    assert records == {"critique": [Critique("2+3*4=", "3*4=12\n2+12=15\nanswer: 15", "2+12 is 14"),
                                    Critique("Say hi", "hi", "Polite enough.")],
                       "correction": [Correction("2+3*4=", "3*4=12\n2+12=15\nanswer: 15", "3*4=12\n2+12=14")]}
    assert export_records(store, pref) == {"comparison": [Comparison("p", "b", "a")]}
    write_records(records["critique"], tmp_path / "c.jsonl")
    assert [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()] == [
        {"prompt": "2+3*4=", "completion": "3*4=12\n2+12=15\nanswer: 15", "critique": "2+12 is 14"},
        {"prompt": "Say hi", "completion": "hi", "critique": "Polite enough."}]  # no verdict columns appear
    # the migrated store takes new labels, with verdicts, beside the old ones
    store.add_items(crit, [("1+1=", ["answer: 2", "answer: 3"], {})])
    ann = store.labelers(crit)[0]
    item = store.items(crit)[-1]
    a = store.assign(crit, ann, item, [1])
    store.submit_label(crit, ann, a.id, item.id, {"verdict": "incorrect", "first_wrong_step": 1})
    assert export_records(store, crit)["critique"][-1] == Critique("1+1=", "answer: 3", "verdict: incorrect 1",
                                                                   "incorrect", 1)
    store.close()
    again = LabelStore.open(old_database)  # opening again migrates nothing twice
    with again._tx() as cur:
        assert cur.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        cur.execute("INSERT INTO schema_version VALUES (3, 0)")
    again.close()
    with pytest.raises(StoreError, match=r"has label schema version 3, newer than this rlxf reads \(up to 2\)"):
        LabelStore.open(old_database)


def test_a_fresh_database_starts_at_the_current_version(store):
    assert store.schema_version() == SCHEMA_VERSION


def test_critique_labels_mark_the_first_wrong_step_within_the_steps_shown(store):
    project, _ = _project(store, kind="critique")
    answer = "3*4=12\n\n2+12=15\nanswer: 15"
    with pytest.raises(StoreError, match="item 0: field 'meta.steps' must be a list with one entry per response"):
        store.add_items(project, [("q", [answer, "b"], {"steps": [["one"]]})])
    with pytest.raises(StoreError, match="item 0: field 'meta.steps' entry 1 must be null or a non-empty list"):
        store.add_items(project, [("q", [answer, "b"], {"steps": [None, []]})])
    with pytest.raises(StoreError, match="item 0: field 'meta.steps' entry 0 must be null or a non-empty list"):
        store.add_items(project, [("q", [answer, "b"], {"steps": [["x", 2], None]})])
    store.add_items(project, [("2+3*4=", [answer, "def f():\n    return 1  \n"], {}),
                              ("q", ["x y z", "b"], {"steps": [["x", "y z"], None]})])
    lines, explicit = store.items(project)
    assert response_steps(lines, 0) == ["3*4=12", "2+12=15", "answer: 15"]  # blank lines are not steps
    assert response_steps(lines, 1) == ["def f():", "    return 1"]  # indentation kept
    assert response_steps(explicit, 0) == ["x", "y z"] and response_steps(explicit, 1) == ["b"]
    ann, _ = _labeler(store, project)
    a = store.assign(project, ann, lines, [0])
    for value, expected in [({"verdict": "incorrect", "first_wrong_step": 4}, "is 4 but the response was shown as 3"),
                            ({"verdict": "correct", "first_wrong_step": 2}, "only with verdict 'incorrect'"),
                            ({"verdict": "maybe"}, "'verdict' is 'maybe'"),
                            ({"critique": "verdict: correct", "verdict": "incorrect", "first_wrong_step": 2},
                             "verdict line says 'correct'"),
                            ({"critique": " "}, "non-empty string \\(or mark a 'verdict'\\)")]:
        with pytest.raises(StoreError, match=expected):
            store.submit_label(project, ann, a.id, lines.id, value)
    store.submit_label(project, ann, a.id, lines.id, {"critique": "2+12 is 14", "verdict": "incorrect",
                                                      "first_wrong_step": 2, "corrected": "3*4=12\n2+12=14"})
    b = store.assign(project, ann, explicit, [0])
    with pytest.raises(StoreError, match="is 3 but the response was shown as 2"):
        store.submit_label(project, ann, b.id, explicit.id, {"verdict": "incorrect", "first_wrong_step": 3})
    store.submit_label(project, ann, b.id, explicit.id, {"critique": "  ", "verdict": "correct"})
    assert [l.value for l in store.labels(project)] == [
        {"critique": "2+12 is 14", "corrected": "3*4=12\n2+12=14", "verdict": "incorrect", "first_wrong_step": 2},
        {"verdict": "correct"}]
    records = export_records(store, project)
    assert records["critique"] == [Critique("2+3*4=", answer, "2+12 is 14", "incorrect", 2),
                                   Critique("q", "x y z", "verdict: correct", "correct")]
    assert records["correction"] == [Correction("2+3*4=", answer, "3*4=12\n2+12=14")]
