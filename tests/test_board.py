"""Board-game planning with a game LM (MAV): text formats, the LM's action values, two-player MCTS
on the search core, games in step against epsilon-solvers, trace and moves-alone training pairs,
the lab's setup and methods, and the paper's two claims at small budget (slow)."""

import random

import pytest
import torch

from rlxf.algorithms.search import board as bd
from rlxf.algorithms.search.board import (
    ActionValues,
    alternate,
    decisive,
    game_prompt,
    move_gold,
    move_pairs,
    paired_gap,
    plan,
    play_many,
    reachable,
    trace_pairs,
    value_text,
    vote,
)
from rlxf.core.runs import Run
from rlxf.search import Node, puct
from rlxf.tasks.games import TICTACTOE as TTT
from rlxf.tasks.games import format_values, records


class TableValues:
    """A stand-in for :class:`ActionValues`: move values from a function of the board."""

    def __init__(self, fn, game=TTT):
        self.fn, self.game, self.evaluations = fn, game, 0

    def __call__(self, boards):
        self.evaluations += len(boards)
        return [self.fn(b) for b in boards]


def test_prompt_value_text_and_gold():
    board = TTT.replay("b2 a1 c3")
    assert game_prompt(TTT, board) == "..x/.x./o.. o\n"
    assert value_text(TTT, board) == format_values(TTT.move_values(board))
    values = TTT.move_values(TTT.replay("a1 a2 b1 b2"))  # x to move: c1 wins
    board = TTT.replay("a1 a2 b1 b2")
    assert values["c1"] == 1 and move_gold(TTT, board, "c1") == 1.0
    lost = TTT.replay("a1 b2 c3")  # o must take an edge; a corner loses
    assert move_gold(TTT, lost, "a3") == 0.0 and move_gold(TTT, lost, "a2") == 0.5
    assert move_gold(TTT, lost, "b2") == 0.0 and move_gold(TTT, lost, None) == 0.0  # taken square, no move
    assert decisive(TTT, lost) and not decisive(TTT, TTT.initial())
    assert len(reachable(TTT)) == 4520  # the known count of unfinished tic-tac-toe positions


def test_alternate_negates_q_on_the_opponents_plies():
    """PUCT: q + c * P * sqrt(N_parent) / (1 + N_child) = 0.5 + 1 * 0.5 * 2 / 3; the opponent sees -q."""
    parent = Node(id=0, parent=None, depth=0, visits=4)
    mine = Node(id=1, parent=0, depth=1, prior=0.5, visits=2, value_sum=1.0)
    theirs = Node(id=2, parent=1, depth=2, prior=0.5, visits=2, value_sum=1.0)
    rule = alternate(puct(1.0))
    assert rule(parent, mine) == pytest.approx(0.5 + 2 / 3 * 0.5)
    assert rule(parent, theirs) == pytest.approx(-0.5 + 2 / 3 * 0.5)


def test_one_simulation_follows_the_values_and_search_finds_wins_and_blocks():
    gold = TableValues(lambda b: {m: float(v) for m, v in TTT.move_values(b).items()})
    boards = [b for b in reachable(TTT) if decisive(TTT, b)][::40]
    assert all(move_gold(TTT, b, m) == max(move_gold(TTT, b, x) for x in TTT.legal_moves(b))
               for b, m in zip(boards, plan(gold, boards, simulations=1)))
    assert gold.evaluations == len(boards)  # one LM evaluation per board without search
    # Uninformative values: only the rules (finished games) inform the search.
    zero = TableValues(lambda b: {m: 0.0 for m in TTT.legal_moves(b)})
    win = TTT.replay("a1 a2 b1 b2")  # x to move: c1 wins at once
    block = TTT.replay("a1 b2 b1")  # o to move: only c1 stops x's row
    assert plan(zero, [win], simulations=1) == ["c1"]
    assert plan(zero, [block], simulations=1) != ["c1"]  # one expansion cannot see x's reply
    assert plan(zero, [block, win], simulations=40) == ["c1", "c1"]
    assert zero.evaluations <= 2 + 40 * 2


