"""DROC at toy scale: language corrections during execution, distilled into a knowledge base and
retrieved for new tasks.

Zha et al., "Distilling and Retrieving Generalizable Knowledge for Robot Manipulation via Language
Corrections" (arXiv 2311.10678). The world is :mod:`rlxf.tasks.tabletop2d` with objects whose hidden
needs depend on what they are: the grasp height by shape (a plate low, a bottle high) and a gentle
release by material (glass and ceramic bounce out of a bin otherwise). The robot runs the planner's
skill calls with primitive parameters (grasp height, gentle release) starting from defaults. When a
step goes wrong (a slip, a bounce) a corrector is asked, through the one text interface
(:class:`~rlxf.labelers.roles.TextModel`), and says e.g. "grasp lower" or "move slower near the bin";
:func:`parse_correction` turns the reply into a parameter change (unparseable replies are counted and
ignored). :func:`simulated_corrector` plays the corrector from the gold error with a set error rate
(its wrong replies point the wrong way or say nothing usable).

Distillation: when a skill succeeds after corrections, the parameter that made it work is stored under
the object's description as a text key (``"blue glass bottle"`` -> ``height 0.9``). Retrieval: for a new
task, each parameter comes from the stored entry whose key shares the most words with the new object's
description (BM25 from rank-bm25, tokenised as in :mod:`rlxf.tasks.retrieval`, breaks ties), among
entries sharing at least two (a lookalike: same shape and material, or colour and one of them);
otherwise the default. Protocol (:func:`run_rounds`): round 1 one object of each kind, round 2 the same tasks again
(repeated), round 3 new instances of each kind in other colours (similar); the no-memory baseline
starts every task from the defaults.
"""

from __future__ import annotations

import argparse
import random
import re

import numpy as np
from rank_bm25 import BM25Okapi
from tqdm import tqdm

from rlxf.algorithms.control.robomatrix import SCRIPTED_LIBRARY, parse_plan, planner_prompt, run_skills, scripted_plan
from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.labelers.roles import SimulatedRole, TextModel
from rlxf.tasks.retrieval import tokens
from rlxf.tasks.tabletop2d import BLOCKS, DEFAULT_PARAMS, PLACE_NAMES, ObjectSpec, Tabletop2D, task_text

SHAPE_HEIGHT = {"plate": 0.1, "bowl": 0.3, "block": 0.5, "cup": 0.7, "bottle": 0.9, "vase": 0.7}
FRAGILE = frozenset({"glass", "ceramic"})
KINDS = (("plate", "ceramic"), ("bowl", "wooden"), ("block", "wooden"), ("cup", "plastic"), ("bottle", "glass"),
         ("vase", "glass"))
COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
HEIGHT_STEP = 0.2
CORRECTIONS = {"grasp lower": ("height", -HEIGHT_STEP), "grasp higher": ("height", HEIGHT_STEP),
               "move slower near the bin": ("gentle", True)}


def make_object(colour: str, shape: str, material: str) -> ObjectSpec:
    """An object whose hidden needs follow its shape (grasp height) and material (fragility)."""
    if shape not in SHAPE_HEIGHT:
        raise ValueError(f"droc: unknown shape {shape!r}; known {sorted(SHAPE_HEIGHT)}")
    return ObjectSpec(colour, shape, material, SHAPE_HEIGHT[shape], material in FRAGILE)


# -- the corrector --------------------------------------------------------------------------------
def correction_request(obj: ObjectSpec, skill: str, info: dict) -> str:
    """What the corrector is shown: the skill call, the object and what went wrong."""
    if "slip" in info:
        what = f"the grasp slipped: the gripper was too {info['slip']}"
    else:
        what = "the object bounced out of the bin"
    return f"While running {skill} on the {obj.description}, {what}. Give one short correction."


def right_correction(request: str) -> str:
    if "too high" in request:
        return "grasp lower"
    if "too low" in request:
        return "grasp higher"
    return "move slower near the bin"


def wrong_correction(request: str, right: str, rng: random.Random) -> str:
    return rng.choice([c for c in CORRECTIONS if c != right] + ["hmm, that is not what I wanted"])


