"""Board games with perfect solvers: notation, strict move parsing, gold move values (checked
by hand and against a plain minimax), epsilon-solver opponents and transcript records."""

import random

import pytest

from rlxf.rewards.specs import load_reward
from rlxf.tasks.games import (
    CONNECT4,
    ILLEGAL_MOVE_REWARD,
    TICTACTOE,
    Game,
    completion_move,
    epsilon_solver,
    format_values,
    match,
    move_reward,
    move_value,
    parse_prompt,
    parse_values,
    play_game,
    records,
    sft_example,
    search_trace,
    solver_move,
    transcript,
)


def brute_force(game: Game, board: str) -> int:
    """Plain minimax through the public rules only: no table, no pruning, no symmetry."""
    if game.winner(board):
        return -1
    moves = game.legal_moves(board)
    return max((-brute_force(game, game.play(board, m)) for m in moves), default=0)


def test_notation_round_trips_and_renders():
    board = TICTACTOE.replay("b2 a1 c3")
    assert TICTACTOE.notation(board) == "..x/.x./o.."
    assert TICTACTOE.parse_position("..x/.x./o..") == board
    assert TICTACTOE.to_move(board) == "o"
    assert TICTACTOE.render(board) == "3 . . x\n2 . x .\n1 o . .\n  a b c\no to move"
    c4 = CONNECT4.replay(["c", "c", "d"])
    assert CONNECT4.notation(c4) == "...../...../..o../..xx."
    assert CONNECT4.render(c4).splitlines()[-2:] == ["a b c d e", "o to move"]
    assert CONNECT4.render(CONNECT4.replay("a b a b a b a")).endswith("x has won")


def test_check_move_is_strict_and_never_raises():
    board = TICTACTOE.replay("b2")
    assert TICTACTOE.check_move(board, " a1 ").move == "a1"
    for bad, why in [("A1", "not a move"), ("a 1", "not a move"), ("a1 b1", "not a move"), ("", "not a move"),
                     (None, "not a move"), ("a4", "off the"), ("d1", "off the"), ("b2", "square is taken")]:
        check = TICTACTOE.check_move(board, bad)
        assert not check.ok and check.move is None and why in check.reason, (bad, check)
    full = CONNECT4.replay("a a a a")
    assert "column is full" in CONNECT4.check_move(full, "a").reason
    assert CONNECT4.check_move(full, "b").ok
    over = CONNECT4.replay("a b a b a b a")
    assert "game is over" in CONNECT4.check_move(over, "c").reason
    with pytest.raises(ValueError, match="column is full"):
        CONNECT4.play(full, "a")


def test_parse_position_rejects_impossible_positions():
    for bad, why in [("xx./.../...", "2 x and 0 o"), ("..x/.o", "must be 3 rows"), ("..q/.../...", "must be 3 rows")]:
        with pytest.raises(ValueError, match=why):
            TICTACTOE.parse_position(bad)
    for bad in ("xxx/oo./o..", "ooo/xx./xx.", "xxx/ooo/x.."):  # o moved after x won; x after o; both won
        with pytest.raises(ValueError, match="only the last mover"):
            TICTACTOE.parse_position(bad)
    assert TICTACTOE.winner(TICTACTOE.parse_position("xxx/oo./...")) == "x"
    with pytest.raises(ValueError, match="above an empty cell"):
        CONNECT4.parse_position("...../...../x..../.....")


def test_tictactoe_hand_checked_positions():
    empty = TICTACTOE.initial()
    # Every opening move of tic-tac-toe draws under perfect play.
    assert TICTACTOE.value(empty) == 0 and set(TICTACTOE.move_values(empty).values()) == {0}
    # x: a1, c3 (opposite corners), o: b2. O must take an edge: a corner lets x fork.
    values = TICTACTOE.move_values(TICTACTOE.replay("a1 b2 c3"))
    assert values == {"a2": 0, "a3": -1, "b1": 0, "b3": 0, "c1": -1, "c2": 0}
    # x to move with a1 b1 against o's a2 b2: c1 wins at once; the position is won.
    board = TICTACTOE.replay("a1 a2 b1 b2")
    assert TICTACTOE.move_values(board)["c1"] == 1 and TICTACTOE.value(board) == 1
    # o (b2 c3) to move facing two x threats (c1 finishes row 1, a3 column a) and no win: lost.
    board = TICTACTOE.parse_position("..o/xo./xx.")
    assert TICTACTOE.value(board) == -1 and set(TICTACTOE.move_values(board).values()) == {-1}
    assert TICTACTOE.value(TICTACTOE.replay("a1 a2 b1 b2 c1")) == -1  # x has won: the side to move lost
    assert TICTACTOE.move_values(TICTACTOE.replay("a1 a2 b1 b2 c1")) == {}


