"""Board games with a perfect solver: tic-tac-toe and Connect-Four on a small board.

Both are k-in-a-row games on a ``cols`` x ``rows`` grid, so one :class:`Game` serves both:
``TICTACTOE`` (3x3, three in a row, any empty square) and ``CONNECT4`` (5 columns x 4 rows,
four in a row, pieces drop to the lowest empty cell of a column). X moves first.

Notation (for an LM, and exact):

- A position is written as its rows from top to bottom, separated by ``/``, one character per
  cell (``x``, ``o`` or ``.``), e.g. ``"..x/.o./x.."``. The side to move follows from the piece
  counts (X when they are equal). :meth:`Game.render` draws the same board one row a line,
  cells separated by spaces, with the column letters and the side to move.
- A move is a column letter for Connect-Four (``"c"``), and a column letter plus a row number
  counted from the bottom for tic-tac-toe (``"b2"`` is the centre, ``"a1"`` the bottom left).
- A game transcript is its moves separated by single spaces, e.g. ``"b2 a1 c3"``.

Gold is the solver's value of every legal move: +1 if the move wins for the player who makes
it under perfect play from both sides, 0 if it draws, -1 if it loses (:meth:`Game.move_values`).
The solver is a memoised negamax with alpha-beta cut-offs (a child worth +1 to the mover ends
the loop), an immediate win taken and an opponent's immediate win blocked first, centre moves
tried first, and mirror-image positions sharing a table entry. A full solve from the empty
board takes ~0.03 s for tic-tac-toe (~900 stored positions) and ~15 s of CPU time for 5x4
Connect-Four (~720k stored positions, ~330 MB peak memory; 17-35 s wall on a busy 2-core
machine), in CPython; the table is kept for the process, so later queries are mostly
dictionary look-ups. Under perfect play both
games are draws; in 5x4 Connect-Four the first player loses by opening on an edge column.

Around the solver: epsilon-solver opponents and games between any players, an LM's included,
where an illegal move forfeits (:func:`epsilon_solver`, :func:`play_game`, :func:`match`);
training text (:func:`records`, :func:`transcript`, :func:`sft_example`, :func:`search_trace`);
and gold for an LM's answer to an :func:`sft_example` prompt (:func:`move_value`,
:func:`move_reward`).
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Callable

EMPTY, PLAYERS = ".", "xo"


@dataclass(frozen=True)
class MoveCheck:
    """The result of parsing a proposed move: ``move`` is the move in canonical notation when
    ``ok``; otherwise ``reason`` says what is wrong. Parsing never raises on a bad move."""

    ok: bool
    move: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Game:
    """A k-in-a-row game on ``cols`` x ``rows`` cells; with ``gravity`` a move names a column and
    the piece drops to its lowest empty cell (Connect-Four), without it a move names a square.

    A board is a string of ``rows * cols`` cells, row 0 at the bottom: cell ``(r, c)`` is
    ``board[r * cols + c]``. Boards are plain strings so they hash cheaply for the solver."""

    name: str
    cols: int
    rows: int
    k: int
    gravity: bool

    def __post_init__(self):
        if not (1 <= self.cols <= 26 and 1 <= self.rows <= 9 and 2 <= self.k <= max(self.cols, self.rows)):
            raise ValueError(f"Game {self.name!r}: need 1<=cols<=26, 1<=rows<=9, 2<=k<=max(cols, rows); "
                             f"got cols={self.cols}, rows={self.rows}, k={self.k}")

    # -- rules ------------------------------------------------------------------------------

    def initial(self) -> str:
        return EMPTY * (self.cols * self.rows)

    def to_move(self, board: str) -> str:
        """``"x"`` or ``"o"``: X when both have played as often."""
        return "x" if board.count("x") == board.count("o") else "o"

    def _cells(self, board: str) -> list[int]:
        """Indices a move may fill now, in column-then-row order."""
        if self.gravity:
            lowest = [board[c::self.cols].find(EMPTY) for c in range(self.cols)]
            return [r * self.cols + c for c, r in enumerate(lowest) if r >= 0]
        return sorted((i for i, v in enumerate(board) if v == EMPTY), key=lambda i: (i % self.cols, i))

    def _name(self, i: int) -> str:
        col = "abcdefghijklmnopqrstuvwxyz"[i % self.cols]
        return col if self.gravity else f"{col}{i // self.cols + 1}"

    @cached_property
    def _lines(self) -> list[list[itemgetter]]:
        """Per cell, every k-in-a-row window through it, as a getter of its k cells."""
        out: list[list] = [[] for _ in range(self.rows * self.cols)]
        for r in range(self.rows):
            for c in range(self.cols):
                for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                    cells = [(r + n * dr) * self.cols + c + n * dc for n in range(self.k)]
                    if 0 <= r + (self.k - 1) * dr < self.rows and 0 <= c + (self.k - 1) * dc < self.cols:
                        for i in cells:
                            out[i].append(itemgetter(*cells))
        return out

    def _wins_at(self, board: str, i: int) -> bool:
        """Does the piece on cell ``i`` complete k in a row?"""
        full = (board[i],) * self.k
        return any(get(board) == full for get in self._lines[i])

    def winner(self, board: str) -> str | None:
        """``"x"`` or ``"o"`` if that side has k in a row, else None."""
        return next((board[i] for i, v in enumerate(board) if v != EMPTY and self._wins_at(board, i)), None)

    def is_over(self, board: str) -> bool:
        return self.winner(board) is not None or EMPTY not in board

    def legal_moves(self, board: str) -> list[str]:
        """The legal moves in notation, in column order; none once the game is over."""
        return [] if self.is_over(board) else [self._name(i) for i in self._cells(board)]

    def check_move(self, board: str, text: str) -> MoveCheck:
        """Strict parse of a proposed move (surrounding whitespace aside): the exact notation of
        a legal move is ok; anything else is reported with the reason, never raised."""
        move = text.strip() if isinstance(text, str) else None
        pattern = r"[a-z]" if self.gravity else r"[a-z][1-9]"
        example = "a column letter such as 'c'" if self.gravity else "a square such as 'b2'"
        if move is None or not re.fullmatch(pattern, move):
            return MoveCheck(False, reason=f"not a move: {text!r} (expected {example})")
        if self.is_over(board):
            return MoveCheck(False, reason=f"the game is over; no move is legal (got {move!r})")
        col = ord(move[0]) - ord("a")
        if col >= self.cols or (not self.gravity and int(move[1]) > self.rows):
            return MoveCheck(False, reason=f"{move!r} is off the {self.cols}x{self.rows} board")
        if move not in self.legal_moves(board):
            what = "column is full" if self.gravity else "square is taken"
            return MoveCheck(False, reason=f"{move!r}: {what}")
        return MoveCheck(True, move=move)

    def play(self, board: str, move: str) -> str:
        """The board after ``move``; raises ValueError (with the reason) on an illegal move."""
        check = self.check_move(board, move)
        if not check.ok:
            raise ValueError(f"{self.name}: illegal move in {self.notation(board)!r}: {check.reason}")
        i = next(i for i in self._cells(board) if self._name(i) == check.move)
        return board[:i] + self.to_move(board) + board[i + 1:]

    def replay(self, moves: str | list[str]) -> str:
        """The board after a transcript (``"b2 a1"`` or a list of moves) from the empty board."""
        board = self.initial()
        for m in moves.split() if isinstance(moves, str) else moves:
            board = self.play(board, m)
        return board

    # -- text -------------------------------------------------------------------------------

    def notation(self, board: str) -> str:
        """The compact one-line position, rows top to bottom: ``"..x/.o./x.."``."""
        rows = [board[r * self.cols:(r + 1) * self.cols] for r in range(self.rows)]
        return "/".join(reversed(rows))

    def parse_position(self, text: str) -> str:
        """The board written by :meth:`notation`; raises ValueError saying what is wrong when the
        text is malformed or the position cannot arise in play."""
        rows = text.strip().split("/")
        if len(rows) != self.rows or any(len(r) != self.cols or set(r) - set("xo.") for r in rows):
            raise ValueError(f"{self.name}: position {text!r} must be {self.rows} rows of {self.cols} "
                             f"cells from 'x', 'o', '.', separated by '/'")
        board = "".join(reversed(rows))
        nx, no = board.count("x"), board.count("o")
        if nx - no not in (0, 1):
            raise ValueError(f"{self.name}: position {text!r} has {nx} x and {no} o; x moves first, so "
                             f"x must have as many pieces as o or one more")
        if self.gravity and any(board[i] != EMPTY and board[i - self.cols] == EMPTY
                                for i in range(self.cols, len(board))):
            raise ValueError(f"{self.name}: position {text!r} has a piece above an empty cell")
        winners = {board[i] for i, v in enumerate(board) if v != EMPTY and self._wins_at(board, i)}
        last = "x" if nx > no else "o"
        if winners and winners != {last}:
            raise ValueError(f"{self.name}: position {text!r} cannot arise: play stops at the first "
                             f"k in a row, so only the last mover ({last}) may have one")
        return board

    def render(self, board: str) -> str:
        """The board one row a line (top first), cells separated by spaces, rows numbered for
        tic-tac-toe, column letters underneath, then who is to move or the result."""
        lines = []
        for r in reversed(range(self.rows)):
            cells = " ".join(board[r * self.cols:(r + 1) * self.cols])
            lines.append(cells if self.gravity else f"{r + 1} {cells}")
        letters = " ".join("abcdefghijklmnopqrstuvwxyz"[:self.cols])
        lines.append(letters if self.gravity else f"  {letters}")
        w = self.winner(board)
        lines.append(f"{w} has won" if w else "draw" if EMPTY not in board else f"{self.to_move(board)} to move")
        return "\n".join(lines)

    # -- gold -------------------------------------------------------------------------------

    def move_values(self, board: str) -> dict[str, int]:
        """Gold: every legal move with its value for the side making it (+1 win, 0 draw, -1 loss)
        under perfect play; empty once the game is over."""
        if self.is_over(board):
            return {}
        return {self._name(i): self._child_value(board, i) for i in self._cells(board)}

    def value(self, board: str) -> int:
        """The position's value for the side to move; for a finished game, -1 if the last mover
        won and 0 for a full board without a winner."""
        if self.winner(board):
            return -1
        return 0 if EMPTY not in board else _negamax(self, board)

    def best_moves(self, board: str) -> list[str]:
        values = self.move_values(board)
        top = max(values.values(), default=None)
        return [m for m, v in values.items() if v == top]

    def _child_value(self, board: str, i: int) -> int:
        child = board[:i] + self.to_move(board) + board[i + 1:]
        if self._wins_at(child, i):
            return 1
        return 0 if EMPTY not in child else -_negamax(self, child)

    def _mirror(self, board: str) -> str:
        return "".join(board[r * self.cols:(r + 1) * self.cols][::-1] for r in range(self.rows))


TICTACTOE = Game("tictactoe", cols=3, rows=3, k=3, gravity=False)
CONNECT4 = Game("connect4_5x4", cols=5, rows=4, k=4, gravity=True)
GAMES = {g.name: g for g in (TICTACTOE, CONNECT4)}

# The solver's tables, one per game, kept for the process: {canonical board: value for the mover}.
_TABLES: dict[Game, dict[str, int]] = {}


def _negamax(game: Game, board: str) -> int:
    """Exact value for the side to move of a position that is not over. The search window is
    the whole range [-1, 1], so the only cut-off (a child worth +1) leaves the value exact and
    safe to store."""
    table = _TABLES.setdefault(game, {})
    key = min(board, game._mirror(board))
    if key in table:
        return table[key]
    cells = game._cells(board)
    me, other = game.to_move(board), "o" if game.to_move(board) == "x" else "x"
    if any(game._wins_at(board[:i] + me + board[i + 1:], i) for i in cells):
        return 1
    # The opponent's immediate wins must be blocked: two or more lose, one forces the move.
    threats = [i for i in cells if game._wins_at(board[:i] + other + board[i + 1:], i)]
    if len(threats) > 1:
        best = -1
    else:
        centre = (game.cols - 1) / 2
        best = -1
        for i in threats or sorted(cells, key=lambda i: abs(i % game.cols - centre)):
            best = max(best, game._child_value(board, i))
            if best == 1:
                break
    table[key] = best
    return best


if sys.getrecursionlimit() < 1000:  # the search recurses once per ply (at most rows * cols)
    sys.setrecursionlimit(1000)


# -- opponents and transcripts --------------------------------------------------------------


def _check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon-solver: epsilon must be in [0, 1], got {epsilon}")


def solver_move(game: Game, board: str, epsilon: float, rng: random.Random) -> str:
    """An epsilon-perfect opponent: with probability ``epsilon`` a uniformly random legal move,
    otherwise a uniformly random move among those of the best value."""
    _check_epsilon(epsilon)
    moves = game.legal_moves(board)
    if not moves:
        raise ValueError(f"solver_move: the game is over in {game.notation(board)!r}")
    return rng.choice(moves) if rng.random() < epsilon else rng.choice(game.best_moves(board))


Player = Callable[[str], str]  # board -> a move in notation (possibly illegal, e.g. an LM's)


def epsilon_solver(game: Game, epsilon: float, rng: random.Random) -> Player:
    """The opponent :func:`solver_move` describes, as a player."""
    _check_epsilon(epsilon)
    return lambda board: solver_move(game, board, epsilon, rng)


@dataclass(frozen=True)
class Outcome:
    """A finished game: its legal moves, the winner (``"x"``, ``"o"``) or ``"draw"``, and, when a
    player named an illegal move, which side forfeited (it loses) and why."""

    moves: list[str]
    result: str
    forfeit: str | None = None
    reason: str = ""


def play_game(game: Game, players: tuple[Player, Player]) -> Outcome:
    """One game, X (``players[0]``) first. A player's illegal move ends the game as a loss for
    that side, reported in the outcome, not raised."""
    board, moves = game.initial(), []
    while not game.is_over(board):
        side = game.to_move(board)
        check = game.check_move(board, players[len(moves) % 2](board))
        if not check.ok:
            return Outcome(moves, "o" if side == "x" else "x", forfeit=side, reason=check.reason)
        board, moves = game.play(board, check.move), moves + [check.move]
    return Outcome(moves, result(game, board))


def result(game: Game, board: str) -> str:
    """``"x"``, ``"o"`` or ``"draw"`` for a finished game."""
    if not game.is_over(board):
        raise ValueError(f"result: the game is not over in {game.notation(board)!r}")
    return game.winner(board) or "draw"


def match(game: Game, agent: Player, epsilon: float, n_games: int, seed: int = 0) -> dict[str, float]:
    """``agent`` against the epsilon-solver for ``n_games`` games, taking X in even games and O in
    odd ones. Returns the fractions ``win``, ``draw``, ``loss`` (forfeits included) and
    ``illegal`` (forfeits), and ``win_or_draw``, the agent's non-losing rate."""
    rng = random.Random(f"match|{game.name}|{epsilon}|{seed}")
    opponent, counts = epsilon_solver(game, epsilon, rng), {"win": 0, "draw": 0, "loss": 0, "illegal": 0}
    for i in range(n_games):
        side = "xo"[i % 2]
        out = play_game(game, (agent, opponent) if side == "x" else (opponent, agent))
        counts["draw" if out.result == "draw" else "win" if out.result == side else "loss"] += 1
        counts["illegal"] += out.forfeit == side
    rates = {k: v / n_games for k, v in counts.items()}
    return rates | {"win_or_draw": rates["win"] + rates["draw"]}


