"""The data-parallel learner: its collectives on a 2-process gloo group (fast), and the equivalence
claim on Ray Train (2 workers x 1 thread against 1 process x 1 thread).

Equivalence tolerance, fixed before the first run: max |difference| over every logged metric and
every final weight <= 1e-5, fp32 tiny models, same global batch and seed, with micro_batch_size set
so that both sides accumulate gradients over differently split micro-batches. Tiny Llama models are
used, not GPT-2: GPT-2's attention key bias has a gradient that is zero in exact arithmetic, so Adam
turns its rounding noise into full-size steps and one process already differs from itself by ~4e-5
when only the micro-batch split changes.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlxf.algorithms.loop import OptimConfig, optimise, train
from rlxf.core.cluster import ClusterError, ScaleSettings
from rlxf.core.runs import Run
from rlxf.executors.learner import LearnerError, all_reduce_sum, broadcast_object, shard, sync_gradients, world

TOL = 1e-5
WORDS = "a b c d e f g h".split()


def test_shard_is_contiguous_and_covers_the_batch_once():
    batch = list(range(7))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard([1, 2], r, 3) for r in range(3)] == [[1], [2], []]
    assert shard(batch, 0, 1) == batch
    assert world() == (0, 1)  # no process group here


def test_a_run_travels_without_its_trackers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Run("rel", "cfg")
    run.trackers.names = ["tensorboard"]  # stands for a configured tracker
    copy = pickle.loads(pickle.dumps(run))
    assert copy.trackers.names == [] and run.trackers.names == ["tensorboard"]
    assert copy.dir == tmp_path / "rel" and copy.metrics_path == tmp_path / "rel" / "metrics.jsonl"


def test_the_driver_follows_rank_0s_lines_into_its_trackers_and_progress(tmp_path):
    from types import SimpleNamespace

    from rlxf.executors.learner import _Follower

    run, recorder, bar = Run(tmp_path / "r", "cfg"), _Recorder(), SimpleNamespace(n=0, refresh=lambda: None)
    run.trackers = recorder
    run.log("sft", 0, loss=3.0)  # before the resume point: not forwarded again
    follower = _Follower(run, "sft", 1, bar)
    run.log("sft", 1, loss=2.0)
    run.log("other", 1, loss=9.0)
    recorder.lines.clear()
    with open(run.metrics_path, "a") as f:
        f.write('{"stage": "sft", "step": 2, "lo')  # rank 0 is still writing this line
    follower.pump()
    assert recorder.lines == [("sft", 1, {"loss": 2.0})] and bar.n == 2
    with open(run.metrics_path, "a") as f:
        f.write('ss": 1.5}\n')
    follower.pump()
    follower.pump()  # nothing new: nothing twice
    assert recorder.lines == [("sft", 1, {"loss": 2.0}), ("sft", 2, {"loss": 1.5})] and bar.n == 3


class WorkerHealthCheckFailedError(Exception):
    """Stands for Ray Train's error about a worker whose process is gone (matched by name)."""


def test_a_failure_names_the_dead_worker_first_and_where_the_run_stands(tmp_path):
    from types import SimpleNamespace

    from rlxf.executors.learner import _failure

    run = Run(tmp_path / "r", "cfg")
    cfg = OptimConfig(checkpoint_every=2)
    error = SimpleNamespace(worker_failures={
        0: RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:42169: Connection reset by peer"),
        1: WorkerHealthCheckFailedError("The actor is dead because its worker process has died.")})
    assert str(_failure(run, "sft", cfg, error)) == (
        "sft: learner worker 1 died (its process ended: killed, out of memory or crashed); the other worker(s) (0) "
        "lost their connection to it. No checkpoint was written yet (optim.checkpoint_every = 2); run the same "
        "command again to start the stage over")
    run.save_checkpoint("sft", 3, {"model": {"w": torch.zeros(2)}})
    error.worker_failures = {0: RuntimeError("Connection closed by peer")}
    assert str(_failure(run, "sft", cfg, error)) == (
        "sft: learner worker(s) 0 lost their connection to another worker (did a worker or node die?). The last "
        f"checkpoint of step 3 is kept in {run.dir / 'stages' / 'sft'}; run the same command again to resume from it")


# -- a 2-process gloo group in this machine (no Ray) -------------------------------------------------


