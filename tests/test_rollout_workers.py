"""Rollout workers that scale apart from the learner: generation backends, exact behaviour
log-probs behind an inexact engine, weight sync by object store and by collective, and a killed
rollout actor that is retried without changing the run."""

from __future__ import annotations

import os

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
from rlxf.core.cluster import ScaleSettings
from rlxf.core.runs import Run
from rlxf.executors import make_executor
from rlxf.executors.generation import FakeEngine, HFBackend
from rlxf.executors.ray_backend import pack, unpack
from rlxf.policies.language import LanguagePolicy
from rlxf.rewards.scoring import Scorer

def _scorer(policy):
    a = policy.tokenizer.convert_tokens_to_ids("a")
    count = lambda s: [float(r.count(a)) for r in s.response_ids]  # noqa: E731
    return Scorer({"count": (count, 1.0)}, {"gold": count})


def _cfg(steps=4, updates=2) -> OnlineConfig:
    return OnlineConfig(method="grpo", samples_per_prompt=2, max_new_tokens=6, updates_per_rollout=updates,
                        kl=KLSettings(coef=0.05), optim=OptimConfig(steps=steps, batch_size=4, lr=1e-3,
                                                                   checkpoint_every=2))


def _train(tmp_path, policy, executor, name, cfg=None, on_rollout=None):
    """Train a copy of ``policy``; returns its metric lines and the trained copy."""
    pol = policy.copy()
    run = Run(tmp_path / name, "cfg")
    prompts = pol.encode(["a b", "c d", "e f", "b c"])
    try:
        train_online(run, "online", pol, pol.reference(), prompts, _scorer(policy), cfg or _cfg(), seed=3,
                     executor=executor, quiet=True, on_rollout=on_rollout)
    finally:
        if executor is not None:
            executor.close()
    return run.metrics("online"), pol


def _same_weights(a: LanguagePolicy, b: LanguagePolicy) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))


# -- without Ray ---------------------------------------------------------------------------------


def test_bad_backend_and_weight_sync_are_named():
    problems = ScaleSettings(backend="tgi", weight_sync="nfs").problems()
    assert "run.backend must be one of hf, vllm, fake, got 'tgi'" in problems
    assert "run.weight_sync must be one of auto, object_store, collective, got 'nfs'" in problems
    with pytest.raises(ValueError, match="run.backend must be one of"):
        make_executor(ScaleSettings(backend="tgi"))


def test_vllm_backend_without_vllm_says_what_to_install(tiny_policy):
    import importlib.util

    from rlxf.executors.generation import VLLMBackend

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match=r"pip install 'rlxf\[vllm\]'"):
        VLLMBackend(tiny_policy)


def test_packed_weights_round_trip_every_dtype():
    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3) / 7, "step": torch.tensor([3, -1], dtype=torch.int64),
             "mask": torch.tensor([True, False, True]), "h": torch.tensor([1.5], dtype=torch.float16)}
    flat = pack(state)
    assert flat.dtype == torch.uint8 and flat.numel() == 6 * 4 + 2 * 8 + 3 + 2
    like = {k: torch.zeros_like(v) for k, v in state.items()}
    out = unpack(flat, like)
    assert all(out[k].dtype == v.dtype and torch.equal(out[k], v) for k, v in state.items())


def test_fake_engine_samples_what_the_policy_would_with_other_logprobs(tiny_policy):
    """The fake engine's own decoding path draws the same tokens as the policy's sampler for the same
    seed (same distribution, same generator), but reports log-probs that are off."""
    prompts = tiny_policy.encode(["a b", "c d"])
    exact = HFBackend(tiny_policy).generate(prompts, 3, 6, 1.0, 1.0, seed=11)
    fake = FakeEngine(tiny_policy).generate(prompts, 3, 6, 1.0, 1.0, seed=11)
    assert fake.response_ids == exact.response_ids and fake.finished == exact.finished
    off = (fake.steps.logps - exact.steps.logps).abs()[exact.steps.mask > 0]
    assert 0.001 < float(off.max()) <= 0.05


