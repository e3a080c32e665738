"""Board-game planning with a game LM, externally (MCTS with the LM as prior and value) and
internally (the LM writes a search trace, then its move): the MAV model of Schultz et al.,
"Mastering Board Games by External and Internal Planning with Language Models" (ICML 2025),
at toy scale on the solved games of :mod:`rlxf.tasks.games` (tic-tac-toe by default).

- The game LM is a tiny character-level GPT-2 trained from scratch. Its prompt is a position
  (:func:`game_prompt`: the one-line notation and the side to move); its completion is, for the
  MAV (:func:`value_text`), every legal move with its solver value (``"a1:0 b2:+1"``), for the
  internal planner a :func:`rlxf.tasks.games.search_trace` ending ``move: M``, and for the
  moves-alone baseline the move only.
- External planning: :class:`ActionValues` reads each legal move's value from the LM (its greedy
  value line, then the expected value ``P(+1) - P(-1)`` at each move's value slot), and
  :func:`plan` runs the core :func:`rlxf.search.mcts` over positions with it: expanding a leaf
  asks the LM once for the values of all its moves (the children's values and, as a softmax,
  their priors); no random rollouts. The game rules give legal moves and finished games.
- Internal planning: :func:`trace_moves` lets a trace-trained LM write its search, then reads its
  move; :func:`voted_moves` spends the same generated tokens on samples of a moves-alone LM and
  takes the most frequent move.

Gold is the solver's value of the chosen move (:func:`move_gold`: loss or illegal 0, draw 0.5,
win 1); opponents are epsilon-solvers (:func:`play_many`). The search never asks the solver.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.lab.search import SearchMethod, TaskSetup
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.search import Tree, mcts, puct
from rlxf.search.procedures import Rule
from rlxf.tasks.games import (TICTACTOE, Game, completion_move, format_values, records, result, search_trace,
                              solver_move)

ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.:+-/ \n")
GREEDY = 1e-4  # sampling temperature that is argmax in practice


# -- text ------------------------------------------------------------------------------------


def game_tokenizer():
    """Character-level tokenizer for positions, moves, values and traces."""
    return tiny_tokenizer(ALPHABET, split="chars")


def game_prompt(game: Game, board: str) -> str:
    """The LM's view of a position: ``"..x/.o./x.. o\\n"`` (rows top first, then the side to move)."""
    return f"{game.notation(board)} {game.to_move(board)}\n"


def value_text(game: Game, board: str) -> str:
    """The MAV completion: every legal move with its solver value, ``"a1:0 b2:+1"``."""
    return format_values(game.move_values(board))


def move_gold(game: Game, board: str, move: str | None) -> float:
    """The solver's value of ``move`` on [0, 1] for the side making it: win 1, draw 0.5, loss 0;
    a missing or illegal move counts as a loss."""
    return (game.move_values(board)[move] + 1) / 2 if move in game.legal_moves(board) else 0.0


def positions(game: Game, rows: list[dict]) -> list[str]:
    """The distinct boards of :func:`rlxf.tasks.games.records` rows, in order."""
    return list(dict.fromkeys(game.parse_position(r["position"]) for r in rows))


def decisive(game: Game, board: str) -> bool:
    """Does the choice matter here (at least two different move values)?"""
    return len(set(game.move_values(board).values())) > 1


def reachable(game: Game) -> list[str]:
    """Every unfinished position reachable from the empty board (small games only)."""
    seen, front = {game.initial()}, [game.initial()]
    while front:
        front = list({c for b in front for c in (game.play(b, m) for m in game.legal_moves(b))} - seen)
        seen.update(front)
    return sorted(b for b in seen if not game.is_over(b))


# -- the game LM -----------------------------------------------------------------------------


