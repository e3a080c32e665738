"""Agent Q (rlxf.algorithms.search.agent_q): the critic's requests, gold ranking and rank values,
step-level pairs with logged reference log-probs, off-policy DPO equal to DPO against a frozen copy,
the outcome-level baseline's budget, and (slow) the paper's claim on the arithmetic task."""

from __future__ import annotations

import copy
import random
import statistics

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.search import agent_q as A
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.lab.rlvr import arithmetic_tokenizer
from rlxf.lab.search import TaskSetup
from rlxf.objectives.preference import dpo_loss
from rlxf.policies.language import LanguagePolicy, Rollout
from rlxf.policies.logprobs import pad_rows, pad_tokens, pair_logps
from rlxf.policies.tiny import tiny_causal_lm
from rlxf.search import Tree
from rlxf.tasks.arithmetic import ArithmeticTask, check_answer, solve


@pytest.fixture(scope="module")
def tiny():
    tok = arithmetic_tokenizer()
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=2, n_embd=32, max_positions=128, seed=1), tok)


class Fixed:
    """A critic stub: the same reply to every request, and a record of what it was asked."""

    def __init__(self, reply: str):
        self.reply, self.batches = reply, []

    def complete(self, requests):
        self.batches.append(list(requests))
        return [self.reply] * len(requests)


def small(**kw) -> A.AgentQConfig:
    base = dict(iterations=1, prompts=2, k=3, simulations=3, max_response_tokens=24,
                optim=OptimConfig(steps=2, batch_size=4, lr=1e-3, checkpoint_every=10**6))
    return A.AgentQConfig(**{**base, **kw})


# -- the critic ---------------------------------------------------------------------------------


def test_rank_request_round_trips_and_a_foreign_text_is_refused():
    req = A.rank_request("3+4*2=", "4*2=8\n", ["3+8=11\n", "", "answer: 9"])
    assert A.parse_request(req) == ("3+4*2=", ["4*2=8"], ["3+8=11", A.END, "answer: 9"])
    assert A.parse_request(A.rank_request("3+4*2=", "", ["4*2=8\n"])) == ("3+4*2=", [], ["4*2=8"])
    with pytest.raises(ValueError, match="not an Agent Q ranking request"):
        A.parse_request("Rank these: 1. a 2. b")


def test_gold_ranking_puts_lines_that_keep_the_work_right_first_and_ties_equals():
    # after the right first line: 3+8=11 right; 3+8=12 a slip; stopping or answering now is wrong
    req = A.rank_request("3+4*2=", "4*2=8\n", ["3+8=11\n", "3+8=12\n", "answer: 11", "", "3+8=11\n"])
    assert A.gold_ranking(req) == "1=5,2=3=4"
    # after a slip every line is wrong, but a locally right one (consistent with the slip) ranks above
    req = A.rank_request("3+4*2=", "4*2=9\n", ["3+9=13\n", "3+9=12\n"])
    assert A.gold_ranking(req) == "2,1"
    req = A.rank_request("3+4*2=", "4*2=8\n3+8=11\n", ["answer: 12", "answer: 11", ""])
    assert A.gold_ranking(req) == "2,1=3"


def test_a_wrong_critic_reply_is_a_shuffle_and_the_simulated_critic_errs_at_its_rate():
    rng = random.Random(0)
    assert sorted(A.shuffled_ranking("", "1=5,2,3=4", rng).split(",")) == ["1", "2", "3", "4", "5"]
    req = A.rank_request("3+4*2=", "", ["4*2=9\n", "4*2=8\n"])
    critic = A.simulated_critic(error=0.3, seed=0)
    replies = critic.complete([req] * 2000)
    wrong = sum(r != "2,1" for r in replies) / 2000
    # a shuffle is wrong unless it lands on 2,1 (1 in 2): expect 0.3 / 2 = 0.15 (SE 0.008)
    assert set(replies) == {"2,1", "1,2"} and 0.12 < wrong < 0.18 and critic.requests == 2000


