"""CR-Planner (Li et al., 2024): small critics trained on MCTS data choose, at every step, between
reasoning and retrieval (the sub-goal) and then among the generator's sampled executions of it.

On :class:`rlxf.tasks.retrieval.RetrievalTask` a trajectory is one line per step after the question.
Each step is a sub-goal node (``"reason: "``, ``"query: "`` or ``"doc: "`` = Retrieve) and under it
an execution node: a rationale or final answer (Reason), a search query (GenQuery) or one of the
top-``docs`` BM25 documents for the last query (Retrieve). The generator is any
:class:`~rlxf.labelers.roles.TextModel`; tests use :func:`simulated_generator`, a noisy
:class:`~rlxf.labelers.roles.SimulatedRole` that reads the documents in its state and errs with a set rate.

- :class:`PlanExpander` grows the tree (one generator call per round for every node being executed),
  usable by any :mod:`rlxf.search` procedure.
- Training data: :func:`search_trees` runs :func:`rlxf.search.mcts` on training questions with
  :class:`GoldRollouts` (rollouts judged by gold: training may use the verifier); :func:`critic_pairs`
  splits the trees' sibling pairs (:func:`rlxf.search.step_pairs`) among four critics (sub-goal,
  rationale, query, document); :func:`train_critics` fits each with the pairwise loss
  ``-log sigma(g(s, a+) - g(s, a-))``.
- Inference: :func:`plan` is beam search of width 1 over the same tree with :class:`Critics` as the
  evaluator: the sub-goal critic picks the sub-goal, the execution critic the best of ``n`` samples.
- Without critics (:func:`rollout`, :func:`next_subgoal`): the generator picks its own sub-goals, or a
  fixed order (always retrieve: query, retrieve, reason; or never retrieve), and its one sample per
  step is kept; :func:`vote` spends the planner's generator calls on self-consistency over such
  trajectories.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass

import torch

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.policies.control import single_thread
from rlxf.rewards.model import bradley_terry_loss
from rlxf.search import Node, Tree, beam_search, mcts, step_pairs, uct
from rlxf.search.tree import count_call
from rlxf.tasks.retrieval import (ATTRIBUTES, LINKS, QUESTION, Fact, Question, RetrievalTask, final_answer, parse_facts,
                                  tokens)

# sub-goal -> the marker its line starts with
SUBGOALS = {"reason": "reason: ", "query": "query: ", "retrieve": "doc: "}
MARKERS = {m: g for g, m in SUBGOALS.items()}
CRITICS = ("subgoal", "reason", "query", "retrieve")


# -- states ---------------------------------------------------------------------------------


def steps_of(state: str) -> list[tuple[str, str]]:
    """The (sub-goal, text) of every complete step line after the question."""
    out = []
    for line in state.split("\n")[1:]:
        for marker, goal in MARKERS.items():
            if line.startswith(marker) and line != marker:
                out.append((goal, line[len(marker):]))
    return out


def valid_subgoals(state: str) -> list[str]:
    """Reason and GenQuery always; Retrieve only right after a query (it searches with that query)."""
    steps = steps_of(state)
    return [g for g in SUBGOALS if g != "retrieve" or (steps and steps[-1][0] == "query")]


def last_query(state: str) -> str:
    queries = [t for g, t in steps_of(state) if g == "query"]
    if not queries:
        raise ValueError(f"Retrieve needs a query before it; the state has none: {state!r}")
    return queries[-1]


def request(subgoal: str, state: str) -> str:
    """A generator request: the action (``plan``, ``query`` or ``reason``) on the first line, then the state."""
    return f"{subgoal}\n{state}"


def execute(task: RetrievalTask, generator: TextModel, states: list[tuple[str, str]], n: int,
            docs: int) -> list[list[str]]:
    """Candidate executions (step texts with their newline) for each ``(state, sub-goal)``: ``n``
    generator samples for Reason and GenQuery, all in one generator call; the top ``docs`` BM25
    documents for Retrieve."""
    asks = [(i, request(g, s)) for i, (s, g) in enumerate(states) if g != "retrieve" for _ in range(n)]
    replies = generator.complete([r for _, r in asks]) if asks else []
    out: list[list[str]] = [[] for _ in states]
    for (i, _), reply in zip(asks, replies):
        out[i].append(reply.strip().split("\n")[0] + "\n")
    for i, (s, g) in enumerate(states):
        if g == "retrieve":
            out[i] = [d + "\n" for d in task.search(last_query(s), docs)]
    return out


# -- the simulated generator ----------------------------------------------------------------


def _progress(question: Question, state: str) -> tuple[str, str | None, str]:
    """Where a reader of ``state`` stands: the entity reached along the question's chain, the next
    relation to look up (None once the answer is reached) and the entity looked up last. It believes
    every fact it has read, its own rationales included (the later of two conflicting ones)."""
    known = {(f.subject, f.relation): f.value for f in parse_facts(state.split("\n", 1)[-1])}
    s = prev = question.subject
    for rel in question.chain:
        if (s, rel) not in known:
            return s, rel, prev
        prev, s = s, known[s, rel]
    return s, None, prev


def _guess(question: Question) -> str:
    """The value a generator without evidence commits to: fixed per question, in the attribute's range."""
    lo, hi = ATTRIBUTES[question.chain[-1]]
    return str(lo + zlib.crc32(question.text.encode()) % (hi - lo))


