"""ALP-GMM (Portelas et al., "Teacher algorithms for curriculum learning of Deep RL in continuously
parameterized environments"): learning progress, the mixture fit, the teacher's sampling, the toy
environment, and the claims against uniform task sampling."""

from __future__ import annotations

import numpy as np
import pytest

from rlxf.algorithms.curricula.alp_gmm import ALPGMMTeacher, ALPHistory, UniformTeacher, fit_gmm
from rlxf.algorithms.curricula.toy import ToyEnv, run_toy
from rlxf.algorithms.evaluate import paired_gain


def test_alp_is_the_return_change_against_the_nearest_earlier_task():
    h = ALPHistory(2)
    assert h.add(np.array([0.0, 0.0]), 1.0) == 0.0  # nothing earlier
    assert h.add(np.array([1.0, 1.0]), 5.0) == 4.0  # nearest earlier: (0, 0), return 1
    assert h.add(np.array([0.9, 0.8]), 2.0) == 3.0  # nearest earlier: (1, 1), return 5
    assert h.add(np.array([0.1, 0.0]), 0.5) == 0.5  # nearest earlier: (0, 0), return 1
    assert len(h.returns) == 4 and h.tasks[2].tolist() == [0.9, 0.8]


def test_fit_gmm_finds_two_separated_clusters_and_aic_prefers_two():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal([0, 0], 0.1, (200, 2)), rng.normal([3, 1], 0.1, (200, 2))])
    g2 = fit_gmm(x, 2, np.random.default_rng(1))
    means = g2.means[np.argsort(g2.means[:, 0])]
    np.testing.assert_allclose(means, [[0, 0], [3, 1]], atol=0.05)
    np.testing.assert_allclose(g2.weights, [0.5, 0.5], atol=0.01)
    assert g2.aic(x) < fit_gmm(x, 1, np.random.default_rng(1)).aic(x)
    with pytest.raises(ValueError, match="cannot fit"):
        fit_gmm(x[:2], 3, rng)


def test_teacher_samples_where_learning_progress_is():
    """Returns swing on tasks with x < 0.3 and are constant elsewhere: after the first fit, the
    teacher's non-random draws fall mostly in that strip (uniform would put 30% there)."""
    t = ALPGMMTeacher([0.0, -1.0], [1.0, 1.0], seed=0, fit_rate=100, ks=(2, 3, 4), random_ratio=0.0)
    rng = np.random.default_rng(0)
    for i in range(100):
        assert t.gmm is None  # bootstrap: uniform until the first fit
        task = t.sample()
        t.update(task, float(rng.random() * 10) if task[0] < 0.3 else 5.0)
    draws = np.array([t.sample() for _ in range(500)])
    assert np.all(draws >= [0.0, -1.0]) and np.all(draws <= [1.0, 1.0])
    assert np.mean(draws[:, 0] < 0.3) > 0.8


def test_uniform_teacher_covers_the_box_and_checks_it():
    t = UniformTeacher([0.0, 10.0], [1.0, 20.0], seed=0)
    draws = np.array([t.sample() for _ in range(2000)])
    assert draws[:, 1].min() >= 10 and draws[:, 1].max() <= 20 and abs(draws[:, 0].mean() - 0.5) < 0.03
    with pytest.raises(ValueError, match="every low must be below its high"):
        UniformTeacher([0.0], [0.0])
    with pytest.raises(ValueError, match="fit_rate"):
        ALPGMMTeacher([0.0], [1.0], fit_rate=5)


def test_toy_env_unlocks_cubes_from_the_origin():
    env = ToyEnv(cubes=2, max_visits=4)  # mastered at 3 visits
    assert env.episode([0.7, 0.2]) == 0.0  # cube (1, 0): no earlier neighbour mastered yet
    assert [env.episode([0.1, 0.1]) for _ in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]  # capped at max_visits
    assert env.episode([0.7, 0.2]) == 0.25  # now learnable
    assert env.episode([0.9, 0.9]) == 0.0  # (1, 1): its earlier neighbours (0, 1), (1, 0) not mastered
    assert env.score() == 25.0