def test_rankings_parse_leniently_and_ranks_become_evenly_spaced_values():
    assert A.parse_ranking("3,1=2", 3) == [[2], [0, 1]]
    assert A.parse_ranking("The best is 2, then 9, then 2 again", 3) == [[1], [0, 2]]  # 9: no such; 2 once
    assert A.parse_ranking("no idea", 2) == [[0, 1]]
    assert A.rank_values([[2], [0, 1]]) == {2: 1.0, 0: 0.25, 1: 0.25}
    assert A.rank_values([[3], [1], [0], [2]]) == pytest.approx({3: 1.0, 1: 2 / 3, 0: 1 / 3, 2: 0.0})
    assert A.rank_values([[0]]) == {0: 0.5} and A.rank_values([[0, 1, 2]]) == {0: 0.5, 1: 0.5, 2: 0.5}


def test_critic_rank_asks_once_per_parent_in_one_batch_and_values_by_rank(tiny):
    trees = A.search_trees(tiny, ["3+4*2=", "7-2*3="], small(simulations=1), seed=0)
    items = [(t, c) for t in trees for c in t.children(t.root)]
    critic = Fixed("2,1")
    values = A.CriticRank(critic)(items)
    assert len(critic.batches) == 1 and len(critic.batches[0]) == 2
    assert critic.batches[0][0] == A.rank_request("3+4*2=", "", [n.text for n in trees[0].children(trees[0].root)])
    for t in trees:
        m = len(t.children(t.root))
        want = A.rank_values(A.parse_ranking("2,1", m))
        got = [v for (tt, _), v in zip(items, values) if tt is t]
        assert got == [want[i] for i in range(m)]


# -- pairs and off-policy DPO ---------------------------------------------------------------------


def hand_tree(tok) -> Tree:
    """Root with three first lines; q (MCTS) .9, .1, .5 and critic values 0, 1, .5 set by hand."""
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    tree = Tree("3+4*2=", enc("3+4*2="))
    for text, q, v in (("4*2=8\n", 0.9, 0.0), ("3+4=7\n", 0.1, 1.0), ("4*2=9\n", 0.5, 0.5)):
        ids = enc(text)
        node = tree.add(tree.root, ids=ids, text=text, logps=[-0.1 * (i + 1) for i in range(len(ids))])
        node.visits, node.value_sum, node.value, node.source = 1, q, v, "critic"
    return tree


def test_pairs_mix_mcts_and_critic_values_and_carry_the_logged_log_probs(tiny):
    tree = hand_tree(tiny.tokenizer)
    a, b, c = tree.nodes[1:]
    batch = A.Batch()
    A.tree_pairs(tree, batch, min_gap=0.3, alpha=1.0)  # q alone: a .9 > c .5 > b .1 -> (a,b) .8, (a,c) .4, (c,b) .4
    assert [(p[1], p[2]) for p in batch.pairs] == [(a.ids, b.ids), (a.ids, c.ids), (c.ids, b.ids)]
    assert batch.pairs[0][0] == tree.root.ids
    assert torch.equal(batch.ref_chosen[0], torch.tensor(a.logps)) and torch.equal(batch.ref_rejected[0],
                                                                                    torch.tensor(b.logps))
    mixed = A.Batch()  # alpha .5: a .45, b .55, c .5: no gap reaches .3
    A.tree_pairs(tree, mixed, min_gap=0.3, alpha=0.5)
    assert mixed.pairs == []
    critic_only = A.Batch()  # alpha 0: b 1 > c .5 > a 0
    A.tree_pairs(tree, critic_only, min_gap=0.5, alpha=0.0)
    assert [(p[1], p[2]) for p in critic_only.pairs] == [(b.ids, a.ids), (c.ids, a.ids), (b.ids, c.ids)]