def train_game_lm(run: Run, stage: str, pairs: list[tuple[str, str]], steps: int = 600, seed: int = 0,
                  n_layer: int = 2, n_embd: int = 64, lr: float = 3e-3) -> LanguagePolicy:
    """A fresh tiny GPT-2 trained by SFT on (prompt, completion) ``pairs`` (batch 32); returned in eval mode."""
    tok = game_tokenizer()
    longest = max(len(p) + len(c) for p, c in pairs) + 2
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, max(128, longest), seed=seed), tok)
    prompts = policy.encode([p for p, _ in pairs])
    responses = policy.encode_responses([c for _, c in pairs])
    cfg = OptimConfig(steps=steps, batch_size=32, lr=lr, checkpoint_every=10**6)
    train_sft(run, stage, policy, prompts, responses, cfg, seed, quiet=True)
    policy.model.eval()
    return policy


def generate(policy: LanguagePolicy, prompts: list[str], max_new_tokens: int, n: int = 1,
             temperature: float = GREEDY, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """``n`` completions per prompt (rows grouped by prompt): texts and token ids (EOS included)."""
    ro = policy.sample(policy.encode(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator=torch.Generator().manual_seed(seed))
    return [policy.decode(r) for r in ro.response_ids], ro.response_ids


# -- external planning: MCTS with the LM's action values ----------------------------------------


@dataclass
class ActionValues:
    """The MAV's move values: for each board, every legal move's value for the side to move, in
    [-1, 1], from one greedy value line of the LM (boards are decoded together) and one scoring
    pass over it; a legal move the line leaves out gets 0. Greedy decoding is deterministic, so
    answers are cached by board; ``evaluations`` counts every board asked (cached or not) and
    ``sampled_tokens`` the tokens actually generated."""

    policy: LanguagePolicy
    game: Game
    evaluations: int = 0
    sampled_tokens: int = 0
    cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, boards: list[str]) -> list[dict[str, float]]:
        self.evaluations += len(boards)
        todo = list(dict.fromkeys(b for b in boards if b not in self.cache))
        if todo:
            prompts = [game_prompt(self.game, b) for b in todo]
            max_tokens = 6 * self.game.cols * self.game.rows + 2
            texts, ids = generate(self.policy, prompts, max_tokens)
            self.sampled_tokens += sum(map(len, ids))
            with torch.no_grad():
                logits, _, _ = self.policy.logits(self.policy.encode(prompts), ids)
            probs = logits.softmax(-1)
            plus, minus = (self.policy.tokenizer.convert_tokens_to_ids(c) for c in "+-")
            for row, (board, text) in enumerate(zip(todo, texts)):
                slots = {m[1]: m.end() for m in re.finditer(r"(?:^| )([a-z][1-9]?):", text)}
                self.cache[board] = {
                    move: float(probs[row, slots[move], plus] - probs[row, slots[move], minus])
                    if move in slots and slots[move] < probs.shape[1] else 0.0
                    for move in self.game.legal_moves(board)}
        return [self.cache[b] for b in boards]


def board_at(game: Game, tree: Tree, node) -> str:
    """The position at ``node``: the root's board (the tree's prompt) after the moves on its path."""
    board = tree.prompt
    for step in tree.path(node):
        board = game.play(board, step.text)
    return board


@dataclass
class MoveExpander:
    """Expands a position into all its legal moves (one LM evaluation per expanded node, all nodes
    of a round together). A child's value is stored from the root mover's view: the LM's value of
    the move (or the rules' for a finished game: a win 1, a draw 0), negated on the opponent's
    plies; its prior is ``softmax(beta * value)`` over its siblings, from the mover's view."""

    values: ActionValues
    beta: float = 2.0

    def expand(self, items):
        game = self.values.game
        items = [(t, n) for t, n in items if not n.terminal]
        boards = [board_at(game, t, n) for t, n in items]
        out = []
        for (tree, node), board, values in zip(items, boards, self.values(boards)):
            tree.compute.generations += 1
            sign = 1.0 if node.depth % 2 == 0 else -1.0  # the mover is the root's side on even depths
            z = sum(math.exp(self.beta * v) for v in values.values())
            for move, v in values.items():
                after = game.play(board, move)
                over = game.is_over(after)
                mine = (1.0 if game.winner(after) else 0.0) if over else v
                child = tree.add(node, text=move, prior=math.exp(self.beta * v) / z, finished=over, terminal=over,
                                 value=sign * mine, source="rules" if over else "lm")
                out.append((tree, child))
        return out


class Stored:
    """The evaluator for :class:`MoveExpander`'s children: their values are set at expansion."""

    source = "lm"

    def __call__(self, items):
        self.last_sources = [n.source for _, n in items]
        return [n.value for _, n in items]


def alternate(rule: Rule) -> Rule:
    """Two players on one tree: values are kept from the root mover's view, so on the opponent's
    plies (even depth) the exploit term ``q`` of ``rule`` (a ``stat="q"`` rule) is negated and
    each side maximises its own value."""
    return lambda parent, child: rule(parent, child) - (2.0 * child.q if child.depth % 2 == 0 else 0.0)


def plan(values: ActionValues, boards: list[str], simulations: int, c: float = 1.0, beta: float = 2.0) -> list[str]:
    """One move per board by MCTS with the LM's action values (all boards searched side by side,
    one LM call per round): ``simulations`` expansions or terminal visits per board, PUCT with
    ``c``. The move is the most visited root child (ties: higher value); with one simulation it is
    the LM's best-valued move, i.e. no search."""
    trees = [Tree(b, []) for b in boards]
    mcts(trees, MoveExpander(values, beta), Stored(), simulations, alternate(puct(c)))
    return [max(t.children(t.root), key=lambda n: (n.visits, n.q)).text for t in trees]


# -- internal planning: search traces in text ----------------------------------------------------


def trace_pairs(game: Game, boards: list[str], breadth: int, depth: int, seed: int = 0) -> list[tuple[str, str]]:
    """Training pairs for the internal planner: each board's prompt and a gold search trace."""
    rng = random.Random(f"traces|{game.name}|{seed}")
    return [(game_prompt(game, b), search_trace(game, b, breadth, depth, rng)) for b in boards]


def move_pairs(trace: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The moves-alone baseline's pairs: the same prompts and the trace's final move only."""
    return [(p, t.rsplit("move: ", 1)[1]) for p, t in trace]


def trace_moves(game: Game, policy: LanguagePolicy, boards: list[str], max_new_tokens: int = 96,
                seed: int = 0) -> tuple[list[str | None], list[int]]:
    """A trace-trained LM writes its search greedily, then its move: the moves (None where missing or
    illegal) and the tokens generated per board."""
    texts, ids = generate(policy, [game_prompt(game, b) for b in boards], max_new_tokens, seed=seed)
    checks = [completion_move(game, b, t) for b, t in zip(boards, texts)]
    return [c.move if c.ok else None for c in checks], [len(i) for i in ids]


def voted_moves(game: Game, policy: LanguagePolicy, boards: list[str], n: int, seed: int = 0,
                temperature: float = 1.0) -> tuple[list[str | None], list[int]]:
    """A moves-alone LM samples ``n`` moves per board; the most frequent legal one is chosen (None if
    none is legal). Returns the moves and the tokens generated per board."""
    texts, ids = generate(policy, [game_prompt(game, b) for b in boards], 4, n, temperature, seed)
    moves = [vote(game, b, texts[i * n:(i + 1) * n]) for i, b in enumerate(boards)]
    return moves, [sum(len(r) for r in ids[i * n:(i + 1) * n]) for i in range(len(boards))]


def vote(game: Game, board: str, texts: list[str]) -> str | None:
    """The most frequent legal move among ``texts`` (the first seen on a tie); None if none is legal."""
    legal = [t.strip() for t in texts if game.check_move(board, t).ok]
    return Counter(legal).most_common(1)[0][0] if legal else None


# -- games against epsilon-solvers ------------------------------------------------------------


def play_many(game: Game, agent, epsilons: list[float], seed: int = 0) -> list[float]:
    """One game per entry of ``epsilons`` against that epsilon-solver, all in step so that ``agent``
    (boards -> moves) moves in every game at once; the agent is X in even games, O in odd ones.
    Each game has its own opponent random stream (``seed`` and its index), so two agents meet the
    same draws. Returns the agent's score per game: win 1, draw 0.5, loss (illegal moves too) 0."""
    rngs = [random.Random(f"play_many|{game.name}|{seed}|{i}") for i in range(len(epsilons))]
    boards, score = [game.initial()] * len(epsilons), [None] * len(epsilons)

    def settle(i: int) -> bool:  # is game i still going? (scores it when it has ended)
        if score[i] is None and game.is_over(boards[i]):
            won = result(game, boards[i])
            score[i] = 0.5 if won == "draw" else float(won == "xo"[i % 2])
        return score[i] is None

    while any(s is None for s in score):
        for i in range(len(boards)):
            if settle(i) and game.to_move(boards[i]) != "xo"[i % 2]:
                boards[i] = game.play(boards[i], solver_move(game, boards[i], epsilons[i], rngs[i]))
        mine = [i for i in range(len(boards)) if settle(i)]
        for i, move in zip(mine, agent([boards[i] for i in mine]) if mine else []):
            if game.check_move(boards[i], move).ok:
                boards[i] = game.play(boards[i], move)
            else:
                score[i] = 0.0
        for i in mine:
            settle(i)
    return score


def mcts_agent(values: ActionValues, simulations: int, c: float = 1.0):
    """An agent for :func:`play_many`: :func:`plan` on every board it is given."""
    return lambda boards: plan(values, boards, simulations, c)


def paired_gap(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``b - a`` over paired items and its standard error."""
    return paired_gain(b, a)


# -- the search lab ---------------------------------------------------------------------------

LAB_GAMES, LAB_STEPS = 600, 900


def lab_setup(run: Run, seed: int, n_prompts: int, steps: int = LAB_STEPS, game: Game = TICTACTOE) -> TaskSetup:
    """The lab's board-game task (lab name ``tictactoe``: tic-tac-toe unless ``game`` says otherwise,
    for time): a MAV LM trained for ``steps`` on the positions of :data:`LAB_GAMES` epsilon-solver
    games, and ``n_prompts`` held-out positions (not trained on) where the move matters."""
    boards = positions(game, records(game, LAB_GAMES, seed=seed))
    lm = train_game_lm(run, "board_lm", [(game_prompt(game, b), value_text(game, b)) for b in boards], steps, seed)
    seen = set(boards)
    pool = [b for b in positions(game, records(game, LAB_GAMES, seed=seed + 1)) if b not in seen and decisive(game, b)]
    held = random.Random(f"board lab|{seed}").sample(pool, min(n_prompts, len(pool)))
    return TaskSetup("tictactoe", lm, [game_prompt(game, b) for b in held], {"game": game, "boards": held})


def _lab_search(simulations):
    def search(setup: TaskSetup, prepared, budget: int, seed: int) -> dict:
        game, boards = setup.extras["game"], setup.extras["boards"]
        values = ActionValues(setup.policy, game)
        moves = plan(values, boards, simulations or budget)
        return {"gold": float(np.mean([move_gold(game, b, m) for b, m in zip(boards, moves)])),
                "generations": values.evaluations}

    return search


# gold: the mean solver value of the chosen move on [0, 1]; generations: LM evaluations (value lines)
POLICY = SearchMethod("policy", _lab_search(1))  # the LM's best-valued move; the budget is ignored
MCTS = SearchMethod("mcts", _lab_search(None))  # budget = simulations per position
