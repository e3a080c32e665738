"""A cheap test bed for teachers, with no RL: the task space [0, 1]^d cut into ``cubes`` per dimension.

Following the toy environment of the ALP-GMM paper's code (behaviour as the algorithm notes describe
it; written afresh): each cube holds a competence count. An episode on a task in a cube raises that
cube's count by one, up to ``max_visits``, but only if the cube is learnable now: the origin cube
always is, any other only once an earlier neighbour (one cube lower along one learnable dimension) is
mastered, i.e. its count reaches 75% of ``max_visits``. The episode's return is the cube's competence
(count / max_visits). The score is the percentage of cubes mastered. Dimensions after the first
``learnable_dims`` are unlearnable: they are part of the task but do not matter (every cube along
them shares one count), so a teacher that samples them uniformly wastes nothing but a teacher that
cannot tell them apart sees noise.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


class ToyEnv:
    def __init__(self, cubes: int = 10, learnable_dims: int = 2, max_visits: int = 100):
        self.cubes, self.dims, self.max_visits = cubes, learnable_dims, max_visits
        self.count = np.zeros((cubes,) * learnable_dims, dtype=int)

    def cube(self, task) -> tuple[int, ...]:
        x = np.asarray(task, dtype=float)[: self.dims]
        return tuple(np.minimum((x * self.cubes).astype(int), self.cubes - 1).clip(0))

    def mastered(self, idx: tuple[int, ...]) -> bool:
        return self.count[idx] >= 0.75 * self.max_visits

    def learnable(self, idx: tuple[int, ...]) -> bool:
        if not any(idx):
            return True
        return any(idx[d] > 0 and self.mastered(idx[:d] + (idx[d] - 1,) + idx[d + 1:]) for d in range(self.dims))

    def episode(self, task) -> float:
        """Play one episode on ``task``; returns the cube's competence after it."""
        idx = self.cube(task)
        if self.count[idx] < self.max_visits and self.learnable(idx):
            self.count[idx] += 1
        return self.count[idx] / self.max_visits

    def score(self) -> float:
        """Percentage of cubes mastered."""
        return 100.0 * float((self.count >= 0.75 * self.max_visits).mean())


def run_toy(teacher, env: ToyEnv, episodes: int, quiet: bool = True) -> float:
    """``episodes`` episodes, each on the teacher's next task; returns the env's final score."""
    for _ in tqdm(range(episodes), desc="toy curriculum", disable=quiet, leave=False):
        task = teacher.sample()
        teacher.update(task, env.episode(task))
    return env.score()


def main(argv: list[str] | None = None) -> None:
    import argparse

    from rlxf.algorithms.curricula.alp_gmm import ALPGMMTeacher, UniformTeacher
    from rlxf.algorithms.evaluate import mean_se, paired_gain

    ap = argparse.ArgumentParser(description="ALP-GMM against uniform sampling on the toy environment")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=10_000)
    args = ap.parse_args(argv)
    scores = {"uniform": [], "alp_gmm": []}
    for seed in args.seeds:
        scores["uniform"].append(run_toy(UniformTeacher([0, 0], [1, 1], seed), ToyEnv(), args.episodes))
        scores["alp_gmm"].append(run_toy(ALPGMMTeacher([0, 0], [1, 1], seed), ToyEnv(), args.episodes, quiet=False))
    for name, s in scores.items():
        print(f"{name}: % cubes mastered {mean_se(s)[0]:.1f} +- {mean_se(s)[1]:.1f} ({', '.join(map(str, s))})")
    gain, se = paired_gain(scores["alp_gmm"], scores["uniform"])
    print(f"alp_gmm - uniform (paired by seed): {gain:+.1f} +- {se:.1f}")


if __name__ == "__main__":
    main()