@pytest.fixture(scope="module")
def collected(tiny):
    """Step pairs from a real search by a copy of the tiny policy (the behaviour policy), and a
    frozen copy of it taken at collection time."""
    behaviour = tiny.copy()
    batch, spent, trees = A.step_level_pairs(behaviour, ["3+4*2=", "7-2*3=", "5*1+2="], Fixed("1,2,3"),
                                             small(simulations=4, alpha=0.0, min_gap=0.1), seed=0)
    assert len(batch.pairs) >= 6 and spent.generations > 0
    return behaviour, behaviour.reference(), batch


def test_logged_reference_log_probs_give_the_dpo_loss_of_a_frozen_copy(collected):
    behaviour, frozen, batch = collected
    policy = behaviour.copy()
    with torch.no_grad():  # the policy has moved since collection, so the reference matters
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pad = policy.tokenizer.pad_token_id
    chosen, rejected = pair_logps(policy.model, pad, batch.pairs)
    logged = dpo_loss(chosen.replace(ref_logps=pad_rows(batch.ref_chosen, chosen.num_steps)),
                      rejected.replace(ref_logps=pad_rows(batch.ref_rejected, rejected.num_steps)), beta=0.5)
    with torch.no_grad():
        ref_c, ref_r = (s.logps for s in pair_logps(frozen.model, pad, batch.pairs))
    recomputed = dpo_loss(chosen.replace(ref_logps=ref_c), rejected.replace(ref_logps=ref_r), beta=0.5)
    assert torch.allclose(logged, recomputed, atol=1e-5)
    assert (logged - torch.log(torch.tensor(2.0))).abs().max() > 1e-3  # not the trivial policy == reference value


def test_off_policy_dpo_trains_as_dpo_against_a_frozen_copy(collected, tmp_path):
    behaviour, frozen, batch = collected
    cfg = OptimConfig(steps=3, batch_size=4, lr=1e-2, checkpoint_every=10**6)
    a, b = behaviour.copy(), behaviour.copy()
    A.offline_dpo(Run(tmp_path / "logged", "x = 1\n"), "dpo", a, batch, 0.5, cfg, seed=0)
    train_pairs(Run(tmp_path / "frozen", "x = 1\n"), "dpo", b, frozen, batch.pairs, dpo_loss, {"beta": 0.5}, cfg, 0,
                quiet=True)
    gap = max(float((pa - pb).detach().abs().max()) for pa, pb in zip(a.model.parameters(), b.model.parameters()))
    moved = min(float((pa - p0).detach().abs().max()) for pa, p0 in zip(a.model.parameters(),
                                                                       behaviour.model.parameters()))
    # float noise (the sampler's cached decoding vs a full forward) is ~1e-7 in the loss; Adam turns it into at
    # most ~1e-5 on parameters whose gradient is ~0 (the attention key bias), against steps of ~1e-2
    assert gap < 1e-4 and moved > 1e-2


def test_logged_log_probs_must_match_the_pairs(collected, tmp_path):
    behaviour, _, batch = collected
    cfg = OptimConfig(steps=1, batch_size=4, checkpoint_every=10**6)
    run = Run(tmp_path / "r", "x = 1\n")
    with pytest.raises(ValueError, match="ref_logps has 1 chosen rows"):
        train_pairs(run, "dpo", behaviour.copy(), None, batch.pairs, dpo_loss, {}, cfg, 0,
                    ref_logps=(batch.ref_chosen[:1], batch.ref_rejected))
    short = [r[:-1] for r in batch.ref_rejected]
    with pytest.raises(ValueError, match="rejected row 0 has shape"):
        train_pairs(run, "dpo", behaviour.copy(), None, batch.pairs, dpo_loss, {}, cfg, 0,
                    ref_logps=(batch.ref_chosen, short))
    with pytest.raises(ValueError, match="needs a reference policy or logged ref_logps"):
        train_pairs(run, "dpo", behaviour.copy(), None, batch.pairs, dpo_loss, {}, cfg, 0)
    with pytest.raises(ValueError, match="eval_pairs are measured against a reference policy"):
        train_pairs(run, "dpo", behaviour.copy(), None, batch.pairs, dpo_loss, {}, cfg, 0, eval_pairs=batch.pairs,
                    ref_logps=(batch.ref_chosen, batch.ref_rejected))


