"""The epidemic ABM with LLM archetypes (AgentTorch): straight-through draws, prompts and replies, the three
behaviour sources, gradient calibration, and the paper's Table 1 ordering as a slow claim test."""

import math

import pytest
import torch

from rlxf.agents.abm import (GROUPS, ABMConfig, AgentBehaviour, ArchetypeBehaviour, HeuristicBehaviour, calibrate,
                             compare, forecast, make_population, mock_llm, parse_probability, render_prompt,
                             simulate, straight_through_bernoulli, true_isolation)


class Fixed:
    """A TextModel that always gives the same reply, counting requests."""

    def __init__(self, reply):
        self.reply, self.requests = reply, 0

    def complete(self, requests):
        self.requests += len(requests)
        return [self.reply] * len(requests)


def test_straight_through_bernoulli_samples_zero_one_at_rate_p_with_the_gradient_of_p():
    p = torch.full((20_000,), 0.3, requires_grad=True)
    x = straight_through_bernoulli(p, torch.Generator().manual_seed(0))
    assert set(x.detach().unique().tolist()) <= {0.0, 1.0}
    assert abs(float(x.detach().mean()) - 0.3) < 0.015  # 4.6 binomial SEs
    w = torch.arange(20_000.0)
    (x * w).sum().backward()
    assert torch.equal(p.grad, w)


def test_parse_probability_takes_the_first_number_in_unit_interval_and_never_raises():
    assert parse_probability("0.42") == 0.42
    assert parse_probability("I would say .3, maybe 0.5.") == 0.3
    assert parse_probability("1") == 1.0
    assert parse_probability("about 10 or 0.25") == 0.25
    assert parse_probability("no idea") is None
    assert parse_probability("") is None


def test_mock_llm_reads_the_prompt_back_and_answers_the_true_probability_with_logit_noise():
    prompt = render_prompt(GROUPS.index(("65+", "remote worker")), week=3, cases_per_10k=120.0)
    exact = mock_llm(noise=0.0).complete([prompt])[0]
    want = 1 / (1 + math.exp(-(-2.2 + 0.5 + 0.5 * math.log1p(120.0))))
    assert float(exact) == pytest.approx(want, abs=1e-4)
    assert float(exact) == pytest.approx(true_isolation(7, 120.0), abs=1e-4)
    noisy = [parse_probability(r) for r in mock_llm(noise=0.5, seed=1).complete([prompt] * 400)]
    logits = torch.tensor([math.log(p / (1 - p)) for p in noisy])
    assert float(logits.std()) == pytest.approx(0.5, abs=0.06)
    assert float(logits.mean()) == pytest.approx(math.log(want / (1 - want)), abs=0.08)  # 3 SEs
    assert mock_llm(noise=0.0).complete(["what is the weather?"]) == ["I cannot say."]


def test_true_behaviour_isolates_more_with_cases_and_with_age():
    assert true_isolation(0, 500.0) > true_isolation(0, 10.0)
    assert true_isolation(GROUPS.index(("65+", "essential worker")), 50.0) > true_isolation(0, 50.0)


def test_archetypes_ask_m_times_per_group_and_broadcast_the_mean_to_the_group():
    pop = make_population(500, 6, torch.Generator().manual_seed(0))
    replies = iter(["0.1", "0.2", "0.6"] * len(GROUPS))

    class Cycle(Fixed):
        def complete(self, requests):
            self.requests += len(requests)
            return [next(replies) for _ in requests]

    llm = Cycle(None)
    arch = ArchetypeBehaviour(llm, m=3)
    p = arch.probs(pop, week=0, cases_per_10k=50.0)
    assert arch.queries == llm.requests == 3 * len(GROUPS)
    assert torch.allclose(p, torch.full((500,), 0.3))
    fallback = ArchetypeBehaviour(Fixed("no idea"), m=2, fallback=0.05).probs(pop, 0, 50.0)
    assert torch.allclose(fallback, torch.full((500,), 0.05))


def test_llm_as_agent_asks_once_per_agent_and_the_heuristic_never_asks():
    pop = make_population(300, 6, torch.Generator().manual_seed(0))
    agent = AgentBehaviour(mock_llm(noise=0.0))
    p = agent.probs(pop, 2, 80.0)
    assert agent.queries == 300
    want = torch.tensor([true_isolation(int(g), 80.0) for g in pop.group])
    assert torch.allclose(p, want, atol=1e-4)
    heur = HeuristicBehaviour(0.2)
    assert torch.equal(heur.probs(pop, 0, 80.0), torch.full((300,), 0.2)) and heur.queries == 0


