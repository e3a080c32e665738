"""PAE (proposer, agent, evaluator): an agent that teaches itself from tasks a proposer writes and a
judge grades, with no human instructions.

Each iteration:

1. the **proposer** (a :class:`~rlxf.labelers.roles.TextModel`) reads each context (a website's text
   description) and writes tasks for it, one per line;
2. the **agent** (an LM through :func:`rlxf.agents.render.lm_actor`) attempts every task in a text
   environment built for it;
3. the **evaluator** (a ``TextModel`` judge) reads each task with the agent's actions and final
   observation and answers success or failure: the only reward;
4. **online filtered BC**: the successful episodes join a replay buffer and the agent maximises the
   log-likelihood of their actions (BC on turns, the shared SFT loss).

Success on a held-out task set (tasks the agent never trains on, graded by the environment's gold
check) is measured before the first iteration and after each one. Task-specific pieces come in as
arguments: ``make_env(task)`` builds the environment of a proposed task (None when the proposal names
nothing the environment can pose), and the roles are plain ``TextModel`` objects: simulated from gold
with a set error rate in the tests and the guide's training example, SmolLM2 through ``LMRole`` in the
guide's role example (too weak to play either role).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from rlxf.agents.env import TextEnv
from rlxf.agents.episodes import TextEpisode, run_episodes, skill_actor
from rlxf.agents.offline import train_bc
from rlxf.agents.render import agent_tokenizer, lm_actor
from rlxf.agents.tasks.web import EMPTY, Site, WebEnv, parse_task
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm


@dataclass(frozen=True)
class Task:
    """A task: an instruction posed in context ``context`` (an index into the contexts)."""

    context: int
    instruction: str


# -- the proposer -----------------------------------------------------------------------------------

def proposer_request(context: str, n: int) -> str:
    """What the proposer is asked for one context."""
    return f"Here is a website.\n{context}\nPropose {n} different tasks a user could do on it, one per line."


def parse_proposals(reply: str, n: int) -> list[str]:
    """The tasks in a proposer's reply: its non-empty lines, list markers stripped, at most ``n``."""
    out = []
    for line in reply.splitlines():
        line = line.strip().lstrip("-*0123456789.) ").strip()
        if line:
            out.append(line)
    return out[:n]


def propose_tasks(proposer: TextModel, contexts: list[str], per_context: int) -> list[Task]:
    """Ask ``proposer`` for ``per_context`` tasks per context (one batched call)."""
    replies = proposer.complete([proposer_request(c, per_context) for c in contexts])
    return [Task(i, text) for i, reply in enumerate(replies) for text in parse_proposals(reply, per_context)]


# -- the evaluator ----------------------------------------------------------------------------------

JUDGE_QUESTION = "Did the agent complete the task? Answer success or failure."


def judge_request(task: Task, episode: TextEpisode) -> str:
    """What the evaluator sees: the task, the agent's actions and the final observation (the paper's
    judge sees the final screenshots and the agent's answer)."""
    actions = "\n".join(f"{t + 1}. {a.strip()}" for t, a in enumerate(episode.actions))
    return (f"Task: {task.instruction}\nActions:\n{actions}\nFinal observation:\n{episode.observations[-1]}\n"
            f"{JUDGE_QUESTION}")


def parse_judgement(reply: str) -> bool:
    """A judge's verdict: success when the reply's first word is ``success`` (or ``yes``)."""
    words = reply.strip().lower().split()
    return bool(words) and words[0].strip(".,:;!") in ("success", "yes")


def request_fields(request: str) -> tuple[str, list[str], str]:
    """The task, the action texts and the final observation of a :func:`judge_request` (what a
    simulated judge reads)."""
    lines = request.splitlines()
    end = lines.index("Final observation:")
    actions = [line.split(". ", 1)[1] if ". " in line else "" for line in lines[2:end]]
    return lines[0].removeprefix("Task: "), actions, lines[end + 1] if end + 1 < len(lines) else ""


def judge_episodes(evaluator: TextModel, tasks: list[Task], episodes: list[TextEpisode]) -> list[bool]:
    """The evaluator's verdict on each episode (one batched call)."""
    return [parse_judgement(r) for r in evaluator.complete([judge_request(t, e) for t, e in zip(tasks, episodes)])]


# -- the agent --------------------------------------------------------------------------------------

def attempt(make_env: Callable[[Task], TextEnv | None], actor, tasks: list[Task], seed: int,
            policy: str = "") -> tuple[list[Task], list[TextEpisode]]:
    """Play one episode of each task the environment can pose (``make_env`` not None); the tasks kept
    and their episodes, in order. Episode seeds are ``seed + i``."""
    kept = [(t, env) for t in tasks if (env := make_env(t)) is not None]
    envs = iter([env for _, env in kept])
    episodes = run_episodes(lambda: next(envs), actor, [seed + i for i in range(len(kept))], policy=policy)
    return [t for t, _ in kept], episodes