# -- the outcome-level baseline -------------------------------------------------------------------


class RightWrong:
    """A policy stub: per prompt it alternates the worked solution and a wrong answer."""

    device = torch.device("cpu")

    def __init__(self, tok):
        self.tokenizer, self.calls = tok, 0

    def encode(self, texts):
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def sample(self, prompt_ids, n=1, **_):
        self.calls += 1
        eos = self.tokenizer.eos_token_id
        responses = []
        for p in prompt_ids:
            q = self.decode(p)
            texts = [solve(q), "answer: 0"] * n
            responses += [self.encode([t])[0] + [eos] for t in texts[:n]]
        _, mask = pad_tokens(responses, 0)
        return Rollout([p for p in prompt_ids for _ in range(n)], responses, [True] * len(responses),
                       Steps(logps=-0.5 * mask.float(), mask=mask.float()))


def test_outcome_pairs_sample_until_the_budget_and_pair_right_with_wrong_answers():
    tok = arithmetic_tokenizer()
    stub = RightWrong(tok)
    prompt = "3+4*2="
    right, wrong = len(solve(prompt)) + 1, len("answer: 0") + 1  # char tokens, EOS included
    per_round = len(prompt) + right + wrong  # one prefill of the prompt for its 2 samples
    batch, spent = A.outcome_pairs(stub, [prompt], per_round + 1, seed=0)
    assert stub.calls == 2 and spent.forward_tokens == 2 * per_round and spent.generations == 4
    assert len(batch.pairs) == 4  # 2 right x 2 wrong
    assert all(check_answer(prompt, stub.decode(c)) and not check_answer(prompt, stub.decode(r))
               for _, c, r in batch.pairs)
    assert torch.equal(batch.ref_chosen[0], torch.full((right,), -0.5))


def test_each_iteration_takes_fresh_prompts_and_too_few_is_an_error():
    assert A.iteration_prompts(list("abcdef"), 2, 1) == ["c", "d"]
    with pytest.raises(ValueError, match="iteration 2 needs prompts 4..5, but only 5 training prompts"):
        A.iteration_prompts(list("abcde"), 2, 2)


# -- end to end -----------------------------------------------------------------------------------


def test_agent_q_and_the_baseline_run_end_to_end_at_equal_search_spend(tiny, tmp_path):
    prompts = ArithmeticTask(seed=0).prompts(4, "train")
    cfg = small(iterations=2, alpha=0.5, min_gap=0.2)
    policy = tiny.copy()  # untrained: the gold critic would tie its lines, so a fixed ranking makes the pairs
    log = A.train_agent_q(Run(tmp_path / "q", "x = 1\n"), policy, prompts, Fixed("1,2,3"), cfg)
    assert [sorted(r) for r in log] == [["forward_tokens", "generations", "pairs"]] * 2
    assert all(r["pairs"] > 0 and r["forward_tokens"] > 0 for r in log)
    assert any(not torch.equal(p, q) for p, q in zip(policy.model.parameters(), tiny.model.parameters()))
    base = A.train_outcome_dpo(Run(tmp_path / "o", "x = 1\n"), tiny.copy(), prompts,
                               [r["forward_tokens"] for r in log], cfg)
    assert all(b["forward_tokens"] >= r["forward_tokens"] for b, r in zip(base, log))


def test_lab_search_follows_the_most_visited_path_and_completes_it(tiny):
    task = ArithmeticTask(seed=0)
    setup = TaskSetup("arithmetic", tiny, task.prompts(3, "test"), {"task": task, "check": check_answer,
                                                                    "max_new_tokens": 24})
    out = A.LAB_METHOD.search(setup, tiny, 2, 0)
    assert 0.0 <= out["gold"] <= 1.0 and out["generations"] >= 3 * 4
    tree = out["tree"]
    end = A.most_visited(tree)
    assert end.terminal and tree.path(end)[0].visits == max(n.visits for n in tree.children(tree.root))
    assert A.LAB_METHOD.name == "agent_q" and A.LAB_METHOD.prepare is A.lab_prepare


