"""BASALT-style evaluation: the TrueSkill two-player update against hand-computed numbers, the table
and its games from app labels, the video comparison API, and the claim: simulated judges' TrueSkill
ranking of agents of known quality matches their gold ranking."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rlxf.algorithms.trueskill import Rating, TrueSkill, leaderboard, most_informative_pair, rate_games
from rlxf.lab.basalt import games_from_labels, kendall_tau, trueskill_table


def test_win_without_draws_or_drift_matches_the_hand_computation():
    # mu 25, sigma 25/3, beta 25/6, tau 0, p_draw 0: c^2 = 2 beta^2 + 2 sigma^2 = 173.6111, so sigma^2 / c^2 = 0.4;
    # t = 0, v = N(0) / Phi(0) = 0.3989423 / 0.5 = 0.7978846, w = v (v + t) = 0.6366198;
    # mu' = 25 +- (69.4444 / 13.176157) * 0.7978846 = 25 +- 4.2052209;
    # sigma'^2 = 69.4444 * (1 - 0.4 * 0.6366198) = 51.7597 -> sigma' = 7.194481
    ts = TrueSkill(tau=0.0, draw_probability=0.0)
    win, lose = ts.rate(Rating(), Rating())
    assert (win.mu, lose.mu) == (pytest.approx(29.2052209, abs=1e-6), pytest.approx(20.7947791, abs=1e-6))
    assert win.sigma == pytest.approx(7.194481, abs=1e-6) and lose.sigma == pytest.approx(7.194481, abs=1e-6)
    assert win.conservative == pytest.approx(29.2052209 - 3 * 7.194481, abs=1e-5)


def test_defaults_reproduce_trueskills_published_first_game():
    # TrueSkill's reference numbers for two new players (mu 25, sigma 25/3, beta 25/6, tau 25/300, p_draw 0.1):
    # the winner goes to (29.396, 7.171), the loser to (20.604, 7.171); a draw leaves mu and gives sigma 6.458
    ts = TrueSkill()
    assert ts.draw_margin == pytest.approx(0.125661 * math.sqrt(2) * 25 / 6, abs=1e-5)  # Phi^-1(0.55) = 0.125661
    win, lose = ts.rate(Rating(), Rating())
    assert (round(win.mu, 3), round(win.sigma, 3), round(lose.mu, 3)) == (29.396, 7.171, 20.604)
    a, b = ts.rate(Rating(), Rating(), draw=True)
    assert (round(a.mu, 3), round(a.sigma, 3), round(b.mu, 3), round(b.sigma, 3)) == (25.0, 6.458, 25.0, 6.458)


def test_upsets_move_more_and_draws_pull_ratings_together():
    ts = TrueSkill()
    strong, weak = Rating(30, 3), Rating(20, 3)
    expected = ts.rate(strong, weak)
    upset = ts.rate(weak, strong)
    assert upset[0].mu - weak.mu > expected[0].mu - strong.mu > 0  # a surprise teaches more
    hi, lo = ts.rate(strong, weak, draw=True)
    assert strong.mu > hi.mu > lo.mu > weak.mu
    # rate_games applies the same updates in order; 0.0 means the second agent won
    r = rate_games([("s", "w", 0.0)], start={"s": strong, "w": weak}, ts=ts)
    assert r["w"] == upset[0] and r["s"] == upset[1]
    with pytest.raises(ValueError, match="outcome"):
        rate_games([("a", "b", 2.0)])
    assert ts.win_probability(Rating(25, 1), Rating(25, 1)) == pytest.approx(0.5)


def test_active_choice_asks_about_the_most_uncertain_pair():
    ts = TrueSkill()
    ratings = {"x": Rating(25, 8), "y": Rating(25, 8), "z": Rating(25, 1)}
    assert set(most_informative_pair(ts, ratings)) == {"x", "y"}


def test_kendall_tau_and_the_table_from_app_labels():
    assert kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert kendall_tau(["c", "b", "a"], ["a", "b", "c"]) == -1.0
    assert kendall_tau(["b", "a", "c"], ["a", "b", "c"]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant
    item = SimpleNamespace(meta={"videos": True, "agents": ["good", "bad"]})
    lab = lambda shown, choice: SimpleNamespace(item=item, shown=shown, value={"choice": choice})  # noqa: E731
    labels = [lab((0, 1), "a"), lab((1, 0), "b"), lab((1, 0), "tie"), lab((0, 1), "skip"),
              SimpleNamespace(item=SimpleNamespace(meta={}), shown=(0, 1), value={"choice": "a"})]
    games = games_from_labels(labels)
    # shown (1, 0) puts "bad" on the left: choice b (the right one) is a win for "good"
    assert games == [("good", "bad", 1.0), ("bad", "good", 0.0), ("bad", "good", 0.5)]
    rows = trueskill_table(games, agents=["good", "bad", "idle"])
    assert [r["agent"] for r in rows] == ["good", "bad", "idle"]  # "idle" keeps the prior: 25 - 3 * 25/3 = 0
    good = rows[0]
    assert (good["games"], good["wins"], good["draws"]) == (3, 2, 1)
    assert rows[2]["mu"] == 25.0 and rows[2]["conservative"] == 0.0 and rows[2]["games"] == 0
    assert rows[1]["conservative"] > 0  # three games shrank "bad"'s sigma enough to rank above the unknown
    ratings = rate_games(games)
    assert good["mu"] == ratings["good"].mu and good["conservative"] == ratings["good"].conservative
    assert [a for a, _ in leaderboard(ratings)] == ["good", "bad"]


def _gif(path, colour):
    from rlxf.tasks.render import write_gif

    write_gif([np.full((8, 8, 3), colour, np.uint8)] * 2, path)


def test_video_api_serves_only_the_open_assignments_clips(tmp_path):
    from rlxf.app.project import init_project, open_project
    from rlxf.app.server import create_app

    init_project(tmp_path / "p", "preference")
    store, project = open_project(tmp_path / "p")
    videos = tmp_path / "p" / "videos"
    videos.mkdir()
    _gif(videos / "c1.gif", (255, 0, 0))
    _gif(videos / "c2.gif", (0, 0, 255))
    (tmp_path / "p" / "secret.gif").write_bytes(b"GIF89a-secret")
    store.add_items(project, [("Which?", ["c1.gif", "c2.gif"], {"videos": True, "agents": ["r", "b"]}),
                              ("Which?", ["../secret.gif", "c2.gif"], {"videos": True, "agents": ["s", "b"]})])
    token = store.add_labeler(project, "ann")
    client = TestClient(create_app(store, project, video_dir=videos))
    auth = {"Authorization": f"Bearer {token}"}
    assert "blob:" in client.get("/label").headers["Content-Security-Policy"]
    for _ in range(2):
        nxt = client.get("/api/next", headers=auth).json()
        assert nxt["videos"] == [f"/api/video?assignment={nxt['assignment_id']}&k={k}" for k in (0, 1)]
        names = nxt["responses"]
        got = [client.get(url, headers=auth) for url in nxt["videos"]]
        for name, res in zip(names, got):
            if name == "../secret.gif":
                assert res.status_code == 404 and b"GIF89a-secret" not in res.content  # never a path outside videos/
            else:
                assert res.status_code == 200 and res.headers["content-type"] == "image/gif"
                assert res.content == (videos / name).read_bytes()
        assert client.get(f"/api/video?assignment={nxt['assignment_id'] + 7}&k=0", headers=auth).status_code == 404
        assert client.get(f"/api/video?assignment={nxt['assignment_id']}&k=2", headers=auth).status_code == 404
        assert client.get(nxt["videos"][0]).status_code == 401  # the token is required
        client.post("/api/labels", headers=auth, json={"assignment_id": nxt["assignment_id"],
                                                       "item_id": nxt["item_id"], "value": {"choice": "a"}})
    assert client.get(nxt["videos"][0], headers=auth).status_code == 404  # answered: its clips are closed
    store.close()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured at its first run: Kendall tau 1.00 / 1.00 / 0.80 on seeds 0 / 1 / 2, "
                   "top-1 right / right / wrong (seed 2 put noise0.3 above noise0 after 60 matches); tau >= 0.8 held "
                   "on every seed, the top-1 part did not")
def test_simulated_judges_trueskill_ranking_matches_gold():
    """Pre-registered (committed before its first run): five Reacher-v5 agents (one controller, action
    noise 0, 0.3, 0.6, 1, 2), 60 uniformly drawn same-seed matches judged on gold by a Bradley-Terry judge
    (beta 0.2 per unit of return, 10% flipped answers, draws below 2): for each of the fresh seeds 0, 1, 2
    the TrueSkill order (mu - 3 sigma) has Kendall tau >= 0.8 with the gold order and the right top agent."""
    pytest.importorskip("mujoco")
    from rlxf.lab.basalt import basalt_table

    results = [basalt_table(n_matches=60, seed=seed) for seed in (0, 1, 2)]
    print("\n" + "; ".join(f"seed {s}: tau {r['kendall_tau']:.2f}, top-1 {r['top1']}" for s, r in enumerate(results)))
    for r in results:
        assert r["gold_order"] == ["noise0", "noise0.3", "noise0.6", "noise1", "noise2"]  # quality is as designed
        assert r["kendall_tau"] >= 0.8 and r["top1"]