def _group(rank: int, size: int, init: str, job, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=size)
    try:
        torch.save(job(rank), os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _in_group(tmp_path, job, size: int = 2) -> list:
    """``job(rank)`` in each of ``size`` spawned processes of one gloo group; their results by rank."""
    mp.spawn(_group, args=(size, str(tmp_path / "init"), job, str(tmp_path)), nprocs=size)
    return [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(size)]


def _collectives(rank: int) -> dict:
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))  # another dtype: another bucket
    c = torch.nn.Parameter(torch.zeros(3))
    d = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([1.0, 2.0]) * (10 if rank else 1)
    if rank == 1:
        b.grad = torch.tensor([3.0], dtype=torch.float64)
    d.grad = torch.tensor([0.5, -1.0])
    sync_gradients([a, b, c, d], bucket_bytes=8)  # 8 bytes: several buckets
    metrics = all_reduce_sum({"loss": 0.25 + rank, **({"only0": 7.0} if rank == 0 else {})})
    return {"world": world(), "grads": [None if p.grad is None else p.grad.tolist() for p in (a, b, c, d)],
            "metrics": metrics, "from0": broadcast_object({"rank": rank})}


def test_gradients_and_metrics_are_summed_over_ranks(two_ranks):
    for rank, got in enumerate(r["collectives"] for r in two_ranks[1]):
        assert got["world"] == (rank, 2)
        # a: 1,2 + 10,20; b: none on rank 0 counts as zero; c: no rank has one, stays None; d: 2 x
        assert got["grads"] == [[11.0, 22.0], [3.0], None, [1.0, -2.0]]
        assert got["metrics"] == {"loss": 1.5, "only0": 7.0}
        assert got["from0"] == {"rank": 0}


def _toy_stage(run_dir, steps: int, fail_at: int = -1):
    """A linear least-squares stage whose loss_fn returns each micro-batch's share of the global mean."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    w_true = torch.tensor([[1.0, -2.0, 0.5]])

    def make_batch(step: int) -> list:
        if step == fail_at:
            raise RuntimeError("interrupted")
        g = torch.Generator().manual_seed(step)
        return list(torch.randn(5, 3, generator=g))

    def loss_fn(micro: list, batch: list):
        x = torch.stack(micro)
        loss = ((model(x) - x @ w_true.T) ** 2).sum() / len(batch)
        return loss, {"loss": loss.item()}

    cfg = OptimConfig(steps=steps, batch_size=5, micro_batch_size=2, lr=0.05, checkpoint_every=2)
    return Run(run_dir, "toy"), "toy", model, cfg, make_batch, loss_fn


def _toy_job(run_dir, rank: int) -> dict:
    try:  # the first attempt stops at step 3: after the checkpoint of step 1 and the metrics of step 2
        optimise(*_toy_stage(run_dir, steps=5, fail_at=3), quiet=True)
    except RuntimeError:
        pass
    dist.barrier()
    run, stage, model, *rest = _toy_stage(run_dir, steps=5)
    start = optimise(run, stage, model, *rest, quiet=True)
    return {"start": start, "weights": [p.detach().clone() for p in model.parameters()]}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``(run dir of the toy stage, results by rank)`` of one 2-process gloo group that runs the
    collective checks and the toy stage (starting the processes is most of the cost)."""
    tmp = tmp_path_factory.mktemp("group")
    return tmp / "two", _in_group(tmp, functools.partial(_group_checks, tmp / "two"))


def _group_checks(run_dir, rank: int) -> dict:
    return {"collectives": _collectives(rank), "toy": _toy_job(run_dir, rank)}


def test_the_loop_on_two_ranks_equals_one_process_and_resumes(tmp_path, two_ranks):
    """Within 1e-5 (see the module docstring); the rerun resumes at step 2 on both ranks."""
    run, stage, model, cfg, make_batch, loss_fn = _toy_stage(tmp_path / "one", steps=5)
    optimise(run, stage, model, cfg, make_batch, loss_fn, quiet=True)
    got = [r["toy"] for r in two_ranks[1]]
    two = Run(two_ranks[0], "toy")
    assert [r["step"] for r in two.metrics("toy")] == list(range(5))  # rank 0 alone wrote, each step once
    for a, b in zip(run.metrics("toy"), two.metrics("toy")):
        assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a if k != "stage") <= TOL
    for rank in (0, 1):
        assert got[rank]["start"] == 2
        for p, q in zip(model.parameters(), got[rank]["weights"]):
            assert (p.detach() - q).abs().max() <= TOL


# -- Ray Train: 2 workers x 1 thread against 1 process x 1 thread ------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    import cloudpickle

    from rlxf.core.cluster import connect_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = connect_ray(ScaleSettings(executor="ray", num_cpus=2))
    yield ray
    ray.shutdown()


