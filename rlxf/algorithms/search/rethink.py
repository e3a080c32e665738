"""RethinkMCTS (Li et al., 2024) on the code task: MCTS over thoughts, with execution feedback used
to rewrite a thought whose program fails its tests.

The paper searches over natural-language strategy steps and writes code from them; here a thought
is one line of the function body (a tiny policy has no separate plan language, and a line is the
unit an edit fixes). A node is valued by completing the body from its lines (one rollout of the
policy, or the node's own body when it is finished) and running the program on the problem's
PUBLIC tests: the value is their pass rate. Selection is P-UCB with the best-value statistic
(``puct(c, "max", c_base)``). When the program fails a public test, *rethink* sends the failing
thought, the lines before it and the feedback text (:meth:`CodeTask.feedback` of the public tests)
to an editor (any :class:`rlxf.labelers.roles.TextModel`), replaces the thought in place with the
editor's line (prior 1.0, as in the paper) and values the node again, once per node.

The answer is the first program with the best public value; gold is its pass rate on the hidden tests.
Compute: every policy sample (expansion steps, rollouts) and every editor reply counts as one
generation (``Compute.generations + Compute.rollouts``); no search spends more than its budget of
generations per problem (a round of MCTS starts only when its worst case fits, and rethink's edits
use what the rounds leave).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.lab.search import SearchMethod, TaskSetup
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import SPECIAL_TOKENS, tiny_causal_lm
from rlxf.search import Expander, Tree, delimiter_steps, mcts, puct
from rlxf.search.expand import Item, sample_items
from rlxf.tasks.code import CodeTask, all_problems, problem, program
from rlxf.tasks.sandbox import RunResult

# Code tokens: a newline, a four-space indent, a space, a word, a number, a two-character operator, any other character.
CODE_TOKENS = r"\n| {4}| |[A-Za-z]+|\d+|==|!=|<=|>=|\+=|\*\*|//|."
MAX_BODY_TOKENS = 160  # the longest reference body is 144 tokens


def signature(prompt: str) -> str:
    """What the tiny policy reads of a problem: its ``def`` line. The templates' names carry every
    constant the docstring states (``sum_multiples_of_3``), so the line is the whole spec."""
    return prompt.split("\n", 1)[0] + "\n"


def code_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the pieces of every problem's ``def`` line and reference body
    (plus the numbers 0..40 and the operators bugs swap in), decoded by concatenation."""
    words = {str(i) for i in range(41)} | {"<", ">", "+", "-", "*", "%", "and", "or"}
    for p in all_problems().values():
        words |= set(re.findall(CODE_TOKENS, signature(p.prompt) + p.solution))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(CODE_TOKENS), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def train_code_policy(run: Run, task: CodeTask, cfg: OptimConfig, bug_rate: float = 0.5, seed: int = 0,
                      n_layer: int = 2, n_embd: int = 64) -> LanguagePolicy:
    """A tiny GPT-2 SFT'd on :meth:`CodeTask.sft_rows` (reference bodies, ``bug_rate`` of them with
    one injected bug), reading each problem's :func:`signature`."""
    tok = code_tokenizer()
    policy = LanguagePolicy(tiny_causal_lm(tok, "gpt2", n_layer, n_embd, 4, 256, seed=seed), tok)
    rows = task.sft_rows(bug_rate)
    prompts = policy.encode([signature(r["prompt"]) for r in rows])
    responses = policy.encode_responses([r["completion"] for r in rows])
    train_sft(run, "code_sft", policy, prompts, responses, cfg, seed, quiet=True)
    policy.model.eval()
    return policy


# -- running programs ---------------------------------------------------------------------------


@dataclass
class Runner:
    """Runs bodies on a problem's public or hidden tests through ``task`` (all misses of a call in
    parallel sandboxes), caching each (problem, program, tests) result: the same code gives the same result."""

    task: CodeTask
    cache: dict = field(default_factory=dict)
    runs: int = 0

    def __call__(self, prompts: list[str], bodies: list[str], public: bool = True) -> list[RunResult]:
        keys = [(prompt, program(self.task.by_prompt(prompt), body), public) for prompt, body in zip(prompts, bodies)]
        todo = list({k: i for i, k in enumerate(keys) if k not in self.cache}.values())
        for i, res in zip(todo, self.task.run([prompts[i] for i in todo], [bodies[i] for i in todo], public)):
            self.cache[keys[i]] = res
        self.runs += len(todo)
        return [self.cache[k] for k in keys]


