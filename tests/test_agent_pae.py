"""PAE: the proposer reads a site's description, the judge reads the outcome, filtered BC trains only on
judged successes, and held-out tasks are never posed for training."""

from __future__ import annotations

import random

import pytest
import torch

from rlxf.agents.episodes import TextEpisode, skill_actor
from rlxf.agents.pae import (
    PAEConfig,
    Task,
    attempt,
    filtered_bc,
    described_forms,
    judge_episodes,
    judge_request,
    parse_judgement,
    parse_proposals,
    propose_tasks,
    request_fields,
    train_pae,
    web_env_maker,
    web_judge,
    web_pae_run,
    web_proposer,
    web_tasks,
)
from rlxf.agents.render import agent_tokenizer
from rlxf.agents.tasks.web import SITES, parse_task
from rlxf.algorithms.evaluate import paired_gain
from rlxf.algorithms.loop import OptimConfig
from rlxf.core.runs import Run
from rlxf.labelers.roles import SimulatedRole
from rlxf.policies.control import single_thread
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm

SITE_LIST = [SITES["shop"], SITES["bank"]]


def test_proposals_are_the_replys_lines_without_list_markers():
    reply = "1. go to a\n\n- go to b\n* go to c\n2) go to d"
    assert parse_proposals(reply, 3) == ["go to a", "go to b", "go to c"]


def test_the_proposer_writes_tasks_of_the_site_it_reads_and_noise_writes_unposable_ones():
    assert described_forms(SITES["bank"].describe()) == {
        "transfer": {"to": ["ann", "bob", "eve"], "amount": ["10", "50", "100"]},
        "cards": {"card": ["debit", "credit"], "action": ["block", "renew"]},
        "support": {"topic": ["card", "loan", "login"]}}
    contexts = [s.describe() for s in SITE_LIST]
    tasks = propose_tasks(web_proposer(error=0.0, seed=3), contexts, 20)
    assert [t.context for t in tasks] == [0] * 20 + [1] * 20
    assert all(parse_task(SITE_LIST[t.context], t.instruction) is not None for t in tasks)
    assert len({t.instruction for t in tasks}) > 10  # drawn, not one task repeated
    make = web_env_maker(SITE_LIST)
    noisy = propose_tasks(web_proposer(error=1.0, seed=3), contexts, 5)
    assert len(noisy) == 10 and all(make(t) is None for t in noisy)


def test_the_judge_reads_the_outcome_from_the_final_observation():
    make = web_env_maker(SITE_LIST)
    tasks = web_tasks(SITE_LIST, 6, seed=0)
    _, good = attempt(make, skill_actor(1.0), tasks, seed=0)
    _, bad = attempt(make, skill_actor(0.0, seed=1), tasks, seed=0)
    episodes, tt = good + bad, tasks + tasks
    truth = [e.success for e in episodes]
    assert all(truth[:12]) and sum(truth[12:]) < 3
    request = judge_request(tt[0], good[0])
    assert request_fields(request) == (tt[0].instruction, [a for a in good[0].actions], good[0].observations[-1])
    assert judge_episodes(web_judge(error=0.0), tt, episodes) == truth
    assert judge_episodes(web_judge(error=1.0), tt, episodes) == [not x for x in truth]
    # a submit of the right page with a value the task does not ask for is a failure
    ep = TextEpisode("web", 0, ["o", "submitted transfer to ann amount 10"], ["submit"])
    assert not judge_episodes(web_judge(0.0), [Task(1, "go to transfer enter to ann then submit")], [ep])[0]
    assert parse_judgement("Success.") and parse_judgement("yes") and not parse_judgement("failure, not success")


@pytest.fixture(scope="module")
def web_policy(tmp_path_factory):
    """A tiny agent warmed by filtered BC on a few expert episodes, so most of what it writes is valid."""
    make = web_env_maker(SITE_LIST)
    words = sorted({w for i, s in enumerate(SITE_LIST)
                    for w in make(Task(i, s.random_task(random.Random(0)).instruction())).words()})
    tok = agent_tokenizer(words)
    pol = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, max_positions=320, seed=0), tok)
    _, demos = attempt(make, skill_actor(1.0), web_tasks(SITE_LIST, 4, seed=1), seed=0)
    rows = filtered_bc(Run(tmp_path_factory.mktemp("warm"), "x"), "warm", pol, demos,
                       OptimConfig(steps=80, batch_size=16, lr=1e-2), seed=0)
    assert rows == sum(len(e) for e in demos) > 0
    return pol