def records(game: Game, n_games: int, epsilons: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0),
            seed: int = 0) -> list[dict]:
    """Transcripts with gold for training an LM to predict moves and values: ``n_games`` games
    between epsilon-solvers (each side's epsilon drawn from ``epsilons`` per game), one row per
    position played from: ``{"game", "moves" (the transcript so far), "position" (notation),
    "to_move", "values" ({move: value}), "move" (the one played), "value" (the position's)}``.
    Deterministic in ``seed``."""
    rng = random.Random(f"games|{game.name}|{seed}")
    rows = []
    for _ in range(n_games):
        players = (epsilon_solver(game, rng.choice(epsilons), rng), epsilon_solver(game, rng.choice(epsilons), rng))
        board, played = game.initial(), []
        for move in play_game(game, players).moves:
            values = game.move_values(board)
            rows.append({"game": game.name, "moves": " ".join(played), "position": game.notation(board),
                         "to_move": game.to_move(board), "values": values, "move": move,
                         "value": max(values.values())})
            board, played = game.play(board, move), played + [move]
    return rows


def format_values(values: dict[str, int]) -> str:
    """``{"a": 1, "b": 0}`` -> ``"a:+1 b:0"`` (the value line an LM learns to write)."""
    return " ".join(f"{m}:{_signed(v)}" for m, v in values.items())