def spent(tree: Tree) -> int:
    """Generations a search spent on ``tree``: sampled steps, editor replies and rollouts."""
    return tree.compute.generations + tree.compute.rollouts


@dataclass
class PublicTests:
    """Evaluator: each node's body (its own if terminal, else completed by one policy rollout, all
    in one sampling call) run on the public tests; the value is the pass rate. Every program run
    is kept per tree, in order (``programs``), for the answer and for rethink."""

    policy: LanguagePolicy
    runner: Runner
    seed: int = 0
    temperature: float = 1.0
    source: str = "public tests"
    programs: dict = field(default_factory=dict)  # id(tree) -> [(node id, body, RunResult)]
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator(device=self.policy.device).manual_seed(self.seed)

    def __call__(self, items: list[Item]) -> list[float]:
        bodies = [t.response_text(n) for t, n in items]
        open_ = [i for i, (_, n) in enumerate(items) if not n.terminal]
        if open_:
            ro = sample_items(self.policy, [items[i] for i in open_], 1, MAX_BODY_TOKENS, self.generator,
                              self.temperature)
            for i, ids in zip(open_, ro.response_ids):
                bodies[i] += self.policy.decode(ids)
                items[i][0].compute.rollouts += 1
        results = self.runner([t.prompt for t, _ in items], bodies)
        for (tree, node), body, res in zip(items, bodies, results):
            self.programs.setdefault(id(tree), []).append((node.id, body, res))
        return [r.pass_rate for r in results]

    def last(self, tree: Tree, node_id: int) -> tuple[str, RunResult]:
        """The latest program run for node ``node_id`` of ``tree``."""
        return next((b, r) for i, b, r in reversed(self.programs[id(tree)]) if i == node_id)

    def answer(self, tree: Tree) -> str:
        """The first program with the best public pass rate ('' if none ran)."""
        runs = self.programs.get(id(tree), [])
        return max(runs, key=lambda run: run[2].pass_rate)[1] if runs else ""


# -- rethink ------------------------------------------------------------------------------------

_LINE = re.compile(r"^Rewrite line (\d+) ")


def rethink_request(prompt: str, before: str, thought: str, body: str, feedback: str) -> str:
    """The editor's request: the problem, the body run from these lines, its public-test feedback,
    and the thought (line ``k`` of the body, counted from 0) to rewrite. The reply is one line."""
    k = before.count("\n")
    return (f"Rewrite line {k} of the body so that the function passes its tests; reply with that line only.\n\n"
            f"{prompt}{body}\n\nExecution feedback:\n{feedback}\n\nLine {k}:\n{thought.rstrip(chr(10))}")


def parse_request(request: str) -> tuple[str, int, str]:
    """(problem id, line index, thought) of a :func:`rethink_request`."""
    m, name = _LINE.match(request), re.search(r"^def (\w+)\(", request, re.M)
    if not m or not name:
        raise ValueError(f"rethink: not a rethink request: {request[:80]!r}")
    return name.group(1), int(m.group(1)), request.rsplit("\n", 1)[1]


def reply_line(reply: str, thought: str) -> str:
    """The editor's line: the first non-empty line of its reply (a fenced block's content) other than
    a ``def`` line (a chat model often repeats the signature first), else the thought unchanged."""
    text = re.sub(r"```(?:python)?", "", reply)
    lines = [line.rstrip() for line in text.split("\n") if line.strip() and not line.startswith("def ")]
    return lines[0] if lines else thought.rstrip("\n")


def reference_line(request: str) -> str:
    """What a perfect editor writes: the reference body's line at the thought's index (the thought
    itself when the reference has no such line)."""
    pid, k, thought = parse_request(request)
    lines = problem(pid).solution.rstrip("\n").split("\n")
    return lines[k] if k < len(lines) else thought


