"""Prompt optimisation through the feedback app: candidates read and checked, labels mapped back to
duels whatever order the pair was shown in, APOHF picking each question over HTTP, the reported prompt
on the owner's page and from the CLI, and the commands' errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rlxf.app import cli
from rlxf.app.client import LabelClient, serve_in_background
from rlxf.app.project import init_project, open_project
from rlxf.app.prompt_duels import PromptDuels, add_prompts, duel_of, read_candidates, word_features
from rlxf.app.server import create_app
from rlxf.data.io import DataError
from rlxf.data.label_store import Item, Label, StoreError

QUALITY = [3, 1, 4, 0, 2, 5]  # the scripted person prefers higher quality; candidate 5 is their favourite


def candidates(n=6):
    rng = np.random.default_rng(0)
    return [{"prompt": f"instruction {k}", "shown": f"answers of quality {q}",
             "embedding": rng.standard_normal(4).round(3).tolist()} for k, q in enumerate(QUALITY[:n])]


def quality(text: str) -> int:
    return int(re.search(r"quality (\d)", text).group(1))


def test_a_label_maps_back_to_its_duel_whatever_the_display_order():
    item = Item(1, "q", ("A text", "B text"), {"prompt_duel": [4, 2]})

    def label(shown, choice):
        return Label(1, "ann", item, shown, "preference", {"choice": choice}, 0.0)

    assert duel_of(label((0, 1), "a")) == (4, 2, 1.0)  # response 0 (candidate 4) shown first and chosen
    assert duel_of(label((1, 0), "a")) == (4, 2, 0.0)  # response 1 (candidate 2) shown first and chosen
    assert duel_of(label((1, 0), "b")) == (4, 2, 1.0)
    assert duel_of(label((0, 1), "tie")) == (4, 2, 0.5)
    assert duel_of(label((0, 1), "skip")) is None
    assert duel_of(Label(1, "ann", Item(2, "q", ("x", "y"), {}), (0, 1), "preference", {"choice": "a"}, 0.0)) is None


def test_candidates_file_is_checked_and_features_default_to_hashed_words(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "be brief"}\n{"prompt": "be very brief", "shown": "A: 3"}\n')
    rows = read_candidates(path)
    assert rows[1]["shown"] == "A: 3" and rows[0]["shown"] == ""
    assert np.allclose(rows[0]["embedding"], word_features("be brief"))
    assert np.linalg.norm(rows[1]["embedding"]) == pytest.approx(1.0)
    path.write_text('{"prompt": "a", "embedding": [1, 2]}\n{"prompt": "b", "embedding": [1]}\n')
    with pytest.raises(DataError, match="embedding"):
        read_candidates(path)
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="line 2.*prompt"):
        read_candidates(path)
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError, match="at least 2"):
        read_candidates(path)


def test_add_prompts_needs_a_fresh_preference_project_with_apohf_or_uniform(tmp_path):
    init_project(tmp_path / "rating", "rating")
    with pytest.raises(StoreError, match="preference"):
        add_prompts(tmp_path / "rating", candidates())
    init_project(tmp_path / "dis", "preference", selection="disagreement")
    with pytest.raises(StoreError, match="selection"):
        add_prompts(tmp_path / "dis", candidates())
    init_project(tmp_path / "used", "preference", selection="apohf")
    store, project = open_project(tmp_path / "used")
    store.add_items(project, [("p", ["a", "b"], {})])
    store.close()
    with pytest.raises(StoreError, match="already has items"):
        add_prompts(tmp_path / "used", candidates())


def test_people_answer_apohf_duels_over_http_and_their_favourite_is_reported(tmp_path, capsys):
    directory = tmp_path / "po"
    owner = init_project(directory, "preference", selection="apohf", seed=0)
    add_prompts(directory, candidates(), max_duels=10, n_init=3)
    store, project = open_project(directory)
    duels = PromptDuels.of(directory, project)
    token = store.add_labeler(project, "ann")
    seen = []
    with serve_in_background(create_app(store, project, duels=duels)) as url:
        client = LabelClient(url, token)
        while (a := client.next()) is not None:
            q = [quality(r) for r in a["responses"]]
            assert a["prompt"].startswith("Two candidate prompts") and len(q) == 2
            seen.append(tuple(q))
            client.submit(a, {"choice": "a" if q[0] > q[1] else "b"})
        client.close()
        import httpx

        page = httpx.get(f"{url}/api/project", headers={"Authorization": f"Bearer {owner}"}).json()
    answered = duels.duels(store, project)
    assert len(seen) == len(answered) == 10  # every label reached the loop ...
    for (i, j, y), shown in zip(answered, seen):  # ... as the right duel with the right winner
        assert {QUALITY[i], QUALITY[j]} == set(shown) and y == float(QUALITY[i] > QUALITY[j])
    assert any(5 in s for s in seen[3:])  # after the 3 random duels the rule found the favourite
    assert page["best_prompt"] == {"duels": 10, "index": 5, "prompt": "instruction 5"}
    store.close()
    assert cli.main(["label", "best-prompt", "--project", str(directory)]) == 0
    assert "after 10 answered duels APOHF reports candidate 5: 'instruction 5'" in capsys.readouterr().out


def test_cli_adds_prompts_from_a_file_and_names_a_project_that_has_none(tmp_path, capsys):
    directory = tmp_path / "po"
    init_project(directory, "preference", selection="uniform")
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in candidates(3)))
    assert cli.main(["label", "add-prompts", "--project", str(directory), str(path), "--max-duels", "4"]) == 0
    assert "3 candidate prompts" in capsys.readouterr().out
    spec = json.loads((directory / "prompt_duels.json").read_text())
    assert spec["max_duels"] == 4 and [c["prompt"] for c in spec["candidates"]] == ["instruction 0", "instruction 1",
                                                                                      "instruction 2"]
    store, project = open_project(directory)
    assert PromptDuels.of(directory, project).cfg.nu == -1.0  # selection uniform: random pairs
    store.close()
    init_project(tmp_path / "plain", "preference")
    assert cli.main(["label", "best-prompt", "--project", str(tmp_path / "plain")]) == 2
    assert "not a prompt-duel project" in capsys.readouterr().err
    assert cli.main(["label", "add-prompts", "--project", str(tmp_path / "plain"), "--task", "chess"]) == 2
    assert "--task must be one of kinds" in capsys.readouterr().err
    assert cli.main(["label", "add-prompts", "--project", str(tmp_path / "none"), "--task", "kinds"]) == 2
    assert "project.json not found" in capsys.readouterr().err  # named before the task's model is built