def filtered_bc(run: Run, stage: str, policy: LanguagePolicy, episodes: list[TextEpisode], optim: OptimConfig,
                seed: int) -> int:
    """PAE's update: behaviour cloning (SFT on every turn, :func:`rlxf.agents.offline.train_bc`) of
    ``episodes``, already filtered to the judged successes. Returns the number of turns trained on."""
    if episodes:
        train_bc(run, stage, policy, episodes, optim, seed=seed)
    return sum(len(ep) for ep in episodes)


# -- the loop ---------------------------------------------------------------------------------------

@dataclass
class PAEConfig:
    """``tasks_per_context`` proposals per context per iteration; ``buffer`` the most recent judged
    successes kept for filtered BC; ``optim`` the SFT steps run after each iteration's rollouts."""

    iterations: int = 4
    tasks_per_context: int = 8
    buffer: int = 2048
    temperature: float = 1.0
    eval_temperature: float = 1e-3  # near-greedy on the held-out tasks
    max_new_tokens: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=50, batch_size=32, lr=1e-3))


def evaluate(policy: LanguagePolicy, make_env: Callable[[Task], TextEnv | None], tasks: list[Task],
             cfg: PAEConfig, seed: int) -> list[bool]:
    """Gold success of the agent on each of ``tasks`` (the environment's own check; fixed sampling seed)."""
    gen = torch.Generator().manual_seed(seed)
    actor = lm_actor(policy, cfg.max_new_tokens, cfg.eval_temperature, gen)
    kept, episodes = attempt(make_env, actor, tasks, seed)
    if len(kept) != len(tasks):
        raise ValueError(f"evaluate: the environment cannot pose {len(tasks) - len(kept)} of the held-out tasks")
    return [ep.success for ep in episodes]


def train_pae(run: Run, policy: LanguagePolicy, contexts: list[str], proposer: TextModel,
              evaluator: TextModel, make_env: Callable[[Task], TextEnv | None], heldout: list[Task],
              cfg: PAEConfig, seed: int = 0, stage: str = "pae",
              demonstrations: list[TextEpisode] = ()) -> list[dict]:
    """Run PAE for ``cfg.iterations`` iterations, training ``policy`` in place. Returns one record per
    evaluation (iteration 0 is before training): the held-out success of every task (``heldout``, a list
    of bools), and for trained iterations the proposals made, the tasks posed, the judged and the true
    success rate of the rollouts, the buffer size and the number of turns BC trained on.
    ``demonstrations`` (the warm start's episodes, if any) start the replay buffer, so BC keeps seeing them
    until newer successes push them out."""
    rng = random.Random(seed)
    held = set(heldout)
    history = [{"iteration": 0, "heldout": evaluate(policy, make_env, heldout, cfg, seed)}]
    buffer: list[TextEpisode] = list(demonstrations)
    for it in range(1, cfg.iterations + 1):
        # a proposal equal to a held-out task is not posed: the agent never trains on held-out tasks
        tasks = [t for t in propose_tasks(proposer, contexts, cfg.tasks_per_context) if t not in held]
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        actor = lm_actor(policy, cfg.max_new_tokens, cfg.temperature, gen)
        posed, episodes = attempt(make_env, actor, tasks, seed=rng.randrange(2**31), policy=f"pae{it}")
        verdicts = judge_episodes(evaluator, posed, episodes) if posed else []
        buffer = (buffer + [ep for ep, ok in zip(episodes, verdicts) if ok])[-cfg.buffer:]
        rows = filtered_bc(run, f"{stage}_{it}", policy, buffer, cfg.optim, seed + it)
        n = max(len(episodes), 1)
        history.append({
            "iteration": it, "proposed": len(tasks), "posed": len(posed),
            "judged_success": sum(verdicts) / n, "true_success": sum(e.success for e in episodes) / n,
            "buffer": len(buffer), "bc_rows": rows, "heldout": evaluate(policy, make_env, heldout, cfg, seed),
        })
    return history


# -- simulated roles on the synthetic websites (rlxf.agents.tasks.web) ------------------------------

def described_forms(description: str) -> dict[str, dict[str, list[str]]]:
    """The forms a site description lists (:meth:`~rlxf.agents.tasks.web.Site.describe`'s text):
    page -> field -> accepted values, in the order written."""
    forms = {}
    for line in description.splitlines():
        w = line.split()
        if len(w) > 3 and w[0] == "page" and "form" in w[3:]:
            spec = " ".join(w[w.index("form", 3) + 1:])
            forms[w[1]] = {part.split()[0]: part.split()[1:] for part in spec.split(" ; ") if part.split()}
    return forms