def test_inexact_engine_logprobs_are_recomputed_so_the_first_ratio_is_one(tmp_path, tiny_policy):
    """With FakeEngine (log-probs off by up to 0.05 nats) the controller rescoring with the learner
    makes the first update's importance ratio 1: max |old - current| log-prob <= 1e-6 and
    approx-KL <= 1e-9 at step 0. The same engine, trusted as exact, must show approx-KL >= 1e-5
    (so the check can fail)."""
    gaps = []

    def gap(pol):
        def on_rollout(batch):
            s = batch.samples
            now = pol.score(s.prompt_ids, s.response_ids).logps[:, : batch.steps.num_steps]
            gaps.append(float(((now - batch.steps.old_logps) * batch.steps.mask).abs().max()))
        return on_rollout

    class Trusted(FakeEngine):
        exact_logprobs = True

    for backend in (FakeEngine, Trusted):
        pol = tiny_policy.copy()
        run = Run(tmp_path / backend.__name__, "cfg")
        train_online(run, "online", pol, pol.reference(), pol.encode(["a b", "c d", "e f", "b c"]),
                     _scorer(pol), _cfg(steps=1, updates=1), seed=3, quiet=True,
                     executor=make_executor(backend=backend), on_rollout=gap(pol))
    (fake_gap, trusted_gap) = gaps
    recomputed, trusted = (Run(tmp_path / n, "cfg").metrics("online")[0] for n in ("FakeEngine", "Trusted"))
    assert fake_gap <= 1e-6 and recomputed["approx_kl"] <= 1e-9
    assert trusted_gap > 1e-3 and trusted["approx_kl"] >= 1e-5


def test_train_online_closes_only_the_executor_it_made(tmp_path, tiny_policy, monkeypatch):
    """An executor train_online builds from run.scale is closed when the stage ends (a Ray executor's
    actors would keep their CPUs); one the caller passes stays open for the caller."""
    import rlxf.executors
    from rlxf.executors.local import LocalExecutor

    closed = []

    class Recording(LocalExecutor):
        def close(self):
            closed.append(self)

    monkeypatch.setattr(rlxf.executors, "make_executor", lambda scale: Recording())
    _train(tmp_path, tiny_policy, None, "made", cfg=_cfg(steps=1, updates=1))
    assert len(closed) == 1
    given = Recording()
    pol = tiny_policy.copy()
    train_online(Run(tmp_path / "given", "cfg"), "online", pol, pol.reference(), pol.encode(["a b"]),
                 _scorer(pol), _cfg(steps=1, updates=1), seed=3, executor=given, quiet=True)
    assert len(closed) == 1 and closed[0] is not given


def test_lost_actor_calls_are_rerun_then_give_up_with_the_cause():
    """The retry rule on its own (no Ray): a lost actor's call, or one answered by a restarted actor
    without the current weights (None), is resubmitted; after RETRIES re-runs the error names it."""
    from rlxf.executors.ray_backend import RETRIES, RayExecutor, WorkerLost

    ex = object.__new__(RayExecutor)
    ex.restarts, ex._push_error = 0, ""
    answers = iter([WorkerLost("rollout worker 1 died at step 4 (ActorDiedError)"), None, "rollout"])

    def get(ref, what, step):
        out = next(answers)
        if isinstance(out, Exception):
            raise out
        return out

    ex._get = get
    submitted = []
    assert ex._result("ref", "rollout worker 1", 4, lambda: submitted.append(1)) == "rollout"
    assert ex.restarts == 2 and len(submitted) == 2
    answers = iter([WorkerLost("rollout worker 1 died at step 4 (ActorDiedError)")] * (RETRIES + 1))
    ex._push_error = "rollout worker set_weights died at step 4 (ActorUnavailableError)"
    with pytest.raises(RuntimeError, match=r"rollout worker 1 was lost 4 times, giving up: .*ActorDiedError.*"
                                           r"last weight push: .*set_weights"):
        ex._result("ref", "rollout worker 1", 4, lambda: "ref")


