"""A learner worker killed mid-run (SIGKILL, as an out-of-memory kill or a lost node would): the run
stops with an error that names the worker and the kept checkpoint, and the rerun resumes from that
checkpoint to the same weights as a run that was never interrupted.

Tolerance, fixed before the first run: max |difference| of the final weights and of every metric
against one uninterrupted process <= 1e-5 (the 2-worker sums are taken in another order).
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.cluster import ScaleSettings
from rlxf.core.runs import Run
from rlxf.executors.learner import LearnerError, world

pytestmark = pytest.mark.slow
TOL = 1e-5
DP = ScaleSettings(executor="ray", learner_workers=2, learner_threads=1)


@pytest.fixture(scope="module")
def ray_cluster():
    import cloudpickle

    from rlxf.core.cluster import connect_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    ray = connect_ray(ScaleSettings(executor="ray", num_cpus=2))
    yield ray
    ray.shutdown()


def _stage(marker: str | None = None):
    """Least squares on a linear model; rank 1 kills its own process at step 4 while ``marker`` exists."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    w_true = torch.tensor([[1.0, -2.0, 0.5]])

    def make_batch(step: int) -> list:
        if marker and step == 4 and world()[0] == 1 and os.path.exists(marker):
            os.unlink(marker)
            os.kill(os.getpid(), signal.SIGKILL)
        g = torch.Generator().manual_seed(step)
        return list(torch.randn(6, 3, generator=g))

    def loss_fn(micro: list, batch: list):
        x = torch.stack(micro)
        loss = ((model(x) - x @ w_true.T) ** 2).sum() / len(batch)
        return loss, {"loss": loss.item()}

    return model, OptimConfig(steps=7, batch_size=6, micro_batch_size=2, lr=0.05, checkpoint_every=2), make_batch, loss_fn


def test_a_killed_learner_worker_stops_the_run_and_the_rerun_resumes_exactly(tmp_path, ray_cluster):
    marker = tmp_path / "kill-rank-1"
    marker.touch()
    run = Run(tmp_path / "two", "toy", scale=DP)
    model, cfg, make_batch, loss_fn = _stage(str(marker))
    with pytest.raises(LearnerError) as err:
        train(run, "toy", model, cfg, make_batch, loss_fn, quiet=True)
    message = str(err.value)
    assert "learner worker 1" in message and "checkpoint of step 3" in message and "again to resume" in message
    assert not marker.exists()  # the kill happened
    assert run.load_checkpoint("toy", truncate=False)[0] == 3  # the last checkpoint is kept

    model, cfg, make_batch, loss_fn = _stage()  # the rerun: a fresh model, the same run directory
    train(Run(tmp_path / "two", "toy", scale=DP), "toy", model, cfg, make_batch, loss_fn, quiet=True)

    one = Run(tmp_path / "one", "toy")
    ref, cfg, make_batch, loss_fn = _stage()
    train(one, "toy", ref, cfg, make_batch, loss_fn, quiet=True)
    rows1, rows2 = one.metrics("toy"), run.metrics("toy")
    assert [r["step"] for r in rows2] == list(range(7))  # each step once: nothing lost, nothing twice
    for a, b in zip(rows1, rows2):
        assert max(abs(a[k] - b[k]) for k in a if k != "stage") <= TOL, (a, b)
    for p, q in zip(ref.parameters(), model.parameters()):
        assert (p.detach() - q.detach()).abs().max() <= TOL