def _tiny():
    from rlxf.policies.language import LanguagePolicy
    from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer(WORDS)
    return LanguagePolicy(tiny_causal_lm(tok, kind="llama", n_layer=1, n_embd=32, n_head=2, seed=0), tok)


DP = ScaleSettings(executor="ray", learner_workers=2, learner_threads=1)


def _both(tmp_path, stage: str, fit) -> tuple[Run, Run, torch.nn.Module, torch.nn.Module]:
    """``fit(run, policy)`` in this process (1 thread) and on 2 Ray Train workers, on fresh copies of
    one tiny policy; returns both runs and both trained models."""
    out = []
    for name, scale in (("one", ScaleSettings()), ("two", DP)):
        policy = _tiny()
        run = Run(tmp_path / name, "cfg", scale=scale)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fit(run, policy)
        finally:
            torch.set_num_threads(threads)
        out += [run, policy.model]
    return out[0], out[2], out[1], out[3]


def _assert_same(one: Run, two: Run, stage: str, m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    rows1, rows2 = one.metrics(stage), two.metrics(stage)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] and rows1
    for a, b in zip(rows1, rows2):
        assert a.keys() == b.keys()
        diffs = {k: abs(a[k] - b[k]) for k in a if isinstance(a[k], (int, float))}
        assert max(diffs.values()) <= TOL, diffs
    w1, w2 = m1.state_dict(), m2.state_dict()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= TOL
    assert any(not torch.equal(w1[k], _tiny().model.state_dict()[k]) for k in w1)  # it trained


class _Recorder:
    def __init__(self):
        self.lines = []

    def log(self, stage, step, values):
        self.lines.append((stage, step, values))


@pytest.mark.slow
def test_sft_on_two_ray_workers_equals_one_process(tmp_path, ray_cluster):
    """Within 1e-5 (module docstring); the driver's trackers get every line rank 0 logged."""
    from rlxf.algorithms.sft import train_sft

    tok = _tiny().tokenizer
    prompts = [tok(f"{w} {v}").input_ids for w in WORDS for v in WORDS[:3]]
    responses = [tok(f"{v} {w} {w}").input_ids for w in WORDS for v in WORDS[:3]]
    cfg = OptimConfig(steps=4, batch_size=7, micro_batch_size=2, lr=1e-2, checkpoint_every=2)
    recorder = _Recorder()

    def fit(run, policy):
        if run.scale.distributed:
            run.trackers = recorder
        train_sft(run, "sft", policy, prompts, responses, cfg, seed=0, quiet=True)

    one, two, m1, m2 = _both(tmp_path, "sft", fit)
    _assert_same(one, two, "sft", m1, m2)
    assert [(s, step) for s, step, _ in recorder.lines] == [("sft", i) for i in range(4)]
    assert recorder.lines[-1][2]["loss"] == two.metrics("sft")[-1]["loss"]


@pytest.mark.slow
def test_dpo_on_two_ray_workers_equals_one_process(tmp_path, ray_cluster):
    """Within 1e-5 (module docstring)."""
    from rlxf.algorithms.offline_preference import train_pairs
    from rlxf.objectives.preference import dpo_loss

    enc = _tiny().encode
    pairs = [(enc([f"{a} {b}"])[0], enc([f"{a} a"])[0], enc([f"{b} h h"])[0]) for a in WORDS for b in WORDS[:2]]
    cfg = OptimConfig(steps=4, batch_size=6, micro_batch_size=2, lr=1e-2, checkpoint_every=2)

    def fit(run, policy):
        train_pairs(run, "dpo", policy, policy.reference(), pairs, dpo_loss, {"beta": 0.1}, cfg, seed=1, quiet=True)

    one, two, m1, m2 = _both(tmp_path, "dpo", fit)
    _assert_same(one, two, "dpo", m1, m2)