def _signed(value: int) -> str:
    return f"{value:+d}" if value else "0"


def parse_values(text: str) -> dict[str, int] | None:
    """Inverse of :func:`format_values`; None when the text is not in that form."""
    out = {}
    for item in text.split():
        m = re.fullmatch(r"([a-z][1-9]?):([+-]1|0)", item)
        if m is None or m[1] in out:
            return None
        out[m[1]] = int(m[2])
    return out or None


def sft_example(game: Game, row: dict) -> dict[str, str]:
    """A record as a prompt/completion pair: the rendered position in, the value of every
    legal move and the move played out (``"values: a:0 b:+1\\nmove: b"``)."""
    board = game.parse_position(row["position"])
    return {"prompt": f"{game.name}\n{game.render(board)}\n",
            "completion": f"values: {format_values(row['values'])}\nmove: {row['move']}"}


def transcript(game: Game, moves: str | list[str]) -> str:
    """A game as text with gold: each move with its value for the side that made it, then the
    result, e.g. ``"b2:0 a1:-1 c3:+1 result: x"`` (``result: ?`` while the game goes on)."""
    board, items = game.initial(), []
    for move in moves.split() if isinstance(moves, str) else moves:
        board, before = game.play(board, move), board  # raises on an illegal move, with the reason
        items.append(f"{move}:{_signed(game.move_values(before)[move])}")
    return " ".join(items + [f"result: {result(game, board) if game.is_over(board) else '?'}"])


