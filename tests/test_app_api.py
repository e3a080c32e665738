"""The web app's HTTP API: access control, input validation, escaping, owner stats, export, CLI."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from rlxf.app.cli import main as label_main
from rlxf.app.project import open_project
from rlxf.app.server import STATIC, create_app
from rlxf.app.stats import agreement, pace
from rlxf.data.io import read_records
from rlxf.data.label_store import Item, Label, LabelStore, read_project_records
from rlxf.data.records import Comparison


@pytest.fixture
def app_env(tmp_path):
    """A preference project with two labelers, three items and an in-process client."""
    store = LabelStore.open(tmp_path / "labels.sqlite")
    project, owner = store.create_project("demo", "preference", overlap=2, max_critique_chars=20)
    store.add_items(project, [("say <b>hi</b>", ["<script>alert(1)</script>", "hello"], {}),
                              ("p2", ["x", "y"], {}), ("p3", ["u", "v"], {})])
    tokens = {n: store.add_labeler(project, n) for n in ("ann", "bob")}
    client = TestClient(create_app(store, project))
    yield client, store, project, owner, tokens
    store.close()


def _h(token):
    return {"Authorization": f"Bearer {token}"}


def _answer(client, token, choice):
    a = client.get("/api/next", headers=_h(token)).json()
    r = client.post("/api/labels", headers=_h(token),
                    json={"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": {"choice": choice}})
    assert r.status_code == 200, r.text
    return a


def test_requests_without_a_valid_token_are_refused(app_env):
    client, _, _, owner, tokens = app_env
    for path in ("/api/me", "/api/next", "/api/project", "/api/export"):
        r = client.get(path)
        assert r.status_code == 401 and "missing token" in r.json()["error"]
        assert client.get(path, headers=_h("not-a-token")).status_code in (401, 403)
    assert client.post("/api/labels", json={}).status_code == 401
    assert client.get("/api/next", headers={"Authorization": f"Basic {tokens['ann']}"}).status_code == 401
    r = client.get("/api/next", headers=_h(owner))
    assert r.status_code == 403 and "owner token" in r.json()["error"]
    r = client.get("/api/project", headers=_h(tokens["ann"]))
    assert r.status_code == 403 and "owner token" in r.json()["error"]


def test_a_labeler_sees_and_answers_only_their_own_assignments(app_env):
    client, store, project, _, tokens = app_env
    a = client.get("/api/next", headers=_h(tokens["ann"])).json()
    b = client.get("/api/next", headers=_h(tokens["bob"])).json()
    assert a["assignment_id"] != b["assignment_id"]
    forged = {"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": {"choice": "a"}}
    r = client.post("/api/labels", headers=_h(tokens["bob"]), json=forged)  # ann's assignment, bob's token
    assert r.status_code == 404 and "not one of your assignments" in r.json()["error"]
    r = client.post("/api/labels", headers=_h(tokens["ann"]), json={**forged, "item_id": 999})
    assert r.status_code == 400 and "does not match" in r.json()["error"]
    r = client.post("/api/labels", headers=_h(tokens["ann"]), json={**forged, "assignment_id": 10**6})
    assert r.status_code == 404
    assert client.post("/api/labels", headers=_h(tokens["ann"]), json=forged).status_code == 200
    r = client.post("/api/labels", headers=_h(tokens["ann"]), json=forged)
    assert r.status_code == 409 and "double submission" in r.json()["error"]
    assert [l.labeler for l in store.labels(project)] == ["ann"]
    assert client.get("/api/me", headers=_h(tokens["ann"])).json()["labeled"] == 1
    assert client.get("/api/me", headers=_h(tokens["bob"])).json()["labeled"] == 0


def test_malformed_and_oversized_bodies_get_clear_errors(app_env, tmp_path):
    client, store, _, _, tokens = app_env
    h = _h(tokens["ann"])
    r = client.post("/api/labels", headers={**h, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = client.post("/api/labels", headers=h, content=b"x" * (300 * 1024))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    a = client.get("/api/next", headers=h).json()
    r = client.post("/api/labels", headers=h, json={"assignment_id": a["assignment_id"], "item_id": a["item_id"],
                                                    "value": {"choice": "maybe"}})
    assert r.status_code == 400 and "'choice' must be one of" in r.json()["error"]
    # a critique project with a 20-character limit
    crit, _ = store.create_project("crit", "critique", max_critique_chars=20)
    store.add_items(crit, [("p", ["a", "b"], {})])
    tok = store.add_labeler(crit, "cat")
    c2 = TestClient(create_app(store, crit))
    a = c2.get("/api/next", headers=_h(tok)).json()
    body = {"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": {"critique": "z" * 21}}
    r = c2.post("/api/labels", headers=_h(tok), json=body)
    assert r.status_code == 400 and "21 characters; the limit is 20" in r.json()["error"]


def test_pages_render_text_never_html(app_env):
    client, _, _, _, tokens = app_env
    page = client.get("/label")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script>[^<]", page.text)  # no inline script: everything comes from /static
    for js in STATIC.glob("*.js"):
        text = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{js.name} uses {sink}"
    # the item's HTML comes back as JSON data, for textContent, not as markup
    seen = []
    for _ in range(3):
        r = client.get("/api/next", headers=_h(tokens["ann"]))
        assert r.headers["content-type"].startswith("application/json")
        a = r.json()
        seen.append(a)
        client.post("/api/labels", headers=_h(tokens["ann"]),
                    json={"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": {"choice": "skip"}})
    (hostile,) = [a for a in seen if a["prompt"] == "say <b>hi</b>"]
    assert set(hostile["responses"]) == {"<script>alert(1)</script>", "hello"}  # unchanged data, shown as text


def test_owner_sees_agreement_and_exports_a_trl_dataset(app_env, tmp_path):
    client, _, _, owner, tokens = app_env
    answers = {}
    for name, choice in (("ann", "a"), ("bob", "a")):
        for _ in range(3):
            a = _answer(client, tokens[name], choice)
            answers[(name, a["item_id"])] = a["responses"][0]  # the response each one preferred
    stats = client.get("/api/project", headers=_h(owner)).json()
    assert stats["labels"] == 6 and stats["progress"] == pytest.approx(1.0)
    assert stats["labelers"] == {"ann": 3, "bob": 3}
    agree = sum(answers[("ann", i)] == answers[("bob", i)] for i in (1, 2, 3))
    assert stats["agreement"] == {"rate": pytest.approx(agree / 3), "overlaps": 3}
    assert stats["distribution"] == {"a": 6}
    r = client.get("/api/export", headers=_h(owner))
    assert r.status_code == 200
    path = tmp_path / "export.jsonl"
    path.write_bytes(r.content)
    records = read_records(path)
    assert len(records) == 6 and all(isinstance(c, Comparison) for c in records)
    assert sorted(c.chosen for c in records) == sorted(answers.values())
    assert client.get("/api/export?record=ranking", headers=_h(owner)).status_code == 400


def test_agreement_counts_verdicts_in_item_index_space():
    item = Item(1, "p", ("a", "b", "c"), {})

    def lab(shown, choice):
        return Label(0, "x", item, shown, "preference", {"choice": choice}, 0.0)

    # (0,1) shown as A=0 choosing a, and as A=1 choosing b: the same verdict, response 0 wins
    assert agreement([lab((0, 1), "a"), lab((1, 0), "b")]) == {"rate": 1.0, "overlaps": 1}
    assert agreement([lab((0, 1), "a"), lab((1, 0), "a"), lab((0, 1), "skip")]) == {"rate": 0.0, "overlaps": 1}
    assert agreement([lab((0, 1), "a"), lab((0, 2), "a")]) == {"rate": None, "overlaps": 0}
    assert pace([lab((0, 1), "a")] * 3, now=1800.0) == {"last_hour": 3, "per_hour": pytest.approx(6.0)}


def test_cli_init_label_export_round_trip(tmp_path, capsys):
    proj = str(tmp_path / "proj")
    assert label_main(["label", "init", "--project", proj, "--overlap", "1"]) == 0
    owner = re.search(r"owner token: (\S+)", capsys.readouterr().out).group(1)
    assert label_main(["label", "add-labeler", "--project", proj, "ann"]) == 0
    token = re.search(r"token: (\S+)", capsys.readouterr().out).group(1)
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p1", "responses": ["a", "b"]}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]) + "\n")
    assert label_main(["label", "add-items", "--project", proj, str(items)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    assert label_main(["label", "add-items", "--project", proj, str(bad)]) == 2
    assert "line 1: field 'responses'" in capsys.readouterr().err
    assert label_main(["label", "export", "--project", proj, str(tmp_path / "none.jsonl")]) == 2
    assert "no comparison labels" in capsys.readouterr().err
    store, project = open_project(proj)
    client = TestClient(create_app(store, project))
    chosen = {_answer(client, token, "b")["responses"][1] for _ in range(2)}
    assert client.get("/api/next", headers=_h(token)).json() == {"done": True}
    assert client.get("/api/project", headers=_h(owner)).status_code == 200
    store.close()
    out = tmp_path / "labels.jsonl"
    assert label_main(["label", "export", "--project", proj, str(out)]) == 0
    records = read_records(out)
    assert {r.chosen for r in records} == chosen and {r.prompt for r in records} == {"p1", "p2"}
    assert read_project_records(proj) == records  # what a training stage reads from the live store


def test_critique_view_gets_steps_and_the_export_carries_the_marked_step(tmp_path):
    store = LabelStore.open(tmp_path / "labels.sqlite")
    project, owner = store.create_project("crit", "critique")
    answer = "3*4=12\n2+12=15\nanswer: 15"
    store.add_items(project, [("2+3*4=", [answer, answer], {}),
                              ("1+1=", ["one plus one\nanswer: 2", "x"], {"steps": [["1+1=2", "answer: 2"]] * 2})])
    token = store.add_labeler(project, "ann")
    client = TestClient(create_app(store, project))
    seen = {}
    for _ in range(2):
        a = client.get("/api/next", headers=_h(token)).json()
        seen[a["prompt"]] = a
        if a["prompt"] == "2+3*4=":
            assert a["steps"] == ["3*4=12", "2+12=15", "answer: 15"]  # the response's lines
            bad = {"critique": "", "verdict": "incorrect", "first_wrong_step": 4}
            r = client.post("/api/labels", headers=_h(token),
                            json={"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": bad})
            assert r.status_code == 400 and "'first_wrong_step' is 4" in r.json()["error"]
            value = {"critique": "2+12 is 14", "verdict": "incorrect", "first_wrong_step": 2,
                     "corrected": "3*4=12\n2+12=14\nanswer: 14"}
        else:
            assert a["steps"] == ["1+1=2", "answer: 2"]  # the item's explicit steps
            value = {"critique": "", "verdict": "correct"}
        r = client.post("/api/labels", headers=_h(token),
                        json={"assignment_id": a["assignment_id"], "item_id": a["item_id"], "value": value})
        assert r.status_code == 200, r.text
    stats = client.get("/api/project", headers=_h(owner)).json()
    assert stats["distribution"] == {"short (<100 chars)": 1, "no text": 1, "with correction": 1,
                                     "verdict: incorrect": 1, "verdict: correct": 1}
    shown = seen["1+1="]["responses"][0]
    r = client.get("/api/export?record=critique", headers=_h(owner))
    rows = sorted((json.loads(line) for line in r.content.decode().splitlines()), key=lambda row: row["prompt"])
    assert rows == [{"prompt": "1+1=", "completion": shown, "critique": "verdict: correct", "verdict": "correct"},
                    {"prompt": "2+3*4=", "completion": answer, "critique": "2+12 is 14", "verdict": "incorrect",
                     "first_wrong_step": 2}]
    path = tmp_path / "fix.jsonl"
    path.write_bytes(client.get("/api/export?record=correction", headers=_h(owner)).content)
    assert [(c.prompt, c.corrected) for c in read_records(path, kind="correction")] == [
        ("2+3*4=", "3*4=12\n2+12=14\nanswer: 14")]
    store.close()