def _right_reply(task: RetrievalTask, req: str) -> str:
    action, state = req.split("\n", 1)
    q = task.question(state)
    entity, rel, prev = _progress(q, state)
    steps = steps_of(state)
    if action == "plan":
        if steps and steps[-1][0] == "query":
            return "retrieve"
        return "reason" if rel is None else "query"
    if action == "query":
        return f"{rel} {entity}" if rel else f"{q.chain[-1]} {prev}"  # in reach: the last lookup again
    if action == "reason":
        if rel is None:
            return f"the answer is {entity}."
        hop = Fact(q.subject, q.chain[0], entity).text
        if entity != q.subject and hop not in " ".join(t for g, t in steps if g == "reason"):
            return hop  # state the hop just taken
        return f"the answer is {_guess(q)}."  # nothing to go on: a confident guess
    raise ValueError(f"simulated generator: unknown action {action!r} (expected plan, query or reason)")


def _wrong_reply(task: RetrievalTask, req: str, reply: str, rng: random.Random) -> str:
    action, state = req.split("\n", 1)
    q = task.question(state)
    entity, rel, _ = _progress(q, state)
    if action == "plan":
        return rng.choice([g for g in valid_subgoals(state) if g != reply] or [reply])
    if action == "query":
        rel = rel or q.chain[-1]
        others = [r for r in (*ATTRIBUTES, *LINKS) if r != rel]
        options = [f"{rel} {rng.choice(task.people)}", f"{rng.choice(others)} {entity}"]
        if len(q.chain) > 1:
            options.append(f"{q.chain[-1]} {q.subject}")  # skips the hop
        return rng.choice([o for o in options if o != reply] or options)
    if final_answer(reply) is not None:
        lo, hi = ATTRIBUTES[q.chain[-1]]
        return rng.choice([f"the answer is {v}." for v in range(lo, hi) if f"the answer is {v}." != reply])
    f = parse_facts(reply)[0]
    return Fact(f.subject, f.relation, rng.choice([p for p in task.people if p != f.value])).text


def simulated_generator(task: RetrievalTask, error: float = 0.3, seed: int = 0) -> SimulatedRole:
    """A noisy generator that knows no fact of the world and reads what its state holds (documents
    and its own rationales, right or not). Right replies to ``plan``: retrieve after a query, reason
    once the answer is in reach, else query; to ``query``: the next fact to look up,
    ``"<relation> <entity>"``; to ``reason``: the answer when in reach, else the hop just taken as a
    rationale, else a confident guess. With probability ``error`` a reply is wrong: another valid
    sub-goal; a query for a random person, another relation, or (two hops) the final relation of the
    question's subject; a rationale naming a random person or an answer with a random value."""
    return SimulatedRole(right=lambda r: _right_reply(task, r), wrong=lambda r, y, g: _wrong_reply(task, r, y, g),
                         error=error, seed=seed)


# -- growing the tree -----------------------------------------------------------------------


def is_subgoal(node: Node) -> bool:
    return node.parent is not None and node.text in MARKERS


def state_of(tree: Tree, node: Node) -> str:
    return tree.prompt + tree.response_text(node)