# The reward of a completion whose move is missing or illegal: below a losing move, so that any
# legal move is preferred to none.
ILLEGAL_MOVE_REWARD = -2.0


def completion_move(game: Game, board: str, completion: str) -> MoveCheck:
    """The move an LM's completion names on its last ``move: ...`` line, strictly parsed."""
    lines = [line.strip() for line in completion.strip().split("\n") if line.strip().startswith("move:")]
    if not lines:
        return MoveCheck(False, reason="no 'move: ...' line in the completion")
    return game.check_move(board, lines[-1].removeprefix("move:"))


def parse_prompt(prompt: str) -> tuple[Game, str]:
    """The game and board of a prompt written by :func:`sft_example` (its name line, then the
    rendered board); raises ValueError saying what is wrong."""
    lines = prompt.strip().split("\n")
    game = GAMES.get(lines[0].strip())
    if game is None or len(lines) < game.rows + 1:
        raise ValueError(f"not a game prompt: {prompt[:60]!r} (expected a game name from {sorted(GAMES)} "
                         f"on the first line, then the board)")
    rows = [line.split() for line in lines[1:game.rows + 1]]
    cells = ["".join(r if game.gravity else r[1:]) for r in rows]
    return game, game.parse_position("/".join(cells))


def move_value(prompt: str, response: str) -> float:
    """Gold for one response to a :func:`sft_example` prompt: the solver's value of the move on
    its ``move:`` line (+1, 0, -1), or ``ILLEGAL_MOVE_REWARD`` when it is missing or illegal.
    Fits the search core's ``Verifier(check)``."""
    game, board = parse_prompt(prompt)
    check = completion_move(game, board, response)
    return float(game.move_values(board)[check.move]) if check.ok else ILLEGAL_MOVE_REWARD