def web_proposer(error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """A proposer that reads a site's description and writes tasks for it: a form page, a random
    non-empty subset of its fields and a value for each, all drawn from what the description lists.
    With probability ``error`` a request gets context-free proposals instead (pages the site lacks), which
    no environment can pose."""
    rng = random.Random(f"proposer|{seed}")

    def right(request: str) -> str:
        n = int(request.rsplit("Propose ", 1)[1].split()[0])
        forms = described_forms(request)
        out = []
        for _ in range(n):
            page = rng.choice(sorted(forms))
            fields = list(forms[page].items())
            chosen = sorted(rng.sample(range(len(fields)), rng.randint(1, len(fields))))
            pairs = " ".join(f"{fields[i][0]} {rng.choice(fields[i][1])}" for i in chosen)
            out.append(f"go to {page} enter {pairs} then submit")
        return "\n".join(out)

    def wrong(request: str, reply: str, r: random.Random) -> str:
        return "\n".join(f"go to {r.choice(GENERIC_PAGES)} enter {r.choice(GENERIC_PAGES)} now then submit"
                         for _ in reply.splitlines())

    return SimulatedRole(right, wrong, error, seed)


GENERIC_PAGES = ["login", "search", "profile", "settings", "inbox"]


def web_verdict(request: str) -> bool:
    """The true verdict on a judge request about a website task: the final observation reports a submit of
    the task's page holding exactly the task's values (every other field empty)."""
    task, _, final = request_fields(request)
    t, f = task.split(), final.split()
    if len(t) < 6 or len(f) < 2 or f[0] != "submitted" or f[1] != t[2]:
        return False
    want = dict(zip(t[4:-2:2], t[5:-2:2]))
    have = dict(zip(f[2::2], f[3::2]))
    return set(want) <= set(have) and all(v == want.get(k, EMPTY) for k, v in have.items())


def web_judge(error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """An evaluator that reads the task and the final observation and says whether the submitted form is
    the task's; with probability ``error`` its verdict is flipped."""
    return SimulatedRole(lambda q: "success" if web_verdict(q) else "failure",
                         lambda q, reply, r: "failure" if reply == "success" else "success", error, seed)


def web_tasks(sites: list[Site], per_site: int, seed: int, exclude: frozenset = frozenset()) -> list[Task]:
    """``per_site`` distinct tasks per site drawn with :meth:`Site.random_task` (one to three fields, none
    in ``exclude``)."""
    rng = random.Random(f"web_tasks|{seed}")
    out: list[Task] = []
    for i, site in enumerate(sites):
        mine: list[Task] = []
        for _ in range(1000 * per_site):
            t = Task(i, site.random_task(rng, rng.randint(1, 3)).instruction())
            if t not in exclude and t not in mine:
                mine.append(t)
            if len(mine) == per_site:
                break
        else:
            raise ValueError(f"web_tasks: site {site.name!r} has fewer than {per_site} tasks outside the excluded ones")
        out += mine
    return out


def web_env_maker(sites: list[Site], max_turns: int = 10) -> Callable[[Task], WebEnv | None]:
    """``make_env`` for PAE on ``sites``: the task's instruction read against its site (None when it names
    a page, field or value the site lacks)."""

    def make(task: Task) -> WebEnv | None:
        web_task = parse_task(sites[task.context], task.instruction)
        return None if web_task is None else WebEnv(sites[task.context], task=web_task, max_turns=max_turns)

    return make


def web_pae_run(run: Run, sites: list[Site], cfg: PAEConfig, warm: OptimConfig, seed: int,
                heldout_per_site: int = 12, demos_per_site: int = 14, error: float = 0.1, n_layer: int = 2,
                n_embd: int = 64, evaluator: TextModel | None = None) -> list[dict]:
    """One seed of PAE on ``sites`` from scratch, as the claim is measured: a tiny agent (model seed
    ``seed``) warmed by BC (``warm``) on expert episodes of ``demos_per_site`` tasks per site, then
    :func:`train_pae` with :func:`web_proposer` and :func:`web_judge` (each wrong with probability
    ``error``; ``evaluator`` replaces the judge, e.g. one that fails everything for a BC-only control).
    The held-out tasks are ``heldout_per_site`` per site drawn with seed ``1000 + seed``, none of them
    demonstrated. Returns :func:`train_pae`'s history."""
    make = web_env_maker(sites)
    heldout = web_tasks(sites, heldout_per_site, seed=1000 + seed)
    tok = agent_tokenizer(sorted({w for s in sites for w in WebEnv(s).words()}))
    agent = LanguagePolicy(tiny_causal_lm(tok, n_layer=n_layer, n_embd=n_embd, max_positions=320, seed=seed), tok)
    demo_tasks = web_tasks(sites, demos_per_site, seed=seed, exclude=frozenset(heldout))
    _, demos = attempt(make, skill_actor(1.0), demo_tasks, seed=0)
    filtered_bc(run, "warm", agent, demos, warm, seed=seed)
    judge = web_judge(error, seed) if evaluator is None else evaluator
    return train_pae(run, agent, [s.describe() for s in sites], web_proposer(error, seed), judge, make, heldout, cfg,
                     seed=seed, demonstrations=demos)


__all__ = ["PAEConfig", "Task", "attempt", "described_forms", "evaluate", "filtered_bc", "judge_episodes", "judge_request",
           "parse_judgement", "parse_proposals", "propose_tasks", "proposer_request", "request_fields",
           "train_pae", "web_env_maker", "web_pae_run", "web_judge", "web_proposer", "web_tasks", "web_verdict"]
