"""A paper's claim on one control-lab task, measured from the command line: every method of the lab's
table (:mod:`rlxf.lab.control_table`) trained on the same seeds, per-seed means, the paired gain of the
claimed method over each baseline with its standard error, and a bar chart.

``pair_over="episodes"`` pairs held-out episode ``i`` of seed ``s`` across methods (runners that evaluate on
the same env seeds); ``"seeds"`` pairs the per-seed means (deterministic tasks, where episodes repeat).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.lab.control_table import METHODS
from rlxf.lab.registry import resolve


def compare(task: str, methods: list[str], seeds: list[int], scale: float = 1.0, pair_over: str = "episodes",
            plot: str | Path | None = None) -> dict:
    """Run ``methods`` (the first is the claimed one) on ``task`` for every seed; print and return the figures."""
    if pair_over not in ("episodes", "seeds"):
        raise ValueError(f"pair_over must be 'episodes' or 'seeds', got {pair_over!r}")
    scores: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for seed in tqdm(seeds, desc=f"{task} seeds"):
        for m in methods:
            scores[m].append(np.asarray(resolve(METHODS[m].run, f"method {m}")(task, seed, scale), dtype=float))
    out: dict = {"task": task, "seeds": list(seeds), "scale": scale, "methods": {}, "gains": {}}
    for m in methods:
        per_seed = [float(s.mean()) for s in scores[m]]
        mean, se = mean_se(np.concatenate(scores[m]) if pair_over == "episodes" else per_seed)
        out["methods"][m] = {"per_seed": per_seed, "mean": mean, "se": se}
        print(f"{m:<14} mean {mean:.3f} +- {se:.3f}   per seed " + " ".join(f"{x:.3f}" for x in per_seed))
    claimed = methods[0]
    for base in methods[1:]:
        a, b = ((np.concatenate(scores[claimed]), np.concatenate(scores[base])) if pair_over == "episodes"
                else (out["methods"][claimed]["per_seed"], out["methods"][base]["per_seed"]))
        gain, se = paired_gain(a, b)
        out["gains"][base] = {"gain": gain, "se": se}
        print(f"{claimed} - {base}: {gain:+.3f} +- {se:.3f} (paired over {pair_over}, seeds {list(seeds)})")
    if plot is not None:
        _bars(out, Path(plot))
        print(f"plot: {plot}")
    return out


def _bars(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["methods"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.2))
    ax.bar(names, [out["methods"][m]["mean"] for m in names], yerr=[out["methods"][m]["se"] for m in names],
           capsize=4, color=["tab:green"] + ["tab:gray"] * (len(names) - 1))
    for i, m in enumerate(names):
        ax.scatter([i] * len(out["methods"][m]["per_seed"]), out["methods"][m]["per_seed"], color="k", s=10, zorder=3)
    ax.set_ylabel("held-out return (mean +- SE; dots: seeds)")
    ax.set_title(f"{out['task']}, seeds {out['seeds']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