def move_reward(prompts, completions, **_) -> list[float]:
    """:func:`move_value` with TRL's signature (chat prompts and completions are read from their
    last user message and their content): ``--reward rlxf.tasks.games:move_reward``."""
    from rlxf.rewards.specs import completion_text

    def text(prompt):
        return next(m["content"] for m in reversed(prompt) if m["role"] == "user") if isinstance(prompt, list) else prompt

    return [move_value(text(p), completion_text(c)) for p, c in zip(prompts, completions)]


def search_trace(game: Game, board: str, breadth: int, depth: int, rng: random.Random) -> str:
    """A linearised look-ahead tree with gold values, for teaching an LM to search in text.

    Depth first, one line per node: the moves from ``board`` to it, then the gold value of its
    last move for the side that made it (``"c d:+1"``). At each node ``breadth`` legal moves are
    listed in a random order, a best one always among them; ``depth`` plies are expanded. The
    last line is ``move: M``, the root move of best value listed."""
    if breadth < 1 or depth < 1:
        raise ValueError(f"search_trace: breadth and depth must be >= 1, got {breadth} and {depth}")
    if game.is_over(board):
        raise ValueError(f"search_trace: the game is over in {game.notation(board)!r}")
    lines: list[str] = []

    def expand(node: str, path: list[str], plies: int) -> dict[str, int]:
        values = game.move_values(node)
        best = rng.choice([m for m, v in values.items() if v == max(values.values())])
        others = rng.sample([m for m in values if m != best], min(breadth, len(values)) - 1)
        listed = rng.sample([best] + others, len(others) + 1)
        for move in listed:
            lines.append(f"{' '.join(path + [move])}:{_signed(values[move])}")
            child = game.play(node, move)
            if plies > 1 and not game.is_over(child):
                expand(child, path + [move], plies - 1)
        return {m: values[m] for m in listed}

    root = expand(board, [], depth)
    return "\n".join(lines + [f"move: {max(root, key=root.get)}"])
