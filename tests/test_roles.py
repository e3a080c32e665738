"""The capable-LM role interface: a simulated role answers from gold and errs at its set rate; an LM
role sends each request through the model and returns its decoded reply."""

from __future__ import annotations



import pytest

from rlxf.labelers.roles import LMRole, SimulatedRole


def test_simulated_role_errs_at_its_set_rate_and_is_seeded():
    """Over 4000 requests the wrong-reply share is within 4 standard errors of ``error`` (0.25:
    SE 0.0068), the right replies are exactly ``right(request)``, and one seed repeats itself."""
    role = SimulatedRole(right=lambda r: r.upper(), wrong=lambda r, ok, rng: ok + "!", error=0.25, seed=3)
    requests = [f"q{i}" for i in range(4000)]
    replies = role.complete(requests)
    wrong = [rep.endswith("!") for rep in replies]
    assert abs(sum(wrong) / len(wrong) - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert all(rep == req.upper() for req, rep, w in zip(requests, replies, wrong) if not w)
    again = SimulatedRole(right=lambda r: r.upper(), wrong=lambda r, ok, rng: ok + "!", error=0.25, seed=3)
    assert again.complete(requests) == replies
    assert (role.calls, role.requests) == (1, 4000)


def test_simulated_role_with_no_error_is_gold_and_bad_rates_are_refused():
    role = SimulatedRole(right=lambda r: "yes", wrong=lambda r, ok, rng: "no", error=0.0)
    assert role.complete(["a", "b"]) == ["yes", "yes"]
    with pytest.raises(ValueError, match="error must be in"):
        SimulatedRole(right=str, wrong=lambda r, ok, rng: ok, error=1.5)


def test_lm_role_replies_with_the_model_greedy_continuation(tiny_policy):
    """Without a chat template the request is the bare prompt, and at temperature 0 the reply is the
    policy's own greedy continuation of it."""
    import torch

    role = LMRole(tiny_policy, max_new_tokens=5, chat=False)
    replies = role.complete(["a b", "c"])
    ids = tiny_policy.encode(["a b", "c"])
    ro = tiny_policy.sample(ids, n=1, max_new_tokens=5, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert replies == [tiny_policy.decode(r) for r in ro.response_ids]
    assert role.requests == 2 and role.generated_tokens == sum(len(r) for r in ro.response_ids)