def test_action_values_read_each_move_slot(monkeypatch):
    """The value of a move is P('+') - P('-') where its value is written; unlisted moves get 0;
    repeated boards are served from the cache but still counted."""
    tok = bd.game_tokenizer()
    policy = bd.LanguagePolicy(bd.tiny_causal_lm(tok, "gpt2", 1, 16, 2, 64, seed=0), tok)
    board = TTT.replay("a1 b2 c3 a2 c1")  # o to move: a3, b1, b3, c2 are legal
    text = "a3:-1 b1:0 zz c2:+1"
    monkeypatch.setattr(bd, "generate", lambda pol, prompts, n: ([text] * len(prompts),
                                                                 pol.encode_responses([text] * len(prompts))))
    values = ActionValues(policy, TTT)
    got = values([board, board])[0]
    assert set(got) == set(TTT.legal_moves(board)) and got["b3"] == 0.0
    prompt = policy.encode([game_prompt(TTT, board)])
    plus, minus = (tok.convert_tokens_to_ids(c) for c in "+-")
    for move, slot in [("a3", 3), ("b1", 9), ("c2", 17)]:  # the character after "move:"
        with torch.no_grad():  # the distribution after the text up to the slot, scored on its own
            logits, _, _ = policy.logits(prompt, [policy.encode([text[:slot + 1]])[0]])
        p = logits[0, slot].softmax(-1)
        assert got[move] == pytest.approx(float(p[plus] - p[minus]), abs=1e-5)
    assert values.evaluations == 2 and len(values.cache) == 1
    values([board])
    assert values.evaluations == 3 and values.sampled_tokens == len(text) + 1  # decoded once


def test_play_many_scores_and_pairs_games():
    def solver(boards):
        return [TTT.best_moves(b)[0] for b in boards]

    eps = [0.0, 0.5, 1.0] * 4
    assert min(play_many(TTT, solver, eps, seed=3)) >= 0.5  # perfect play never loses
    assert play_many(TTT, lambda bs: ["zz"] * len(bs), eps) == [0.0] * len(eps)  # illegal: a loss
    sides = []

    def first(boards):
        sides.extend(TTT.to_move(b) for b in boards)
        return [TTT.legal_moves(b)[0] for b in boards]

    a, b = play_many(TTT, first, eps, seed=3), play_many(TTT, first, eps, seed=3)
    assert a == b  # each game's opponent draws come from the seed and the game's index
    assert len({tuple(play_many(TTT, first, eps, seed=s)) for s in range(4)}) > 1
    assert sides.count("x") > 0 and sides.count("o") > 0


def test_trace_and_move_pairs_share_prompts_and_final_move():
    boards = bd.positions(TTT, records(TTT, 5, seed=0))
    traces = trace_pairs(TTT, boards, breadth=9, depth=1)
    moves = move_pairs(traces)
    for b, (p, t), (q, m) in zip(boards, traces, moves):
        assert p == q == game_prompt(TTT, b) and t.endswith(f"move: {m}") and m in TTT.best_moves(b)
    assert vote(TTT, TTT.initial(), ["b2", "a1", " a1", "zz", "b2 "]) == "b2"  # tie: the first seen
    assert vote(TTT, TTT.replay("b2"), ["b2", "q"]) is None
    assert paired_gap([0, 0, 1], [1, 1, 1]) == (pytest.approx(2 / 3), pytest.approx((1 / 3) ** 0.5 / 3 ** 0.5))


def test_lab_setup_and_methods_end_to_end(tmp_path):
    setup = bd.lab_setup(Run(tmp_path, "board lab smoke", fresh=True), seed=0, n_prompts=6, steps=3)
    assert setup.name == "tictactoe" and len(setup.prompts) == 6
    for method, budget in [(bd.POLICY, 8), (bd.MCTS, 4)]:
        out = method.search(setup, None, budget, 0)
        assert 0.0 <= out["gold"] <= 1.0
        assert (out["generations"] == 6) if method is bd.POLICY else (6 < out["generations"] <= 6 * 4)


