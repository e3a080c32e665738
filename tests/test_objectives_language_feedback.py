"""Chain of Hindsight, SuperHF and ILF: data transforms on toy token ids, losses against plain ``math``."""

from __future__ import annotations

import pytest
import torch

from rlxf.core.steps import Steps
from rlxf.objectives import language_feedback as L

NAN = float("nan")


def encode(text):
    """A toy character tokenizer."""
    return [ord(ch) for ch in text]


def make(logps, ref=None, pad_extra=0):
    def grid(rows):
        return [[NAN if v is None else v for v in r] + [NAN] * pad_extra for r in rows]

    mask = [[0.0 if v is None else 1.0 for v in r] + [0.0] * pad_extra for r in logps]
    return Steps(
        logps=torch.tensor(grid(logps), dtype=torch.float64, requires_grad=True),
        mask=torch.tensor(mask, dtype=torch.float64),
        ref_logps=None if ref is None else torch.tensor(grid(ref), dtype=torch.float64),
    )


# -- Chain of Hindsight ------------------------------------------------------------------


def test_chain_of_hindsight_ids_and_mask():
    ids, mask = L.chain_of_hindsight([1, 2], [([10], [11, 12]), ([20, 21], [22])])
    assert ids == [1, 2, 10, 11, 12, 20, 21, 22]
    assert mask == [0, 0, 0, 1, 1, 0, 0, 1]


@pytest.mark.parametrize("chosen_first", [True, False])
def test_chain_of_hindsight_pair_masks_only_outputs(chosen_first):
    ids, mask = L.chain_of_hindsight_pair("Q?", "yes", "no", encode, good="Good:", bad="Bad:", chosen_first=chosen_first)
    text = "".join(map(chr, ids))
    trained = "".join(chr(t) for t, m in zip(ids, mask) if m)
    if chosen_first:
        assert text == "Q? Good: yes Bad: no"
        assert trained == " yes no"
    else:
        assert text == "Q? Bad: no Good: yes"
        assert trained == " no yes"
    assert len(ids) == len(mask)


def test_chain_of_hindsight_loss_by_hand():
    # next-token log-probs for ids[1:], masked by loss_mask[1:]
    _, mask = L.chain_of_hindsight([1], [([5], [6, 7])])  # mask [0, 0, 1, 1]
    lp = [-0.9, -0.4, -1.6]
    steps = Steps(logps=torch.tensor([lp], dtype=torch.float64), mask=torch.tensor([mask[1:]], dtype=torch.float64))
    assert L.chain_of_hindsight_loss(steps).item() == pytest.approx((0.4 + 1.6) / 2)


# -- SuperHF ------------------------------------------------------------------------------


def test_superhf_select_top_k():
    rewards = torch.tensor([[0.1, 0.9, 0.5, -1.0], [2.0, 1.0, 3.0, 0.0]])
    assert L.superhf_select(rewards).tolist() == [[1], [2]]
    assert L.superhf_select(rewards, k=2).tolist() == [[1, 2], [2, 0]]


LP = [[-1.0, -0.5, -2.0], [-0.3, -0.7, None]]
REF = [[-1.2, -0.4, -2.5], [-0.5, -0.9, None]]


def test_superhf_loss_by_hand():
    c = 0.35
    exp = []
    for lp, rf in zip(LP, REF):
        real = [(a, b) for a, b in zip(lp, rf) if a is not None]
        nll = -sum(a for a, _ in real) / len(real)
        kl = sum(0.5 * (a - b) ** 2 for a, b in real) / len(real)
        exp.append(nll + c * kl)
    got = L.superhf_loss(make(LP, REF), kl_coef=c)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(exp, abs=1e-12)


def test_superhf_loss_with_exact_token_kl():
    token_kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, NAN]], dtype=torch.float64)
    got = L.superhf_loss(make(LP), kl_coef=0.5, token_kl=token_kl)
    exp = [(1.0 + 0.5 + 2.0) / 3 + 0.5 * (0.6 / 3), (0.3 + 0.7) / 2 + 0.5 * (0.9 / 2)]
    assert got.tolist() == pytest.approx(exp, abs=1e-12)


def test_superhf_padding_invariance_and_gradient_sign():
    a = make(LP, REF)
    la = L.superhf_loss(a)
    assert torch.allclose(la, L.superhf_loss(make(LP, REF, pad_extra=3)))
    la.sum().backward()
    # near the reference the NLL dominates: raising the kept sample's likelihood lowers the loss
    assert (a.logps.grad[a.mask > 0] < 0).all() and (a.logps.grad[a.mask == 0] == 0).all()


def test_superhf_kl_term_pulls_towards_reference():
    # drifted far above the reference, the KL term outweighs the NLL and pushes log pi back down
    s = make([[-0.1]], [[-5.0]])
    L.superhf_loss(s, kl_coef=1.0).sum().backward()
    assert s.logps.grad.item() == pytest.approx(-1.0 + (-0.1 + 5.0))


# -- ILF -------------------------------------------------------------------------------------


def test_ilf_select_uses_the_scoring_function():
    contexts = [("x1", "draft", "be shorter"), ("x2", "draft", "mention cats")]
    refinements = [["a long long answer", "short"], ["dogs", "cats and dogs", "cats"]]

    def score(ctx, ref):
        feedback = ctx[2]
        return -len(ref) if "shorter" in feedback else float("cats" in ref) - 0.01 * len(ref)

    assert L.ilf_select(contexts, refinements, score) == [1, 2]


def test_ilf_select_errors_name_the_problem():
    with pytest.raises(ValueError, match="example 1 has no refinements"):
        L.ilf_select([0, 1], [["a"], []], lambda c, r: 0.0)
    with pytest.raises(ValueError, match="2 contexts but 1"):
        L.ilf_select([0, 1], [["a"]], lambda c, r: 0.0)


def test_ilf_refinement_prompt_contains_all_parts():
    text = L.ilf_refinement_prompt("Summarise X.", "X is Y.", "Too vague.")
    assert text.index("Summarise X.") < text.index("X is Y.") < text.index("Too vague.")


def test_ilf_loss_by_hand_and_padding():
    got = L.ilf_loss(make(LP))
    assert got.tolist() == pytest.approx([(1.0 + 0.5 + 2.0) / 3, (0.3 + 0.7) / 2])
    assert torch.allclose(got, L.ilf_loss(make(LP, pad_extra=2)))