def test_population_graph_is_symmetric_with_the_asked_mean_degree():
    pop = make_population(2000, 8, torch.Generator().manual_seed(0))
    dense = pop.adjacency.to_dense()
    assert torch.equal(dense, dense.T)
    assert float(dense.sum(1).mean()) == pytest.approx(8.0, abs=0.05)
    assert int(pop.group.max()) < len(GROUPS) and len(pop.group.unique()) == len(GROUPS)


def test_simulation_spreads_only_with_transmission_and_contact_and_is_differentiable_in_beta():
    cfg = ABMConfig(n_agents=2000)
    pop = make_population(2000, cfg.degree, torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert float(simulate(pop, HeuristicBehaviour(0.0), torch.tensor(0.0), cfg, 5, g()).sum()) == 0.0
    assert float(simulate(pop, HeuristicBehaviour(1.0), torch.tensor(2.0), cfg, 5, g()).sum()) == 0.0
    beta = torch.tensor(2.0, requires_grad=True)
    weekly = simulate(pop, HeuristicBehaviour(0.1), beta, cfg, 5, g())
    assert float(weekly[0].detach()) > 0
    weekly.sum().backward()
    assert float(beta.grad) > 0  # more transmission, more infections
    low = simulate(pop, HeuristicBehaviour(0.1), torch.tensor(1.0), cfg, 5, g())
    assert float(low.sum()) < float(weekly.detach().sum())


def test_calibration_recovers_the_transmission_rate_by_gradient_through_the_simulator():
    cfg = ABMConfig(n_agents=2000, beta=2.0, beta_init=1.0, calibration_steps=15)
    pop = make_population(2000, cfg.degree, torch.Generator().manual_seed(0))
    with torch.no_grad():
        observed = simulate(pop, HeuristicBehaviour(0.2), torch.tensor(2.0), cfg, 6, torch.Generator().manual_seed(9))
    beta = calibrate(pop, HeuristicBehaviour(0.2), observed, cfg, seed=0)
    assert beta == pytest.approx(2.0, rel=0.15)  # from 1.0: the initial guess is 50% off


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="train_weeks"):
        ABMConfig(weeks=6, train_weeks=6)
    with pytest.raises(ValueError, match="heuristic_isolation"):
        ABMConfig(heuristic_isolation=1.5)
    with pytest.raises(ValueError, match="unknown ABM variant 'llm'"):
        forecast("llm", ABMConfig(n_agents=100), 0)


CLAIM_SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def table():
    """Table 1 of the paper at toy scale: every variant forecasts each seed's world (paired by seed)."""
    return compare(ABMConfig(), CLAIM_SEEDS)


def paired_log_gap(table, worse, better):
    d = torch.tensor([math.log(w.mse) - math.log(b.mse) for w, b in zip(table[worse], table[better])])
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


@pytest.mark.slow
def test_archetypes_forecast_better_than_heuristic_agents_at_a_tenth_of_the_queries(table):
    """Claim (Table 1): LLM archetypes (8 groups x 3 noisy queries, broadcast to 10^4 agents) forecast
    infections better than a fixed heuristic at the same N, with LM queries per week under 10% of the
    LLM-as-agent budget (300). Threshold, set before the first run: the paired difference of log forecast
    MSE (heuristic - archetype) over 5 held-out seeds (0-4) is >= 2 SE. Both calibrate beta with the same
    gradient steps (20) on the same 6 observed weeks and forecast the same 6."""
    gap, se = paired_log_gap(table, "heuristic", "archetype")
    assert gap >= 2 * se and gap > 0, (gap, se)
    assert table["archetype"][0].queries_per_week <= 0.1 * table["agent"][0].queries_per_week


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured on seeds 0-4: log MSE gap (agent - heuristic) +0.035, SE 0.515; "
                   "mean forecast MSE heuristic 22172 vs LLM-as-agent 22061 (archetypes 1970): the fixed rule's "
                   "bias (it cannot follow the behaviour's response to cases) is as large as the subsample's noise")
def test_heuristic_agents_at_full_scale_forecast_better_than_llm_as_agent_on_a_subsample(table):
    """Claim (Table 1): population-scale heuristics beat 300 individually prompted agents scaled up.
    Threshold, set before the first run: the paired difference of log forecast MSE (agent - heuristic)
    over 5 held-out seeds (0-4) is >= 2 SE, same calibration and forecast weeks for both."""
    gap, se = paired_log_gap(table, "agent", "heuristic")
    assert gap >= 2 * se and gap > 0, (gap, se)