# -- on Ray: one local instance for the module ---------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    pytest.importorskip("ray")
    from rlxf.core.cluster import connect_ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # 4 logical CPUs on a 2-core machine: room for 2 learner workers beside the rollout actors
    ray = connect_ray(ScaleSettings(executor="ray", num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_result(tmp_path_factory, tiny_policy):
    """The uninterrupted in-process run every Ray run must reproduce (2 shards, as 2 actors)."""
    return _train(tmp_path_factory.mktemp("local"), tiny_policy, make_executor(ScaleSettings(rollout_workers=2)),
                  "local")


@pytest.mark.parametrize("sync", ["object_store", "collective"])
def test_weight_sync_ships_each_version_once_and_matches_local(tmp_path, tiny_policy, ray_instance, local_result,
                                                               sync):
    """Two rollout actors at half a CPU each: 4 updates at 2 per rollout are 2
    weight versions, each shipped once (one ray.put, or one broadcast in the gloo group), and
    every metric and weight equals the local run's."""
    assert make_executor(ScaleSettings(executor="ray")).weight_sync == "object_store"  # "auto" on one node
    ex = make_executor(ScaleSettings(executor="ray", rollout_workers=2, rollout_cpus=0.5, weight_sync=sync))
    rows, pol = _train(tmp_path, tiny_policy, ex, sync)
    assert (ex.weight_puts, ex.broadcasts) == ((2, 0) if sync == "object_store" else (0, 2))
    assert ex.restarts == 0
    assert rows == local_result[0] and _same_weights(pol, local_result[1])


def _dies_once(marker: str):
    """An HF backend whose second ``generate`` (the second rollout) kills its own actor with
    ``ray.kill(..., no_restart=False)``; only the process that creates ``marker`` first does, once."""

    class DiesOnce(HFBackend):
        calls = 0

        def generate(self, prompt_ids, *args):
            import time

            import ray

            DiesOnce.calls += 1
            if DiesOnce.calls == 2 and not os.path.exists(marker):
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:  # the other actor got there first
                    return super().generate(prompt_ids, *args)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
                time.sleep(60)
            return super().generate(prompt_ids, *args)

    return DiesOnce


@pytest.mark.slow  # ~35 s: Ray restarts the killed actor's process
@pytest.mark.parametrize("sync", ["object_store", "collective"])
def test_killed_rollout_actor_is_restarted_and_the_run_is_unchanged(tmp_path, tiny_policy, ray_instance,
                                                                    local_result, sync):
    """A rollout actor killed in the middle of its second sample restarts, gets the current
    version's weights again, and re-samples its shard with the same seed: the run's metrics and
    final weights equal the uninterrupted local run's."""
    marker = tmp_path / "died"
    ex = make_executor(ScaleSettings(executor="ray", rollout_workers=2, weight_sync=sync, timeout_s=100),
                       backend=_dies_once(str(marker)))
    rows, pol = _train(tmp_path, tiny_policy, ex, "killed")
    assert marker.exists() and ex.restarts >= 1
    assert rows == local_result[0] and _same_weights(pol, local_result[1])


@pytest.mark.slow  # ~100 s on 2 busy cores: a Ray Train fit beside the rollout actors
def test_data_parallel_learner_with_rollout_actors_matches_local(tmp_path, tiny_policy, ray_instance, local_result):
    """2 learner workers (1 thread each) with 2 rollout actors synced by the collective: rank 0 samples
    through the actors, and the losses and final weights are the local run's within 1e-5 (the
    equivalence tolerance of the data-parallel learner, chosen before the first run)."""
    pol = tiny_policy.copy()
    scale = ScaleSettings(executor="ray", learner_workers=2, learner_threads=1, rollout_workers=2, rollout_cpus=0.5,
                          weight_sync="collective", num_cpus=4)
    run = Run(tmp_path / "dp", "cfg", scale=scale)
    train_online(run, "online", pol, pol.reference(), pol.encode(["a b", "c d", "e f", "b c"]), _scorer(pol),
                 _cfg(), seed=3, quiet=True)
    local_rows, local_pol = local_result
    rows = run.metrics("online")
    assert [m["step"] for m in rows] == [m["step"] for m in local_rows]
    assert max(abs(m["loss"] - n["loss"]) for m, n in zip(rows, local_rows)) <= 1e-5
    assert max(float((x - y).abs().max()) for x, y in zip(pol.model.parameters(), local_pol.model.parameters())) <= 1e-5
