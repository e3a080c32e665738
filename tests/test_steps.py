"""The per-step tensor type: reductions by hand, padding never read, batching helpers."""

import math

import pytest
import torch

from rlxf.core.steps import Steps


def _example():
    nan = float("nan")
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.25, nan, nan]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-0.5, nan, nan]])
    rewards = torch.tensor([[1.0, 0.0, 2.0], [3.0, nan, nan]])
    return Steps(logps=logps, mask=mask, ref_logps=ref, rewards=rewards)


def test_sum_mean_lengths_ignore_padding_even_nan():
    s = _example()
    assert s.sum().tolist() == [-3.5, -0.25]
    assert s.mean().tolist() == pytest.approx([-3.5 / 3, -0.25])
    assert s.lengths().tolist() == [3, 1]
    assert s.sum("rewards").tolist() == [3.0, 3.0]


def test_logratio_and_sequence_logratio():
    s = _example()
    assert s.logratio()[0].tolist() == pytest.approx([0.5, -1.0, 0.5])
    assert s.logratio()[1].tolist() == pytest.approx([0.25, 0.0, 0.0])
    assert s.seq_logratio().tolist() == pytest.approx([0.0, 0.25])


def test_discounted_sum_counts_from_first_real_step():
    s = _example()
    g = 0.9
    assert s.discounted_sum("rewards", g)[0].item() == pytest.approx(1.0 + 0 * g + 2.0 * g**2)
    # a left-padded row discounts from its first real step, not from column 0
    left = Steps(logps=torch.zeros(1, 3), mask=torch.tensor([[0, 1, 1]]), rewards=torch.tensor([[9.0, 1.0, 1.0]]))
    assert left.discounted_sum("rewards", g).item() == pytest.approx(1.0 + g)


def test_returns_to_go_by_hand():
    s = _example()
    g = 0.5
    rtg = s.returns_to_go("rewards", g)
    assert rtg[0].tolist() == pytest.approx([1 + 0.5 * 0 + 0.25 * 2, 0 + 0.5 * 2, 2.0])
    assert rtg[1].tolist() == pytest.approx([3.0, 0.0, 0.0])


def test_shape_mismatch_and_missing_field_are_clear_errors():
    with pytest.raises(ValueError, match="ref_logps"):
        Steps(logps=torch.zeros(2, 3), mask=torch.ones(2, 3), ref_logps=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="values is not set"):
        Steps(logps=torch.zeros(1, 2), mask=torch.ones(1, 2)).sum("values")


def test_cat_pads_and_index_selects():
    a = Steps(logps=torch.ones(1, 2), mask=torch.ones(1, 2))
    b = Steps(logps=torch.ones(2, 4), mask=torch.ones(2, 4))
    c = Steps.cat([a, b])
    assert c.logps.shape == (3, 4)
    assert c.lengths().tolist() == [2, 4, 4]
    assert c.sum().tolist() == [2, 4, 4]
    assert c[1:].batch_size == 2


def test_gradient_flows_through_sum_not_through_padding():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    s = Steps(logps=logps, mask=torch.tensor([[1, 0]]))
    s.sum().sum().backward()
    assert logps.grad.tolist() == [[1.0, 0.0]]
    assert not math.isnan(s.mean().item())