def simulated_corrector(error: float = 0.1, seed: int = 0) -> SimulatedRole:
    """A corrector played from the gold error, wrong (another correction, or nothing usable) w.p. ``error``."""
    return SimulatedRole(right=right_correction, wrong=wrong_correction, error=error, seed=seed)


def parse_correction(reply: str) -> tuple[str, object] | None:
    """``(parameter, change)`` for a known correction in the reply, else None."""
    text = reply.lower()
    for phrase, change in CORRECTIONS.items():
        if re.search(r"\b" + phrase.replace(" ", r"\s+") + r"\b", text):
            return change
    return None


# -- the knowledge base ---------------------------------------------------------------------------
class KnowledgeBase:
    """Parameter values under text keys; one entry per (key, parameter), the latest kept."""

    def __init__(self, min_shared: int = 2):
        self.entries: dict[tuple[str, str], object] = {}
        self.min_shared = min_shared

    def add(self, key: str, param: str, value) -> None:
        self.entries[key, param] = value

    def retrieve(self, query: str, param: str):
        """Among keys sharing at least ``min_shared`` words with ``query``: the value under the one sharing
        the most, ties broken by BM25 score; None when no key shares enough."""
        keys = [k for k, p in self.entries if p == param]
        if not keys:
            return None
        q = tokens(query)
        scores = BM25Okapi([tokens(k) for k in keys]).get_scores(q)
        shared = [len(set(q) & set(tokens(k))) for k in keys]
        ok = [i for i in range(len(keys)) if shared[i] >= self.min_shared]
        if not ok:
            return None
        # more shared words first: on a handful of keys BM25's idf degenerates (a word in half the keys
        # or more weighs nothing or less), and an exact key can tie with a two-word lookalike
        return self.entries[keys[max(ok, key=lambda i: (shared[i], scores[i], -i))], param]


# -- one task -------------------------------------------------------------------------------------
def run_task(obj: ObjectSpec, place: int, seed: int, corrector: TextModel, kb: KnowledgeBase | None,
             horizon: int = 40, key: str = "description") -> dict:
    """Put ``obj`` in bin ``place`` (two plain blocks on the table too), asking ``corrector`` whenever a
    step slips or bounces. With a knowledge base, parameters are retrieved first and what worked after
    corrections is stored, under the object's ``key`` ("description": colour, material and shape; "name":
    colour and shape only). Returns corrections asked, unparseable replies and success."""
    objects = (obj,) + BLOCKS[1:]
    env = Tabletop2D([((0, place),)], objects, horizon=horizon)
    env.reset(seed=seed)
    params = dict(DEFAULT_PARAMS)
    if kb is not None:
        for name in params:
            found = kb.retrieve(getattr(obj, key), name)
            params[name] = params[name] if found is None else found
    env.set_params(**params)
    stats = {"corrections": 0, "invalid": 0}
    corrected: set[str] = set()

    def on_event(env, skill, arg, info):
        stats["corrections"] += 1
        change = parse_correction(corrector.complete([correction_request(obj, skill, info)])[0])
        if change is None:
            stats["invalid"] += 1
            return
        name, delta = change
        corrected.add(name)
        if name == "height":
            env.set_params(height=env.params["height"] + delta)
        else:
            env.set_params(gentle=delta)

    plan = parse_plan(scripted_plan(planner_prompt(task_text(((0, place),), objects), objects), objects), objects)
    success = 0.0
    while not success and env.t < horizon and env.in_bin[0] is None:  # after a bounce the plan runs again
        success = run_skills(env, plan, SCRIPTED_LIBRARY, cap=horizon, on_event=on_event)
    if kb is not None:  # distil: a corrected parameter is kept once the skill it governs worked
        worked = {"height": env.held == 0 or env.in_bin[0] is not None, "gentle": env.in_bin[0] is not None}
        for name in corrected:
            if worked[name]:
                kb.add(getattr(obj, key), name, env.params[name])
    return {**stats, "success": float(success)}