def test_connect4_hand_checked_positions():
    # x on a1 b1 c1, o on a2 b2 c2, x to move: d completes the bottom row.
    board = CONNECT4.replay("a a b b c c")
    assert CONNECT4.move_values(board)["d"] == 1 and CONNECT4.value(board) == 1
    # x on b1 c1 d1 with both ends open, o (on b2 c2) to move: o blocks one end, x takes the other.
    board = CONNECT4.parse_position("...../...../.oo../.xxx.")
    assert CONNECT4.move_values(board) == {m: -1 for m in "abcde"}
    # o holds a1 a2 a3 and threatens a4; x (b1 b2 d1) to move loses with anything but a.
    board = CONNECT4.parse_position("...../o..../ox.../ox.x.")
    values = CONNECT4.move_values(board)
    assert set(values) == set("abcde") and all(values[m] == -1 for m in "bcde")


def random_positions(game: Game, n: int, max_empty: int, rng: random.Random) -> list[str]:
    """``n`` distinct unfinished positions with at most ``max_empty`` empty cells, by random play."""
    out: dict[str, None] = {}
    while len(out) < n:
        board = game.initial()
        while not game.is_over(board) and board.count(".") > max_empty:
            board = game.play(board, rng.choice(game.legal_moves(board)))
        if not game.is_over(board):
            out.setdefault(board)
    return list(out)


@pytest.mark.parametrize("game,n,max_empty", [(TICTACTOE, 3, 7), (TICTACTOE, 60, 5), (CONNECT4, 40, 6)])
def test_solver_matches_plain_minimax(game, n, max_empty):
    """Random positions: the memoised, pruned, mirrored solver gives every move its plain minimax value."""
    for board in random_positions(game, n, max_empty, random.Random(0)):
        plain = {m: -brute_force(game, game.play(board, m)) for m in game.legal_moves(board)}
        assert game.move_values(board) == plain, game.notation(board)


def test_solver_opponents():
    """Perfect play never loses tic-tac-toe; epsilon-solvers get weaker as epsilon rises.

    Threshold (written before the first run): over 300 games per epsilon as x against a uniformly
    random o, x's mean score (win 1, draw 0.5, loss 0) at epsilon 0 exceeds that at epsilon 0.5,
    which exceeds that at epsilon 1, each by at least 2 standard errors of the difference."""
    rng = random.Random(0)
    perfect, rand = epsilon_solver(TICTACTOE, 0.0, rng), epsilon_solver(TICTACTOE, 1.0, rng)
    assert [play_game(TICTACTOE, (perfect, perfect)).result for _ in range(30)] == ["draw"] * 30
    assert all(play_game(TICTACTOE, (rand, perfect)).result in ("o", "draw") for _ in range(30))
    scores = {}
    for eps in (0.0, 0.5, 1.0):
        x = epsilon_solver(TICTACTOE, eps, rng)
        r = [play_game(TICTACTOE, (x, rand)).result for _ in range(300)]
        scores[eps] = [1.0 if w == "x" else 0.5 if w == "draw" else 0.0 for w in r]

    def mean_se(xs):
        m = sum(xs) / len(xs)
        return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5

    for hi, lo in ((0.0, 0.5), (0.5, 1.0)):
        (m_hi, se_hi), (m_lo, se_lo) = mean_se(scores[hi]), mean_se(scores[lo])
        assert m_hi - m_lo >= 2 * (se_hi**2 + se_lo**2) ** 0.5, (hi, m_hi, lo, m_lo)
    board = TICTACTOE.replay("a1 b2 c3")
    assert {solver_move(TICTACTOE, board, 0.0, rng) for _ in range(50)} == {"a2", "b1", "b3", "c2"}
    assert len({solver_move(TICTACTOE, board, 1.0, rng) for _ in range(200)}) == 6
    with pytest.raises(ValueError, match="epsilon must be in"):
        epsilon_solver(TICTACTOE, 1.5, rng)


def test_illegal_moves_forfeit_and_match_scores_the_agent():
    rng = random.Random(1)
    out = play_game(TICTACTOE, (lambda board: "b2", epsilon_solver(TICTACTOE, 0.0, rng)))
    assert out.result == "o" and out.forfeit == "x" and "square is taken" in out.reason and out.moves[0] == "b2"
    perfect = epsilon_solver(TICTACTOE, 0.0, rng)
    assert match(TICTACTOE, perfect, 0.0, 10) == {"win": 0.0, "draw": 1.0, "loss": 0.0, "illegal": 0.0,
                                                   "win_or_draw": 1.0}
    babbler = match(TICTACTOE, lambda board: "move b2", 0.5, 10)
    assert babbler["loss"] == babbler["illegal"] == 1.0 and babbler["win_or_draw"] == 0.0
    # The perfect player never loses and beats a weak solver sometimes; a random one loses some.
    strong, weak = match(TICTACTOE, perfect, 0.7, 40), match(TICTACTOE, epsilon_solver(TICTACTOE, 1.0, rng), 0.0, 40)
    assert strong["loss"] == 0.0 and strong["win"] > 0.0 and weak["loss"] > 0.0 and weak["win"] == 0.0


