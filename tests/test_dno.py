"""The DNO online method optimises ``dno_loss``: soft labels from within-group win rates, with
the rollout policy pi_t as the reference (Rosset et al., "Direct Nash Optimization")."""

from __future__ import annotations

import pytest
import torch

from rlxf.algorithms.online.controller import Batch, Context, OnlineConfig, Reducer, build_method
from rlxf.core.steps import Steps
from rlxf.objectives.game import dno_loss
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.rewards.scoring import Samples


def _batch(policy: LanguagePolicy, scores: list[float], k: int) -> Batch:
    """A scored rollout of ``len(scores) // k`` groups whose behaviour log-probs differ from the
    current policy's (as after an earlier update), so the DNO margins are not zero."""
    words = ["a", "b", "c", "d"]
    n = len(scores)
    prompts = policy.encode([words[(i // k) % 4] for i in range(n)])
    responses = policy.encode_responses([" ".join(words[: 1 + i % 3]) for i in range(n)])
    with torch.no_grad():
        cur = policy.steps(prompts, responses)
    g = torch.Generator().manual_seed(0)
    old = cur.logps + 0.3 * torch.randn(cur.logps.shape, generator=g)
    steps = Steps(logps=old, mask=cur.mask, old_logps=old, ref_logps=cur.logps - 0.1)
    return Batch(Samples(prompts, responses, [True] * n, k), steps, torch.tensor(scores), {},
                 torch.zeros_like(old), {})


def test_dno_method_loss_is_dno_loss_with_win_rate_soft_labels():
    """Hand-built batch of two groups of 3: the method's loss equals the mean over groups of
    ``dno_loss(best, worst, sigma(w_best - w_worst), eta=beta)``, w = within-group Bradley-Terry
    win rate of the scores. Before the fix DNO used a hard-label DPO loss, which differs here."""
    tok = tiny_tokenizer(["a", "b", "c", "d"])
    policy = LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, seed=0), tok)
    scores, k, beta = [1.0, -0.5, 0.2, 0.0, 2.0, 0.5], 3, 0.5
    batch = _batch(policy, scores, k)
    cfg = OnlineConfig(method="dno", method_args={"beta": beta}, samples_per_prompt=k)
    method = build_method(cfg)
    ctx = Context(cfg, policy, policy, 0.0, "sum")
    method.prepare(batch, ctx)
    reducer = Reducer("sum", len(scores), float(batch.steps.mask.sum()), batch.steps.num_steps)
    reducer.groups = [0, 1]
    loss, metrics, _ = method.loss(batch, [0, 1], reducer, ctx)

    s = torch.tensor(scores).view(2, k)
    win = (torch.sigmoid(s[:, :, None] - s[:, None, :]).sum(-1) - 0.5) / (k - 1)
    want = 0.0
    for grp in range(2):
        best, worst = grp * k + int(s[grp].argmax()), grp * k + int(s[grp].argmin())
        p = torch.sigmoid(win.view(-1)[best] - win.view(-1)[worst]).view(1)
        pair = batch.policy_steps(policy, [best, worst])
        want = want + dno_loss(pair[:1], pair[1:], p, beta).sum()
    assert loss.item() == pytest.approx(want.item() / 2, rel=1e-5)
    assert metrics["loss"] == pytest.approx(loss.item())
    # and the gradient flows into the policy
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.model.parameters())