def test_filtered_bc_trains_only_on_judged_successes_and_never_on_held_out_tasks(web_policy, tmp_path):
    pol = web_policy.copy()
    make = web_env_maker(SITE_LIST)
    contexts = [s.describe() for s in SITE_LIST]
    heldout = web_tasks(SITE_LIST, 2, seed=5)
    cfg = PAEConfig(iterations=1, tasks_per_context=4, max_new_tokens=4,
                    optim=OptimConfig(steps=2, batch_size=4, lr=1e-3))

    def judge(verdict):
        return SimulatedRole(lambda q: verdict, lambda q, r, rng: r)

    # a proposer that proposes only the held-out tasks poses nothing
    only_heldout = SimulatedRole(lambda q: "\n".join(t.instruction for t in heldout
                                                     if contexts[t.context] in q), lambda q, r, rng: r)
    run = Run(tmp_path / "a", "x")
    hist = train_pae(run, pol, contexts, only_heldout, judge("success"), make, heldout, cfg, seed=0)
    assert hist[1]["proposed"] == 0 and hist[1]["buffer"] == 0 and run.metrics("pae_1") == []
    assert len(hist[0]["heldout"]) == len(heldout) == 4
    # a judge that fails everything leaves the agent untouched; one that passes everything trains it
    before = [p.clone() for p in pol.model.parameters()]
    hist = train_pae(Run(tmp_path / "b", "x"), pol, contexts, web_proposer(0.0), judge("failure"), make, heldout,
                     cfg, seed=0)
    assert hist[1]["posed"] == hist[1]["proposed"] > 4 and hist[1]["buffer"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, pol.model.parameters()))
    run = Run(tmp_path / "c", "x")
    hist = train_pae(run, pol, contexts, web_proposer(0.0), judge("success"), make, heldout, cfg, seed=0)
    assert hist[1]["buffer"] == hist[1]["posed"] > 4 and hist[1]["judged_success"] == 1.0
    assert hist[1]["bc_rows"] > hist[1]["buffer"] and len(run.metrics("pae_1")) == 2
    assert not all(torch.equal(a, b) for a, b in zip(before, pol.model.parameters()))
    # the warm start's demonstrations start the buffer: BC sees them even when nothing new is judged a success
    _, demos = attempt(make, skill_actor(1.0), web_tasks(SITE_LIST, 2, seed=9, exclude=frozenset(heldout)), seed=0)
    hist = train_pae(Run(tmp_path / "d", "x"), pol, contexts, web_proposer(0.0), judge("failure"), make, heldout,
                     cfg, seed=0, demonstrations=demos)
    assert hist[1]["buffer"] == len(demos) == 4 and hist[1]["bc_rows"] == sum(len(e) for e in demos)



def test_web_pae_run_warms_the_agent_on_demonstrations_and_takes_a_replacement_judge(tmp_path):
    cfg = PAEConfig(iterations=1, tasks_per_context=3, max_new_tokens=4,
                    optim=OptimConfig(steps=1, batch_size=4, checkpoint_every=0))
    warm = OptimConfig(steps=1, batch_size=4, checkpoint_every=0)
    fail_all = SimulatedRole(lambda q: "failure", lambda q, r, rng: r)
    run = Run(tmp_path, "x")
    hist = web_pae_run(run, SITE_LIST, cfg, warm, seed=0, heldout_per_site=2, demos_per_site=3, n_layer=1,
                       n_embd=16, evaluator=fail_all)
    assert len(hist) == 2 and len(hist[0]["heldout"]) == len(hist[1]["heldout"]) == 4
    assert 0 < hist[1]["posed"] == fail_all.requests  # every posed task is judged by the given judge
    assert hist[1]["buffer"] == 6  # nothing judged a success: the buffer holds the 3 demonstrations per site
    assert len(run.metrics("warm")) == 1 and len(run.metrics("pae_1")) == 1

CLAIM_SITES = [SITES["shop"], SITES["bank"], SITES["travel"]]
CLAIM_SEEDS = (2, 3, 4)  # seeds 0 and 1 were used to choose the design and its budget


def heldout_before_and_after(seed: int, root) -> tuple[list[bool], list[bool]]:
    """One training seed of the claim's design (:func:`web_pae_run`): a two-layer agent warmed by BC on 14
    expert demonstrations per site (250 steps of 16 turns), then 3 PAE iterations of 24 proposals per site
    and 50 filtered-BC steps, proposer and judge each wrong 10% of the time. Gold success on 12 held-out
    tasks per site, before the first iteration and after the last."""
    cfg = PAEConfig(iterations=3, tasks_per_context=24, max_new_tokens=4,
                    optim=OptimConfig(steps=50, batch_size=16, lr=2e-3, checkpoint_every=0))
    warm = OptimConfig(steps=250, batch_size=16, lr=3e-3, checkpoint_every=0)
    hist = web_pae_run(Run(root / f"seed{seed}", "pae claim"), CLAIM_SITES, cfg, warm, seed)
    return hist[0]["heldout"], hist[-1]["heldout"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured on seeds 2-4 (108 held-out task-seed pairs): held-out success "
                   "0.065 -> 0.056, paired -0.009 (se 0.016); per seed 0.083 -> 0.083, 0.056 -> 0.056, "
                   "0.056 -> 0.028: at this budget the agent barely generalises to unseen tasks. At about 4x the compute "
                   "(docs/agents.md, PAE) seeds 5-7 rose 0.315 -> 0.389, +0.074 (se 0.029, 2.6 se), as much as BC "
                   "on the demonstrations alone at equal steps (PAE minus control 0.000, se 0.032)")
def test_held_out_success_rises_over_pae_iterations(tmp_path):
    """PAE's claim at small budget: the agent's gold success on held-out tasks (never posed for training)
    is higher after the last iteration than before the first. Threshold, fixed before the first run on
    these seeds: over training seeds 2, 3 and 4 (36 held-out tasks each, 108 task-seed pairs), the paired
    mean difference (after the last iteration minus before the first) is positive and at least 2 standard
    errors of the paired differences."""
    first, last = [], []
    with single_thread():
        for seed in CLAIM_SEEDS:
            before, after = heldout_before_and_after(seed, tmp_path)
            print(f"seed {seed}: held-out success {sum(before) / len(before):.3f} -> {sum(after) / len(after):.3f}")
            first += before
            last += after
    gain, se = paired_gain(last, first)
    print(f"paired gain {gain:+.3f} (se {se:.3f}) over {len(first)} pairs")
    assert gain > 0 and gain >= 2 * se