def rounds_objects(seed: int) -> list[list[ObjectSpec]]:
    """Round 1: each kind in a random colour; round 2: the same objects; round 3: each kind in a colour
    not used for it before."""
    rng = random.Random(f"droc|{seed}")
    first = [rng.choice(COLOURS) for _ in KINDS]
    third = [rng.choice([c for c in COLOURS if c != f]) for f in first]
    make = lambda colours: [make_object(c, s, m) for c, (s, m) in zip(colours, KINDS)]  # noqa: E731
    return [make(first), make(first), make(third)]


def run_rounds(seed: int, memory: bool, error: float = 0.1, key: str = "description") -> dict:
    """Corrections per task ``[3 rounds, len(KINDS)]`` (and successes) with or without memory."""
    corrector, kb = simulated_corrector(error, seed), KnowledgeBase() if memory else None
    rng = np.random.default_rng(seed)
    corrections = np.zeros((3, len(KINDS)))
    success = np.zeros((3, len(KINDS)))
    invalid = 0
    for r, objs in enumerate(rounds_objects(seed)):
        for k, obj in enumerate(objs):
            out = run_task(obj, int(rng.integers(len(PLACE_NAMES))), seed * 1_000 + r * 100 + k, corrector, kb,
                           key=key)
            corrections[r, k], success[r, k] = out["corrections"], out["success"]
            invalid += out["invalid"]
    return {"corrections": corrections, "success": success, "invalid": invalid}


def experiment(seeds, error: float = 0.1, progress: bool = False, key: str = "description") -> dict:
    """Memory vs no memory on the same seeds: corrections ``[seeds, 3, kinds]`` each."""
    out = {"memory": [], "none": [], "success_memory": [], "success_none": []}
    for s in tqdm(list(seeds), disable=not progress, desc="droc seeds"):
        for name, mem in (("memory", True), ("none", False)):
            r = run_rounds(s, mem, error, key)
            out[name].append(r["corrections"])
            out[f"success_{name}"].append(r["success"])
    return {k: np.stack(v) for k, v in out.items()}


def plot(result: dict, path: str) -> None:
    """Mean corrections per task, in the order the tasks come (3 rounds of len(KINDS)), both agents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, label in (("none", "no memory"), ("memory", "knowledge base + retrieval")):
        ax.plot(result[name].reshape(len(result[name]), -1).mean(0), marker="o", label=label)
    for r in (1, 2):
        ax.axvline(r * len(KINDS) - 0.5, color="grey", lw=0.8)
    ax.set_xticks(range(3 * len(KINDS)), [s for _ in range(3) for s, _ in KINDS], rotation=60, fontsize=7)
    ax.set_ylabel("corrections per task")
    ax.set_title("round 1: new | round 2: repeated | round 3: similar (new colours)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="DROC: corrections per task with and without distilled knowledge")
    ap.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1, each 3 rounds of len(KINDS) tasks")
    ap.add_argument("--error", type=float, default=0.1, help="the simulated corrector's error rate")
    ap.add_argument("--keys", choices=("description", "name"), default="description",
                    help="what knowledge is stored under: colour, material and shape, or the name (colour, shape)")
    ap.add_argument("--plot", default="", help="write the corrections-per-task plot to this PNG")
    args = ap.parse_args(argv)
    res = experiment(range(args.seeds), args.error, progress=True, key=args.keys)
    for r, name in enumerate(("new", "repeated", "similar")):
        mem, none = res["memory"][:, r].ravel(), res["none"][:, r].ravel()
        gain, se = paired_gain(none, mem)
        print(f"round {r + 1} ({name}): corrections per task: memory {mean_se(mem)[0]:.3f} +- {mean_se(mem)[1]:.3f}, "
              f"no memory {mean_se(none)[0]:.3f} +- {mean_se(none)[1]:.3f}; saved {gain:.3f} +- {se:.3f} (paired)")
    print(f"success: memory {res['success_memory'].mean():.3f}, no memory {res['success_none'].mean():.3f}")
    if args.plot:
        plot(res, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