def slip(request: str, right: str, rng: random.Random) -> str:
    """An editor's mistake: the thought left as it was, or the right line with one number moved by
    one or one comparison swapped (whichever applies; the thought when neither does)."""
    thought = parse_request(request)[2]
    changes = [m for m in re.finditer(r"\d+|<=|>=|==|!=|<|>", right)]
    if rng.random() < 0.5 or not changes:
        return thought
    m = rng.choice(changes)
    flip = {"<=": "<", ">=": ">", "==": "!=", "!=": "==", "<": "<=", ">": ">="}
    new = str(int(m.group()) + rng.choice((-1, 1))) if m.group().isdigit() else flip[m.group()]
    return right[: m.start()] + new + right[m.end():]


def simulated_editor(error: float = 0.3, seed: int = 0) -> SimulatedRole:
    """The rethink editor as a :class:`SimulatedRole`: the reference line, or with probability
    ``error`` a :func:`slip`. It stands in for the paper's LLM, which reads the feedback and writes
    a better thought; it is only asked when a program fails a public test."""
    return SimulatedRole(right=reference_line, wrong=slip, error=error, seed=seed)


@dataclass
class Rethink:
    """Evaluator: :class:`PublicTests`, then for each node whose program fails a public test
    (and whose tree can still afford the edit and a new rollout within ``budget``), the editor's
    rewrite of the node's thought in place (prior 1.0) and a second valuation; a node is rethought
    at most once (the paper's ``max_think_times = 2`` valuations)."""

    value: PublicTests
    editor: TextModel
    budget: int
    source: str = "public tests"
    done: set = field(default_factory=set)

    def __call__(self, items: list[Item]) -> list[float]:
        values = self.value(items)
        left = {id(t): self.budget - spent(t) for t, _ in items}
        todo = []
        for i, ((tree, node), v) in enumerate(zip(items, values)):
            if v < 1.0 and (id(tree), node.id) not in self.done and left[id(tree)] >= 2:
                todo.append(i)
                left[id(tree)] -= 2
                self.done.add((id(tree), node.id))
        if not todo:
            return values
        requests = []
        for i in todo:
            tree, node = items[i]
            body, res = self.value.last(tree, node.id)
            before = "".join(n.text for n in tree.path(node)[:-1])
            requests.append(rethink_request(tree.prompt, before, node.text, body, res.feedback()))
        changed = []
        for i, request, reply in zip(todo, requests, self.editor.complete(requests)):
            tree, node = items[i]
            tree.compute.generations += 1
            if rewrite(self.value.policy, node, reply_line(reply, node.text)):
                changed.append(i)
        for i, v in zip(changed, self.value([items[i] for i in changed])):
            values[i] = v
        return values


def rewrite(policy: LanguagePolicy, node, line: str) -> bool:
    """Replace ``node``'s thought by ``line`` in place (keeping how the step ended: a newline, or
    EOS when it finished the body); prior 1.0. False when the line is the thought already."""
    eos = policy.tokenizer.eos_token_id
    ids = policy.encode([line])[0] + ([eos] if node.finished else policy.encode(["\n"])[0])
    if ids == node.ids:
        return False
    node.ids, node.text, node.logps, node.prior = ids, policy.decode(ids), [0.0] * len(ids), 1.0
    return True


# -- the three methods -----------------------------------------------------------------------------


def code_trees(policy: LanguagePolicy, prompts: list[str]) -> list[Tree]:
    """One tree per problem; the root holds the full prompt (for running) and the policy's view of it."""
    return [Tree(p, policy.encode([signature(p)])[0]) for p in prompts]


def code_mcts(policy: LanguagePolicy, runner: Runner, prompts: list[str], budget: int, seed: int = 0,
              editor: TextModel | None = None, width: int = 3, c: float = 4.0, c_base: float = 10.0,
              temperature: float = 1.0) -> tuple[list[str], list[Tree]]:
    """MCTS over body lines on every prompt side by side (one sampling call per round), with
    rethink when ``editor`` is given. A round expands one leaf per tree with ``width`` thoughts and
    values them; it starts only while its worst case (``width`` thoughts and a rollout each) fits the
    tree's budget, and rethink edits only within the budget, so no tree spends more than ``budget``.
    A tree stops once a program passes every public test, or after ``4 * budget`` rounds (a round
    that selects a finished body spends nothing). Returns the answers and the trees."""
    if budget < 2 * width:
        raise ValueError(f"code_mcts: budget {budget} is below one round's cost, 2 * width = {2 * width} generations")
    steps = delimiter_steps(policy.tokenizer, "\n", max_tokens=40)
    expander = Expander(policy, steps, k=width, temperature=temperature, max_response_tokens=MAX_BODY_TOKENS,
                        seed=seed)
    value = PublicTests(policy, runner, seed=seed + 1, temperature=temperature)
    evaluator = value if editor is None else Rethink(value, editor, budget)
    trees = code_trees(policy, prompts)
    rule = puct(c, stat="max", c_base=c_base)
    rounds = dict.fromkeys(map(id, trees), 0)
    while True:
        active = [t for t in trees if spent(t) + 2 * width <= budget and rounds[id(t)] < 4 * budget
                  and not all(n.terminal for n in t.leaves())
                  and not any(r.pass_rate == 1.0 for _, _, r in value.programs.get(id(t), []))]
        if not active:
            return [value.answer(t) for t in trees], trees
        mcts(active, expander, evaluator, simulations=1, rule=rule)
        for t in active:
            rounds[id(t)] += 1


