"""``run.strategy = "fsdp"``: the shared loop with torch's fully_shard on a 2-process gloo group (no Ray).

Tolerance, fixed before the first run: max |difference| over every logged metric and every final
weight <= 1e-5 against one process, fp32 tiny Llama, same global batch and seed. FSDP's
reduce-scatter sums the same numbers as DDP's all-reduce, in another order.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist

from rlxf.algorithms.loop import OptimConfig, optimise, trainable_state
from rlxf.core.cluster import ScaleSettings
from rlxf.core.runs import Run
from rlxf.executors.learner import LearnerError, check_fsdp_batches, gather_weights
from test_learner import TOL, _in_group, _tiny

FSDP = ScaleSettings(executor="ray", learner_workers=2, strategy="fsdp")
WORDS = "a b c d e f g h".split()


def _stage(run_dir, scale: ScaleSettings, fail_at: int = -1):
    """Next-token NLL of short responses; each micro-batch returns its share of the global mean."""
    policy = _tiny()
    rows = [(policy.encode([f"{a} {b}"])[0], policy.encode([f"{b} {a} {a}"])[0]) for a in WORDS for b in WORDS]

    def make_batch(step: int) -> list:
        if step == fail_at:
            raise RuntimeError("interrupted")
        g = torch.Generator().manual_seed(step)
        return [rows[i] for i in torch.randperm(len(rows), generator=g)[:8].tolist()]

    def loss_fn(micro: list, batch: list):
        s = policy.steps([p for p, _ in micro], [r for _, r in micro])
        loss = -(s.logps * s.mask).sum() / len(batch)
        return loss, {"loss": loss.item()}

    cfg = OptimConfig(steps=4, batch_size=8, micro_batch_size=2, lr=1e-2, checkpoint_every=2)
    return Run(run_dir, "fsdp", scale=scale), "lm", policy.model, cfg, make_batch, loss_fn


def _job(run_dir, rank: int) -> dict:
    torch.set_num_threads(1)
    try:  # the first attempt stops at step 3, after the checkpoint of step 1
        optimise(*_stage(run_dir, FSDP, fail_at=3), quiet=True)
    except RuntimeError:
        pass
    dist.barrier()
    run, stage, model, *rest = _stage(run_dir, FSDP)
    start = optimise(run, stage, model, *rest, quiet=True)
    return {"start": start, "weights": gather_weights(trainable_state(model)),
            "sharded": type(next(model.parameters())).__name__}


def test_fsdp_on_two_ranks_equals_one_process_and_resumes(tmp_path):
    """Within 1e-5 (module docstring); the rerun resumes at step 2 from a checkpoint gathered whole."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, stage, model, cfg, make_batch, loss_fn = _stage(tmp_path / "one", ScaleSettings())
        optimise(run, stage, model, cfg, make_batch, loss_fn, quiet=True)
    finally:
        torch.set_num_threads(threads)
    got = _in_group(tmp_path, functools.partial(_job, tmp_path / "two"))
    two = Run(tmp_path / "two", "fsdp")
    assert [r["step"] for r in two.metrics("lm")] == list(range(4))
    for a, b in zip(run.metrics("lm"), two.metrics("lm")):
        assert max(abs(a[k] - b[k]) for k in a if k != "stage") <= TOL, (a, b)
    want = model.state_dict()
    for rank in (0, 1):
        assert got[rank]["start"] == 2 and got[rank]["sharded"] == "DTensor"
        assert max(float((want[k] - got[rank]["weights"][k]).abs().max()) for k in want) <= TOL
    assert any(not torch.equal(want[k], _tiny().model.state_dict()[k]) for k in want)  # it trained


@pytest.mark.parametrize("batch, micro, ok", [(8, 2, True), (8, 0, True), (8, 4, True), (7, 2, False),
                                              (12, 4, False), (4, 8, True)])
def test_fsdp_needs_the_same_micro_batch_count_on_every_rank(batch, micro, ok):
    if ok:
        check_fsdp_batches(batch, micro, 2)
    else:
        with pytest.raises(LearnerError, match=rf"batch size \({batch}\) to split evenly over 2 learner workers"):
            check_fsdp_batches(batch, micro, 2)


def test_a_checkpoint_resumes_only_with_the_strategy_that_wrote_it(tmp_path):
    run, stage, model, cfg, make_batch, loss_fn = _stage(tmp_path / "r", ScaleSettings())
    run.save_checkpoint(stage, 1, {"model": {}, "optimizer_full": {}})
    with pytest.raises(LearnerError, match=r"written with fsdp; resume it with the same run.strategy \(now 'ddp'\)"):
        optimise(run, stage, model, cfg, make_batch, loss_fn, quiet=True)


def test_online_methods_and_offline_control_refuse_what_they_cannot_scale(tmp_path):
    from rlxf.algorithms.online.controller import OnlineConfig, OnlineError, train_online
    from rlxf.algorithms.control.iql import IQLConfig, train_iql
    from rlxf.core.config import ConfigError

    policy = _tiny()
    with pytest.raises(OnlineError, match='run.strategy = "fsdp" shards the policy'):
        train_online(Run(tmp_path / "o", "cfg", scale=FSDP), "online", policy, policy.reference(), [[4]], None,
                     OnlineConfig(method="grpo"), seed=0)
    from rlxf.data.transitions import Episode, TransitionDataset

    episode = Episode(torch.zeros(3, 2), torch.tensor([0, 1]), torch.zeros(2), True, False)
    with pytest.raises(ConfigError, match="stage iql runs in one learner process only"):
        train_iql(TransitionDataset([episode]), Run(tmp_path / "c", "cfg", scale=ScaleSettings(executor="ray", learner_workers=2)),
                  IQLConfig())