# -- the paper's claims at small budget (slow) ------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab's board task with a MAV LM trained longer than the lab's default (1500 steps on the positions
    of 600 epsilon-solver games): at 400 steps it had learned the format but no values."""
    return bd.lab_setup(Run(tmp_path_factory.mktemp("board_lab"), "board lab", fresh=True), seed=0, n_prompts=100,
                        steps=1500)


@pytest.mark.slow
def test_claim_external_search_win_or_draw_rises_with_simulations(lab):
    """External planning: MCTS with the MAV LM as prior and value (no rollouts) against epsilon-solvers
    (epsilon 0, 0.25, 0.5; 180 games each, the agent X in half of them). Compute per move is the number
    of simulations (LM evaluations of a position). Threshold, fixed before the first run: the win-or-draw
    rate at 32 simulations exceeds the rate at 1 simulation (the LM's best-valued move, no search) by at
    least 2 standard errors of the paired per-game difference over the 540 games (game i meets the same
    opponent random stream at every budget)."""
    values = ActionValues(lab.policy, lab.extras["game"])
    eps = [0.0, 0.25, 0.5] * 180
    wd = {}
    for sims in (1, 8, 32):
        before = values.evaluations
        wd[sims] = [s > 0 for s in play_many(TTT, bd.mcts_agent(values, sims), eps, seed=0)]
        print(f"simulations {sims}: win_or_draw {sum(wd[sims]) / len(eps):.3f} "
              f"LM evaluations per game {(values.evaluations - before) / len(eps):.1f}")
    gap, se = paired_gap(wd[1], wd[32])
    print(f"win_or_draw gain 1 -> 32 simulations: {gap:+.3f} (SE {se:.3f})")
    # Not part of the claim, printed for the reader: the same search with uninformative values (all 0).
    zero = TableValues(lambda b: {m: 0.0 for m in TTT.legal_moves(b)})
    flat = [s > 0 for s in play_many(TTT, bd.mcts_agent(zero, 32), eps, seed=0)]
    print(f"32 simulations with all values 0: win_or_draw {sum(flat) / len(eps):.3f}; "
          f"LM values minus zero values {paired_gap(flat, wd[32])[0]:+.3f} (SE {paired_gap(flat, wd[32])[1]:.3f})")
    assert gap > 0 and gap >= 2 * se


@pytest.mark.slow
@pytest.mark.xfail(reason="measured at seed 0: trace LM 0.314 vs moves alone 0.323, gap -0.008 (SE 0.017), and "
                          "+0.006 (SE 0.017) with both trained 1500 steps; neither LM learns tic-tac-toe's move "
                          "values well enough at this budget (both at random level), see docs/search.md",
                   strict=False)
def test_claim_internal_search_trace_beats_moves_alone(tmp_path):
    """Internal planning: two LMs of the same size trained for the same 800 steps (batch 32) on the
    same positions (those of 600 epsilon-solver games), one on one-ply search traces (every legal move
    with its value, then ``move: M``), one on the move M alone. At inference the trace LM writes its
    trace greedily; the moves-alone LM spends at least as many generated tokens on samples (T=1) and
    plays its most frequent move. Positions: 600 decisive positions of fresh epsilon-solver games
    (another seed). Threshold, fixed before the first run: the trace LM's mean gold (the solver value
    of its move on [0, 1]) exceeds the baseline's by at least 2 standard errors of the paired
    per-position difference."""
    boards = bd.positions(TTT, records(TTT, 600, seed=0))
    test = [b for b in bd.positions(TTT, records(TTT, 600, seed=1)) if decisive(TTT, b)][:600]
    traces = trace_pairs(TTT, boards, breadth=9, depth=1, seed=0)
    run = Run(tmp_path, "board internal claim", fresh=True)
    trace_lm = bd.train_game_lm(run, "trace", traces, steps=800, seed=0)
    moves_lm = bd.train_game_lm(run, "moves", move_pairs(traces), steps=800, seed=0)
    moves, spent = bd.trace_moves(TTT, trace_lm, test)
    k = -(-sum(spent) // (3 * len(test)))  # a sampled move is 3 tokens ("b2" and EOS)
    voted, spent_voted = bd.voted_moves(TTT, moves_lm, test, k)
    gold = [move_gold(TTT, b, m) for b, m in zip(test, moves)]
    base = [move_gold(TTT, b, m) for b, m in zip(test, voted)]
    gap, se = paired_gap(base, gold)
    print(f"positions {len(test)}; trace LM {sum(gold) / len(test):.3f} ({sum(spent) / len(test):.1f} tokens), "
          f"moves alone x{k} {sum(base) / len(test):.3f} ({sum(spent_voted) / len(test):.1f} tokens); "
          f"gap {gap:+.3f} (SE {se:.3f})")
    assert len(test) == 600 and sum(spent_voted) >= sum(spent)
    assert gap > 0 and gap >= 2 * se