def test_records_carry_gold_and_replay():
    rows = records(TICTACTOE, 20, seed=3)
    assert rows == records(TICTACTOE, 20, seed=3) and rows != records(TICTACTOE, 20, seed=4)
    assert sum(r["moves"] == "" for r in rows) == 20
    for row in rows:
        board = TICTACTOE.replay(row["moves"])
        assert TICTACTOE.notation(board) == row["position"] and row["to_move"] == TICTACTOE.to_move(board)
        assert row["values"] == TICTACTOE.move_values(board) and row["move"] in row["values"]
        assert row["value"] == TICTACTOE.value(board) == max(row["values"].values())
    ex = sft_example(TICTACTOE, rows[1])
    assert ex["prompt"].startswith("tictactoe\n") and ex["prompt"].endswith("to move\n")
    values_line, move_line = ex["completion"].split("\n")
    assert parse_values(values_line.removeprefix("values: ")) == rows[1]["values"]
    assert move_line == f"move: {rows[1]['move']}"
    assert format_values({"a": 1, "b": 0, "c": -1}) == "a:+1 b:0 c:-1"
    assert parse_values("a:+1 a:0") is None and parse_values("a:2") is None and parse_values("") is None


def test_transcript_annotates_each_move_with_its_gold_value():
    # x: a1, o: b2, x: c3, then o's corner a3 loses (x forks with c1), x finishes.
    assert transcript(TICTACTOE, "a1 b2 c3 a3 c1 b1 c2") == "a1:0 b2:0 c3:0 a3:-1 c1:+1 b1:-1 c2:+1 result: x"
    assert transcript(TICTACTOE, ["b2"]) == "b2:0 result: ?"
    with pytest.raises(ValueError, match="square is taken"):
        transcript(TICTACTOE, "b2 b2")


def test_move_reward_scores_completions_by_gold():
    prompt = sft_example(TICTACTOE, {"position": "..x/.o./x..", "values": {}, "move": ""})["prompt"]
    assert parse_prompt(prompt) == (TICTACTOE, TICTACTOE.replay("a1 b2 c3"))
    board = CONNECT4.parse_position("...../o..../ox.../ox.x.")
    assert parse_prompt(sft_example(CONNECT4, {"position": CONNECT4.notation(board), "values": {}, "move": ""})["prompt"]) \
        == (CONNECT4, board)
    chat = [{"role": "system", "content": "play well"}, {"role": "user", "content": prompt}]
    completions = ["values: a2:0\nmove: a2", "move: a3", [{"role": "assistant", "content": "move: b2"}],
                   "I would play a2", "move: a2 please"]
    rewards = move_reward([prompt, prompt, chat, prompt, chat], completions)
    assert rewards == [0.0, -1.0, ILLEGAL_MOVE_REWARD, ILLEGAL_MOVE_REWARD, ILLEGAL_MOVE_REWARD]
    assert move_value(prompt, "move: c2") == 0.0
    assert "no 'move: ...' line" in completion_move(TICTACTOE, TICTACTOE.initial(), "a2").reason
    for bad in ("chess\n...", "tictactoe\n3 . . x"):
        with pytest.raises(ValueError, match="not a game prompt"):
            move_value(bad, "move: a1")
    assert load_reward("rlxf.tasks.games:move_reward").fn is move_reward


def test_search_trace_lists_gold_values_and_ends_in_a_best_move():
    board = TICTACTOE.replay("a1 b2 c3")
    trace = search_trace(TICTACTOE, board, breadth=2, depth=2, rng=random.Random(0))
    *lines, answer = trace.split("\n")
    assert answer.removeprefix("move: ") in {"a2", "b1", "b3", "c2"}  # a best move (corners lose)
    assert len(lines) == 2 + 2 * 2 and sum(" " not in line.split(":")[0] for line in lines) == 2
    for line in lines:
        path, value = line.split(":")
        *before, move = path.split()
        assert TICTACTOE.move_values(TICTACTOE.replay(["a1", "b2", "c3"] + before))[move] == int(value), line
    # Breadth above the number of moves lists them all; only a stops o's a4 (see the hand-checked test).
    full = search_trace(CONNECT4, CONNECT4.parse_position("...../o..../ox.../ox.x."), 9, 1, random.Random(1))
    assert sorted(full.split("\n")[:-1])[1:] == ["b:-1", "c:-1", "d:-1", "e:-1"] and full.endswith("move: a")
    with pytest.raises(ValueError, match="breadth and depth must be >= 1"):
        search_trace(TICTACTOE, board, 0, 1, random.Random(0))


@pytest.mark.slow
def test_connect4_full_solve_from_the_empty_board():
    """5x4 Connect-Four is a draw under perfect play (it agrees with published small-board
    results); the edge columns lose for the first player. Records from the empty board then cost
    only look-ups."""
    assert CONNECT4.value(CONNECT4.initial()) == 0
    assert CONNECT4.move_values(CONNECT4.initial()) == {"a": -1, "b": 0, "c": 0, "d": 0, "e": -1}
    rows = records(CONNECT4, 30, seed=0)
    assert all(r["value"] == max(r["values"].values()) for r in rows)
    perfect = epsilon_solver(CONNECT4, 0.0, random.Random(0))
    assert [play_game(CONNECT4, (perfect, perfect)).result for _ in range(10)] == ["draw"] * 10