# -- the claim --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_claim_step_level_dpo_on_mcts_pairs_beats_outcome_dpo_at_equal_sampling(arith_prover, tmp_path):
    """Agent Q's claim at small budget: DPO on step-level pairs from MCTS (Q = 0.5 Q_mcts + 0.5
    Q_critic, a simulated critic that shuffles 30% of its rankings) beats DPO on outcome-level
    pairs (right answer over wrong answer, whole responses) on gold.

    Both arms start from the session's weak prover and run 2 iterations on fresh train problems
    (256 per iteration, 4 MCTS simulations each), each policy the next iteration's reference through
    logged log-probs; both use DPO + the chosen response's NLL (RPO), lr 3e-4, 80 steps of 32 pairs.
    (The first run used plain DPO, 64 problems, 8 simulations, lr 1e-3, 40 steps: both arms collapsed,
    gold 0.287 -> 0.004-0.040, Agent Q - outcome = -0.0205, SE 0.0036; the settings were then chosen
    on other train problems (seeds 7, 8) and other test problems before this run.)
    Equal compute: in each iteration the baseline samples whole responses until it has spent at
    least the policy forward tokens (prefill + sampled) that Agent Q's search spent in the same
    iteration (its rollouts included); neither runs a reference model; both train with the same
    DPO steps, batch size, lr and beta. 3 seeds (disjoint train problems, critic and sampling seeds).
    Gold: exact answers at temperature 1, 4 samples per problem, on 500 test problems.
    Threshold (fixed before the first run): per test problem, the difference Agent Q - baseline
    averaged over the 3 seeds; its mean over the 500 problems must be at least 2 standard errors
    (paired by problem) above 0.
    """
    cfg = A.AgentQConfig()
    task = ArithmeticTask(seed=0)
    seeds = (0, 1, 2)
    train = task.prompts(cfg.prompts * cfg.iterations * len(seeds), "train")
    test = task.prompts(500, "test")
    per = cfg.prompts * cfg.iterations
    diffs, report = [0.0] * len(test), []
    base = A.gold_per_prompt(arith_prover, test, seed=99)
    for s in seeds:
        mine = train[s * per : (s + 1) * per]
        agent = copy.deepcopy(arith_prover)
        log = A.train_agent_q(Run(tmp_path / f"q{s}", "x = 1\n"), agent, mine, A.simulated_critic(0.3, s), cfg, s)
        outcome = copy.deepcopy(arith_prover)
        blog = A.train_outcome_dpo(Run(tmp_path / f"o{s}", "x = 1\n"), outcome, mine,
                                   [r["forward_tokens"] for r in log], cfg, s)
        assert all(b["forward_tokens"] >= r["forward_tokens"] for b, r in zip(blog, log))
        g_q = A.gold_per_prompt(agent, test, seed=99)
        g_o = A.gold_per_prompt(outcome, test, seed=99)
        diffs = [d + (q - o) / len(seeds) for d, q, o in zip(diffs, g_q, g_o)]
        report.append((s, statistics.mean(g_q), statistics.mean(g_o), log, blog))
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    print(f"\nprover {statistics.mean(base):.3f}")
    for s, q, o, log, blog in report:
        print(f"seed {s}: agent_q {q:.3f} outcome_dpo {o:.3f} | pairs {[r['pairs'] for r in log]} vs "
              f"{[r['pairs'] for r in blog]} | forward tokens {[r['forward_tokens'] for r in log]} vs "
              f"{[r['forward_tokens'] for r in blog]}")
    print(f"agent_q - outcome_dpo: {mean:+.4f} (SE {se:.4f}, {mean / se:.2f} SE)")
    assert mean >= 2 * se