@dataclass
class PlanExpander:
    """Expands a state node into its valid sub-goal nodes (no generator call) and a sub-goal node
    into its executions (:func:`execute`: ``n`` generator samples, identical ones merged into one
    child's ``count``; or the top ``docs`` documents). All sub-goal nodes of a round share one
    generator call. A final answer is finished; a step line numbered ``max_steps`` is terminal.
    ``tree.compute.generations`` counts generator requests."""

    task: RetrievalTask
    generator: TextModel
    n: int = 3
    docs: int = 3
    max_steps: int = 8

    def __post_init__(self):
        for name in ("n", "docs", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlanExpander.{name} must be >= 1, got {getattr(self, name)}")

    def expand(self, items):
        items = [(t, n) for t, n in items if not n.terminal]
        out, work = [], []
        for tree, node in items:
            if is_subgoal(node):
                work.append((tree, node, state_of(tree, tree.nodes[node.parent]), MARKERS[node.text]))
                continue
            goals = valid_subgoals(state_of(tree, node))
            out += [(tree, tree.add(node, text=SUBGOALS[g], prior=1 / len(goals))) for g in goals]
        if not work:
            return out
        asking = [(t, n) for t, n, _, g in work if g != "retrieve"]
        count_call(asking)
        for (tree, node, state, goal), texts in zip(work, execute(self.task, self.generator,
                                                                  [(s, g) for _, _, s, g in work], self.n, self.docs)):
            tree.compute.generations += self.n if goal != "retrieve" else 0
            last = len(steps_of(state)) + 1 >= self.max_steps
            kids: dict[str, Node] = {}
            for text in texts:
                if text in kids:
                    kids[text].count += 1
                    continue
                done = goal == "reason" and final_answer(text) is not None
                kids[text] = tree.add(node, text=text, finished=done, terminal=done or last)
            for kid in kids.values():
                kid.prior = kid.count / len(texts)
                out.append((tree, kid))
        return out


# -- rollouts and the critic-free baselines -------------------------------------------------

ORDERS = ("generator", "always", "never")


def next_subgoal(order: str, generator: TextModel, state: str) -> tuple[str, int]:
    """The next sub-goal without critics and the generator calls it took: the generator's own choice
    (``"generator"``), the fixed cycle query -> retrieve -> reason (``"always"`` retrieve) or reason
    only (``"never"``)."""
    if order == "generator":
        goal = generator.complete([request("plan", state)])[0].strip()
        return (goal if goal in valid_subgoals(state) else "reason"), 1
    if order == "always":
        steps = steps_of(state)
        last = steps[-1][0] if steps else "reason"
        return {"reason": "query", "query": "retrieve", "retrieve": "reason"}[last], 0
    if order == "never":
        return "reason", 0
    raise ValueError(f"cr_planner: order must be one of {', '.join(ORDERS)}, got {order!r}")


def rollout(task: RetrievalTask, generator: TextModel, state: str, order: str = "generator", goal: str | None = None,
            max_steps: int = 8) -> tuple[str, int]:
    """Continue ``state`` without critics (one sample per step, the top document) until a final answer
    or ``max_steps`` steps; ``goal``: a sub-goal already chosen for the first step. Returns the final
    state and the generator calls spent."""
    calls = 0
    while len(steps_of(state)) < max_steps:
        if goal is None:
            goal, used = next_subgoal(order, generator, state)
            calls += used
        text = execute(task, generator, [(state, goal)], 1, 1)[0][0]
        calls += goal != "retrieve"
        state += SUBGOALS[goal] + text
        if goal == "reason" and final_answer(text) is not None:
            break
        goal = None
    return state, calls


@dataclass
class GoldRollouts:
    """MCTS node values for training data: gold (``task.check_answer``) on terminal nodes, else the
    mean gold of ``n`` critic-free rollouts by the generator (training may use the verifier)."""

    task: RetrievalTask
    generator: TextModel
    n: int = 2
    max_steps: int = 8
    source: str = "rollout"

    def __call__(self, items):
        out = []
        for tree, node in items:
            state = state_of(tree, node)
            if node.terminal:
                out.append(self.task.check_answer(tree.prompt, state))
                continue
            goal = MARKERS[node.text] if is_subgoal(node) else None
            if goal is not None:
                state = state_of(tree, tree.nodes[node.parent])
            ends = [rollout(self.task, self.generator, state, "generator", goal, self.max_steps)[0]
                    for _ in range(self.n)]
            tree.compute.rollouts += self.n
            out.append(sum(self.task.check_answer(tree.prompt, e) for e in ends) / self.n)
        return out


def vote(task: RetrievalTask, generator: TextModel, question: Question, order: str, calls: int = 0,
         trajectories: int = 1, max_steps: int = 8) -> tuple[str | None, int]:
    """Self-consistency without critics: critic-free trajectories (``order`` as in :func:`next_subgoal`)
    until at least ``calls`` generator calls are spent and at least ``trajectories`` ran, then the most
    common final answer (ties: the earliest). Returns (answer, calls spent)."""
    if max_steps < 1:
        raise ValueError(f"cr_planner.vote: max_steps must be >= 1, got {max_steps}")
    answers, spent = [], 0
    while spent < calls or len(answers) < trajectories:
        end, used = rollout(task, generator, question.prompt, order, None, max_steps)
        spent += used
        answers.append(final_answer(end.split("\n", 1)[1]))
    counts = Counter(a for a in answers if a is not None)
    return (max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None), spent


# -- critics --------------------------------------------------------------------------------


def _one_hot(i: int, n: int) -> list[float]:
    return [float(i == j) for j in range(n)]


def featurize(state: str, action: str) -> list[float]:
    """Lexical features of a (state, candidate) pair, the critics' input: the shape of the state (step
    counts, last sub-goal, hops the question asks, how much the last document matches the question
    and earlier documents, how much of the question the documents cover), the candidate's sub-goal, and where the candidate's words occur (the
    question and how late in it, documents, the last document and query, rationales, nowhere)."""
    question = state.split("\n", 1)[0].removeprefix(QUESTION)
    steps = steps_of(state)
    qt = tokens(question)
    by = {g: [t for s, t in steps if s == g] for g in SUBGOALS}
    docs, queries, reasons = by["retrieve"], by["query"], by["reason"]
    q_set, d_set, r_set = set(qt), set(tokens(" ".join(docs))), set(tokens(" ".join(reasons)))
    last_doc = set(tokens(docs[-1])) if docs else set()
    earlier = set(tokens(" ".join(docs[:-1])))
    last_q = set(tokens(queries[-1])) if queries else set()
    words = [] if action in MARKERS else tokens(action)

    def frac(inside) -> float:
        return sum(inside(w) for w in words) / len(words) if words else 0.0

    late = [(len(qt) - 1 - max(i for i, w2 in enumerate(qt) if w2 == w)) / len(qt) for w in words if w in q_set]
    hold = max((len(set(tokens(d)) & q_set) / max(1, len(q_set)) for d in docs if words and words[-1] in tokens(d)),
               default=0.0)
    hops = min(question.count(" of "), 3)
    nd = min(len(docs), 4)
    last = ["", *SUBGOALS].index(steps[-1][0]) if steps else 0
    return [
        *_one_hot(["", *SUBGOALS].index(MARKERS.get(action, "")), 4),
        *_one_hot(last, 4), *_one_hot(nd, 5), *_one_hot(min(len(queries), 4), 5), *_one_hot(min(len(reasons), 4), 5),
        *_one_hot(hops, 4), *_one_hot(nd * 4 + hops, 20),
        len(last_doc & q_set) / max(1, len(last_doc)), len(last_doc & earlier) / max(1, len(last_doc)),
        len(last_doc & (q_set | earlier)) / max(1, len(last_doc)), len(q_set & d_set) / max(1, len(q_set)),
        frac(lambda w: w in q_set), frac(lambda w: w in d_set), frac(lambda w: w in last_doc),
        frac(lambda w: w in last_q), frac(lambda w: w in r_set), frac(lambda w: w not in q_set | d_set | r_set),
        sum(late) / len(late) if late else 1.0, hold, float(bool(last_q) and last_q <= set(words)),
        float(action.strip() in [t for _, t in steps]), float(final_answer(action) is not None),
    ]


N_FEATURES = len(featurize(f"{QUESTION}x\n", "x"))


class Critic(torch.nn.Module):
    """A small MLP critic g(s, a) on :func:`featurize` features: one scalar per (state, candidate)."""

    def __init__(self, hidden: int = 32, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    @torch.no_grad()
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        with single_thread():
            return self(torch.tensor([featurize(s, a) for s, a in pairs])).tolist()


def critic_of(state: str) -> str:
    """Which critic judges a candidate after ``state``: the execution critic of the sub-goal the
    state ends with (``"reason"``, ``"query"``, ``"retrieve"`` = the document critic), else ``"subgoal"``."""
    return next((g for m, g in MARKERS.items() if state.endswith(m)), "subgoal")


def planner_values(tree: Tree, discount: float = 0.9) -> None:
    """Replace each evaluated node's value by what the planner gets from it: a leaf keeps its own
    evaluation; a sub-goal node takes its best execution's value (the execution critic picks one);
    an execution node takes ``discount`` times its best sub-goal's value (one step later).

    The mean backup (``q``) averages over the generator's random samples, which the critics exist
    to filter out, and ranks answering now no higher than asking again; the max backup with a
    discount prefers the sub-goal whose best execution wins soonest."""
    for node in reversed(tree.nodes[1:]):
        kids = [k.value for k in tree.children(node) if k.value is not None]
        if kids and node.value is not None:
            node.value = max(kids) * (1.0 if is_subgoal(node) else discount)
            node.source = "planner"


def critic_pairs(trees: list[Tree], min_gap: float = 0.05, discount: float = 0.9) -> dict[str, list[tuple[str, str, str]]]:
    """The trees' sibling pairs as ``(state, chosen, rejected)``, split by the critic that judges
    them: :func:`rlxf.search.step_pairs` on the nodes' own values after :func:`planner_values`
    (which rewrites them)."""
    out: dict[str, list[tuple[str, str, str]]] = {c: [] for c in CRITICS}
    for tree in trees:
        planner_values(tree, discount)
        for row in step_pairs(tree, min_gap=min_gap, alpha=0.0):
            out[critic_of(row["prompt"])].append((row["prompt"], row["chosen"], row["rejected"]))
    return out


def critic_loss(model: Critic, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """CR-Planner's pairwise ranking loss, summed: ``sum -log sigma(g(s, a+) - g(s, a-))``."""
    return bradley_terry_loss(model(chosen), model(rejected)).sum()


def train_critics(run: Run, stage: str, pairs: dict[str, list[tuple[str, str, str]]], cfg: OptimConfig,
                  seed: int) -> dict[str, Critic]:
    """One :class:`Critic` per kind in :data:`CRITICS`, each trained with :func:`critic_loss` on its pairs
    (stage ``{stage}_{kind}``)."""
    models = {}
    for k, kind in enumerate(CRITICS):
        rows = pairs.get(kind, [])
        if not rows:
            raise ValueError(f"cr_planner: no training pairs for the {kind} critic; search more training "
                             "questions or lower min_gap")
        xc = torch.tensor([featurize(s, c) for s, c, _ in rows])
        xr = torch.tensor([featurize(s, r) for s, _, r in rows])
        model = Critic(seed=seed * 10 + k)

        def loss_fn(micro, batch, model=model, xc=xc, xr=xr):
            loss = critic_loss(model, xc[micro], xr[micro]) / len(batch)
            return loss, {"loss": loss.item()}

        with single_thread():  # a tiny MLP: extra threads only slow it down on a busy machine
            train(run, f"{stage}_{kind}", model, cfg, epoch_batches(len(rows), cfg.batch_size, seed + k), loss_fn,
                  quiet=True)
        models[kind] = model
    return models


@dataclass
class Critics:
    """Node values from the critics: a sub-goal node gets the sub-goal critic's score of its sub-goal,
    an execution node its sub-goal's execution critic's score, each in one batch per critic. With
    ``order="always"`` a fixed query -> retrieve -> reason cycle replaces the sub-goal critic (the
    ablation that keeps only the execution critics)."""

    models: dict[str, Critic]
    order: str | None = None
    source: str = "critic"

    def __call__(self, items):
        groups: dict[str, list[int]] = {}
        pairs = []
        for i, (tree, node) in enumerate(items):
            state = state_of(tree, tree.nodes[node.parent])
            pairs.append((state, node.text))
            groups.setdefault(critic_of(state), []).append(i)
        out = [0.0] * len(items)
        for kind, idx in groups.items():
            if kind == "subgoal" and self.order is not None:
                scores = [float(MARKERS[pairs[i][1]] == next_subgoal(self.order, None, pairs[i][0])[0]) for i in idx]
            else:
                scores = self.models[kind].score([pairs[i] for i in idx])
            for i, v in zip(idx, scores):
                out[i] = v
        return out


# -- planning -------------------------------------------------------------------------------


def search_trees(task: RetrievalTask, questions: list[Question], generator: TextModel, simulations: int = 40,
                 n: int = 3, docs: int = 3, rollouts: int = 2, max_steps: int = 8, c: float = 1.0) -> list[Tree]:
    """MCTS (UCT with constant ``c``) over sub-goals and executions on ``questions``, valued by
    :class:`GoldRollouts`: the critics' training data."""
    trees = [Tree(q.prompt, []) for q in questions]
    mcts(trees, PlanExpander(task, generator, n, docs, max_steps), GoldRollouts(task, generator, rollouts, max_steps),
         simulations=simulations, rule=uct(c))
    return trees


def chosen_path(tree: Tree) -> Node:
    """The node a width-1 beam search ends on: from the root, the highest-valued child (the first on ties)."""
    node = tree.root
    while node.children:
        node = max(tree.children(node), key=lambda k: k.value)
    return node


def plan(task: RetrievalTask, questions: list[Question], generator: TextModel, critics: dict[str, Critic],
         n: int = 3, docs: int = 3, max_steps: int = 8, order: str | None = None) -> list[Tree]:
    """CR-Planner's inference: at each step the sub-goal critic picks the sub-goal, then the execution
    critic the best of ``n`` generator samples (or ``docs`` documents), for all questions side by side
    (beam search of width 1 with :class:`Critics` as the evaluator). The answer ends
    ``state_of(tree, chosen_path(tree))``. ``order="always"``: a fixed sub-goal order instead of the
    sub-goal critic."""
    if order not in (None, "always", "never"):
        raise ValueError(f"cr_planner.plan: order must be None, 'always' or 'never', got {order!r}")
    trees = [Tree(q.prompt, []) for q in questions]
    beam_search(trees, PlanExpander(task, generator, n, docs, max_steps), Critics(critics, order), width=1,
                max_depth=2 * max_steps)
    return trees


def gold_of(task: RetrievalTask, tree: Tree) -> float:
    return task.check_answer(tree.prompt, state_of(tree, chosen_path(tree)))


# -- the search lab -------------------------------------------------------------------------

GENERATOR_ERROR = 0.3
MCTS_SIMULATIONS = 40
MCTS_C = 0.5
CRITIC_OPTIM = OptimConfig(steps=150, batch_size=1024, lr=2e-2, checkpoint_every=0)


def lab_setup(run: Run, seed: int, n_prompts: int):
    """The retrieval task for the search lab: a world of seed ``seed``, its first ``n_prompts`` test
    questions (every one needs retrieval), the training questions and the generator's error rate."""
    from rlxf.lab.search import TaskSetup

    task = RetrievalTask(seed=seed)
    prompts = [q.prompt for q in task.questions("test")][:n_prompts]
    return TaskSetup("retrieval", None, prompts, {"task": task, "train": task.questions("train"),
                                                  "error": GENERATOR_ERROR})


def _prepare(setup, run: Run, seed: int) -> dict[str, Critic]:
    task = setup.extras["task"]
    generator = simulated_generator(task, setup.extras["error"], seed)
    trees = search_trees(task, setup.extras["train"], generator, MCTS_SIMULATIONS, c=MCTS_C)
    return train_critics(run, f"cr_planner_critics_{seed}", critic_pairs(trees), CRITIC_OPTIM, seed)


def _search_planner(setup, critics: dict[str, Critic], budget: int, seed: int) -> dict:
    """CR-Planner with ``budget`` generator samples per Reason or GenQuery step."""
    task = setup.extras["task"]
    generator = simulated_generator(task, setup.extras["error"], seed + 1)
    trees = plan(task, [task.question(p) for p in setup.prompts], generator, critics, n=budget)
    return {"gold": sum(gold_of(task, t) for t in trees) / len(trees),
            "generations": sum(t.compute.generations for t in trees), "tree": trees[0]}


def _search_no_critic(setup, prepared, budget: int, seed: int) -> dict:
    """The same generator planning for itself, self-consistency over ``budget`` trajectories."""
    task = setup.extras["task"]
    generator = simulated_generator(task, setup.extras["error"], seed + 1)
    golds, spent = [], 0
    for p in setup.prompts:
        q = task.question(p)
        answer, used = vote(task, generator, q, "generator", trajectories=budget)
        golds.append(float(answer == q.answer))
        spent += used
    return {"gold": sum(golds) / len(golds), "generations": spent}


def _lab():
    from rlxf.lab.search import SearchMethod

    return (SearchMethod("cr_planner", _search_planner, _prepare), SearchMethod("no_critic", _search_no_critic))


CR_PLANNER, NO_CRITIC = _lab()