@pytest.mark.slow
def test_alp_gmm_masters_more_toy_cubes_than_random():
    """Pre-registered claim (C24's toy check): on the 10x10 toy environment after 10,000 episodes,
    ALP-GMM (the paper's defaults: fit_rate 250, k 2..10, 20% random) masters more cubes than uniform
    task sampling; the paired-by-seed gain is at least 2 standard errors above 0 over seeds 0, 1, 2
    (seeds 100-102 were looked at while building it: 17 vs 1 %)."""
    alp, rnd = [], []
    for seed in (0, 1, 2):
        rnd.append(run_toy(UniformTeacher([0, 0], [1, 1], seed), ToyEnv(), 10_000))
        alp.append(run_toy(ALPGMMTeacher([0, 0], [1, 1], seed), ToyEnv(), 10_000))
    gain, se = paired_gain(alp, rnd)
    assert gain - 2 * se > 0, f"ALP-GMM {alp} vs random {rnd}: gain {gain:.1f} +- {se:.1f}"


# -- the parameterised control task and PPO with a teacher ---------------------------------------------

def test_parameterised_cartpole_takes_its_task():
    from rlxf.tasks.gym_envs import EnvError, ParameterisedCartPole

    lengths = {}
    for half_length in (0.05, 1.5):
        env = ParameterisedCartPole((half_length, 10.0))
        obs, _ = env.reset(seed=3)
        np.testing.assert_allclose(obs[4:], [(half_length - 0.05) / 1.45, (10 - 1) / 14], atol=1e-6)
        n, done = 0, False
        while not done:  # always push left: the pole falls over
            obs, reward, terminated, truncated, _ = env.step(0)
            n, done = n + 1, terminated or truncated
        lengths[half_length] = n
    assert lengths[0.05] < lengths[1.5]  # a short pole falls faster from the same start
    with pytest.raises(EnvError, match="outside the box"):
        ParameterisedCartPole((2.0, 10.0))


def test_teacher_env_draws_each_episode_task_and_reports_its_return():
    from rlxf.algorithms.curricula.control import TeacherEnv, task_env

    class Scripted:
        def __init__(self):
            self.tasks, self.reports = [(0.05, 1.0), (1.5, 15.0)], []

        def sample(self):
            return np.array(self.tasks[len(self.reports) % 2])

        def update(self, task, episode_return):
            self.reports.append((tuple(task), episode_return))

    teacher = Scripted()
    env = TeacherEnv(task_env(), teacher)
    for episode in range(2):
        obs, _ = env.reset(seed=episode)
        assert tuple(env.unwrapped.task) == teacher.tasks[episode]
        n, done = 0, False
        while not done:
            obs, _, terminated, truncated, _ = env.step(episode % 2)
            n, done = n + 1, terminated or truncated
        assert teacher.reports[-1] == (teacher.tasks[episode], float(n))
    assert len(teacher.reports) == 2


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured (seeds 0, 1, 2; 15,000 steps): mean test-grid return ALP-GMM 156.2, 146.5, 149.5 vs uniform "
    "74.0, 125.9, 146.6; paired gain +35.2 +- 24.1, ahead on every seed but short of 2 SE"))
def test_alp_gmm_beats_uniform_task_sampling_for_ppo_at_equal_steps():
    """Pre-registered claim (issue 22, curricula): PPO (the control learner's defaults) trained for
    15,000 environment steps on the parameterised CartPole with tasks from ALP-GMM (fit_rate 50,
    k 2..5, 20% random) has a higher mean greedy return over the 5x5 test grid covering the whole task
    box than with uniformly sampled tasks: the paired-by-seed gain is at least 2 standard errors above
    0 over seeds 0, 1, 2. (Seeds 100 and 101 were used to choose the box and the budget: at 15,000
    steps 163.6 vs 135.4 and 129.0 vs 59.9; at 10,000 steps no clear gap.)"""
    from rlxf.algorithms.curricula.control import compare

    res = compare((0, 1, 2), total_steps=15_000)
    gain, se = paired_gain(res["score"]["alp_gmm"], res["score"]["uniform"])
    assert gain - 2 * se > 0, f"ALP-GMM {res['score']['alp_gmm']} vs uniform {res['score']['uniform']}: {gain:.1f} +- {se:.1f}"