@pytest.mark.slow
def test_grpo_on_two_ray_workers_equals_one_process(tmp_path, ray_cluster):
    """Within 1e-5 (module docstring). Rank 0 samples and broadcasts each rollout with its state: the
    adaptive KL coefficient, used by every rank's loss (kl.mode = "loss"), moves each rollout."""
    from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
    from rlxf.executors.local import LocalExecutor
    from rlxf.rewards.scoring import Scorer

    class Rank0Only(LocalExecutor):  # other ranks must receive the rollout, never sample it
        def sample(self, *args):
            if world()[0] != 0:
                raise RuntimeError(f"rank {world()[0]} sampled")
            return super().sample(*args)

    cfg = OnlineConfig(method="grpo", samples_per_prompt=2, max_new_tokens=5, updates_per_rollout=2,
                       kl=KLSettings(mode="loss", estimator="k3", coef=0.1, target=0.01, horizon=4),
                       optim=OptimConfig(steps=4, batch_size=3, micro_batch_size=1, lr=1e-2, checkpoint_every=2))

    def fit(run, policy):
        a = policy.tokenizer.convert_tokens_to_ids("a")
        scorer = Scorer({"a": (lambda s: [float(r.count(a)) for r in s.response_ids], 1.0)})
        prompts = policy.encode(["a b", "c d", "e f", "b c"])
        train_online(run, "grpo", policy, policy.reference(), prompts, scorer, cfg, seed=3,
                     executor=Rank0Only(), quiet=True)

    one, two, m1, m2 = _both(tmp_path, "grpo", fit)
    _assert_same(one, two, "grpo", m1, m2)
    assert len({r["kl_coef"] for r in two.metrics("grpo")}) == 2  # the coefficient moved


def _raises_on_rank_1(micro, batch):
    if world()[0] == 1:
        raise ValueError(f"bad row {micro[0]}")
    return torch.zeros((), requires_grad=True), {}


def _warns_on_rank_0(micro, batch):
    if world()[0] == 0:
        warnings.warn("no learning signal (stand-in)", UserWarning)
    return torch.zeros((), requires_grad=True), {}


@pytest.mark.slow
def test_rank_0s_warnings_reach_the_driver(tmp_path, ray_cluster):
    run = Run(tmp_path / "warn", "cfg", scale=DP)
    with pytest.warns(UserWarning, match="no learning signal .stand-in."):
        train(run, "toy", torch.nn.Linear(2, 1), OptimConfig(steps=1, batch_size=2, checkpoint_every=0),
              lambda step: [0, 1], _warns_on_rank_0, quiet=True)


@pytest.mark.slow
def test_a_failing_worker_names_stage_rank_and_error(tmp_path, ray_cluster):
    run = Run(tmp_path / "fail", "cfg", scale=DP)
    cfg = OptimConfig(steps=2, batch_size=4, checkpoint_every=0)
    with pytest.raises(LearnerError, match=r"toy: learner worker 1 raised ValueError: bad row 2.*No checkpoint was "
                       r"written yet \(optim.checkpoint_every = 0\); run the same command again to start the stage over"):
        train(run, "toy", torch.nn.Linear(2, 1), cfg, lambda step: [0, 1, 2, 3], _raises_on_rank_1, quiet=True)
    too_many = Run(tmp_path / "many", "cfg", scale=ScaleSettings(executor="ray", learner_workers=3, learner_threads=1))
    with pytest.raises(ClusterError, match="3 learner worker.s. x 1 thread.s. need 3 CPUs, but the Ray cluster has 2"):
        train(too_many, "toy", torch.nn.Linear(2, 1), cfg, lambda step: [0, 1, 2, 3], _raises_on_rank_1, quiet=True)


@pytest.mark.slow
def test_rollout_actors_that_cannot_fit_beside_the_learner_are_refused(tmp_path, ray_cluster):
    from rlxf.algorithms.online.controller import OnlineConfig, train_online
    from rlxf.executors import make_executor

    policy = _tiny()
    from rlxf.rewards.scoring import Scorer

    executor = make_executor(ScaleSettings(executor="ray", rollout_workers=1, rollout_cpus=0.5))
    scorer = Scorer({"zero": (lambda s: [0.0] * len(s), 1.0)})
    with pytest.raises(ClusterError, match=r"1 rollout worker\(s\) x 0.5 CPU need 2.5 CPUs, but the Ray cluster has 2"):
        train_online(Run(tmp_path / "r", "cfg", scale=DP), "online", policy, policy.reference(), [[4]], scorer,
                     OnlineConfig(), seed=0, executor=executor)
    assert not Run(tmp_path / "r", "cfg").metrics()  # refused before any step


def test_on_rollout_with_several_learner_workers_is_refused(tmp_path):
    from rlxf.algorithms.online.controller import OnlineConfig, OnlineError, train_online

    run = Run(tmp_path / "r", "cfg", scale=DP)
    policy = _tiny()
    with pytest.raises(OnlineError, match="on_rollout sees batches in the driver"):
        train_online(run, "online", policy, policy.reference(), [[4]], None, OnlineConfig(), seed=0,
                     on_rollout=print)