@torch.no_grad()
def best_of_samples(policy: LanguagePolicy, runner: Runner, prompts: list[str], budget: int, seed: int = 0,
                    temperature: float = 1.0) -> list[str]:
    """Sampling and filtering: ``budget`` whole bodies per problem (one sampling call), the first
    with the best public pass rate."""
    ro = policy.sample(policy.encode([signature(p) for p in prompts]), n=budget, max_new_tokens=MAX_BODY_TOKENS,
                       temperature=temperature, generator=torch.Generator().manual_seed(seed))
    bodies = [policy.decode(r) for r in ro.response_ids]
    results = runner([p for p in prompts for _ in range(budget)], bodies)
    out = []
    for i in range(len(prompts)):
        rows = range(i * budget, (i + 1) * budget)
        out.append(bodies[max(rows, key=lambda r: results[r].pass_rate)])
    return out


# -- the lab ---------------------------------------------------------------------------------------


def lab_setup(run: Run, seed: int, n_prompts: int) -> TaskSetup:
    """The code task for the search lab: the tiny code policy (:func:`train_code_policy`, 400 steps)
    and the first ``n_prompts`` held-out problems. ``extras``: the task and a shared :class:`Runner`."""
    task = CodeTask(seed=0)
    policy = train_code_policy(run, task, OptimConfig(steps=400, batch_size=16, lr=1e-2, checkpoint_every=10**6),
                               seed=seed)
    prompts = [p.prompt for p in task.problems("test")][:n_prompts]
    return TaskSetup("code", policy, prompts, {"task": task, "runner": Runner(task)})


def _gold(setup: TaskSetup, bodies: list[str], generations: int) -> dict:
    results = setup.extras["runner"](setup.prompts, bodies, public=False)
    return {"gold": sum(r.pass_rate for r in results) / len(results), "generations": generations}


def _sample(setup: TaskSetup, prepared, budget: int, seed: int) -> dict:
    bodies = best_of_samples(setup.policy, setup.extras["runner"], setup.prompts, budget, seed)
    return _gold(setup, bodies, budget * len(setup.prompts))


def _mcts(setup: TaskSetup, prepared, budget: int, seed: int, editor: TextModel | None = None) -> dict:
    """Width 3 (the paper's) from a budget of 6 up, narrower below; a budget under 2 cannot run a round."""
    bodies, trees = code_mcts(setup.policy, setup.extras["runner"], setup.prompts, budget, seed, editor,
                              width=max(1, min(3, budget // 2)))
    return _gold(setup, bodies, sum(map(spent, trees)))


def _rethink(setup: TaskSetup, prepared, budget: int, seed: int) -> dict:
    return _mcts(setup, prepared, budget, seed, simulated_editor(0.3, seed))


SAMPLE = SearchMethod("sample", _sample)  # budget = whole bodies sampled per problem
MCTS = SearchMethod("mcts", _mcts)  # budget = generations per problem (steps + rollouts), at least 2
RETHINK = SearchMethod("rethink_mcts", _rethink)  # budget = generations (steps + rollouts + editor replies)

__all__ = ["MCTS", "RETHINK", "SAMPLE", "PublicTests", "Rethink", "Runner", "best_of_samples", "code_mcts",
           "code_tokenizer", "lab_setup", "parse_request", "reference_line", "reply_line", "rethink_request",
           "rewrite", "signature", "simulated_editor", "slip", "spent", "train_code_policy"]
