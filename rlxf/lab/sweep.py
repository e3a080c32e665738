"""``rlxf sweep``: one config over a grid of settings and seeds, each trial an ordinary rlxf run, on Ray Tune.

A sweep directory holds ``trials/<setting>_seed<N>/`` (one run directory per trial), Tune's own
records in ``tune/``, and the results: ``results.md``, ``results.csv`` and ``results.json`` (the
metric's mean and standard error over seeds per setting) and ``report.html`` with a plot of them.
Every ``--param`` key and value is checked against the lab's config before any trial starts. A
trial whose run directory is finished is kept as it is; the others run (an interrupted one resumes
from its finished stages), so running the same command again resumes an interrupted sweep, and
running it with another ``--metric`` only rewrites the results.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlxf.algorithms.evaluate import mean_se, paired_gain
from rlxf.core.cluster import ScaleSettings, connect_ray, scale_of
from rlxf.core.config import ConfigError, load_config, parse_override
from rlxf.core.runs import atomic_write_text
from rlxf.lab import report
from rlxf.lab.registry import lab_class, lab_of, reopen
from rlxf.lab.stages import run_identity

OWNED = ("run.seed", "run.dir", "lab")  # the sweep sets these itself
HELD_OUT_LOSS = ("metrics.nll_per_token.trained",)  # rlxf train's held-out loss (supervised methods)


class SweepError(RuntimeError):
    """A sweep that cannot start, or whose trials did not all finish; the message says which and why."""


class SweepInterrupted(SweepError):
    """The sweep was stopped (Ctrl-C) before every trial finished; none of them failed."""


@dataclass(frozen=True)
class Trial:
    """One run of the grid: ``setting`` is ((key, value as written), ...), ``overrides`` the
    ``--set`` lines that make its config from the sweep's config."""

    name: str
    setting: tuple[tuple[str, str], ...]
    seed: int
    overrides: tuple[str, ...]


@dataclass
class Sweep:
    """A checked sweep (see :func:`plan`): the config, its lab, the swept keys with their values,
    the seeds, the sweep directory and every trial in grid order."""

    config: Path
    lab: str
    params: list[tuple[str, list[str]]]
    seeds: list[int]
    dir: Path
    trials: list[Trial]

    def trial_dir(self, trial: Trial) -> Path:
        return self.dir / "trials" / trial.name

    def finished(self, trial: Trial) -> bool:
        """Whether ``trial``'s run directory holds a finished run (every stage done, a summary written)."""
        d = self.trial_dir(trial)
        return (d / "summary.json").is_file() and not reopen(d).unfinished()


def split_values(raw: str) -> list[str]:
    """``0.05,0.1,[1,2],"a,b"`` -> ["0.05", "0.1", "[1,2]", '"a,b"']: commas inside brackets,
    braces or quotes do not split."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(raw[start:i].strip())
            start = i + 1
    return [*out, raw[start:].strip()]


def parse_param(text: str) -> tuple[str, list[str]]:
    """``dpo.beta=0.05,0.1`` -> ("dpo.beta", ["0.05", "0.1"])."""
    key, sep, raw = text.partition("=")
    values = split_values(raw) if sep else []
    if not key.strip() or not values or "" in values:
        raise ConfigError(f"--param {text!r}: expected SECTION.KEY=VALUE,VALUE,... (e.g. --param dpo.beta=0.05,0.1)")
    return key.strip(), values


def trial_name(setting: tuple[tuple[str, str], ...], seed: int) -> str:
    """A directory name that says the setting and the seed, e.g. ``dpo.beta=0.05_seed0``."""
    text = "_".join(f"{k}={v}" for k, v in setting) + f"_seed{seed}"
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)[:200]


def plan(config: str | Path, params: list[str], seeds: int, sets: list[str] = (), directory: str = "",
         fresh: bool = False) -> Sweep:
    """Check the sweep and list its trials (settings in grid order, then seeds) without writing
    anything: every ``--param`` key and value must apply to the lab's config, and (unless ``fresh``:
    the sweep starts over) a trial directory that exists must hold a run of the same config."""
    config = Path(config).resolve()
    lab = lab_of(config)
    cls = lab_class(lab).Config
    base = load_config(cls, config, list(sets))
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not params:
        raise ConfigError("rlxf sweep needs at least one --param SECTION.KEY=VALUE,VALUE,...")
    parsed = [parse_param(p) for p in params]
    set_keys = {".".join(parse_override(s)[0]) for s in sets}
    for i, (key, values) in enumerate(parsed):
        if key in OWNED:
            raise ConfigError(f"--param {key}: the sweep sets {key} itself (use --seeds for seeds, --dir for where)")
        if key in set_keys or key in [k for k, _ in parsed[:i]]:
            raise ConfigError(f"--param {key}: the key is given twice (in --param and --set, or in two --param)")
        for value in values:  # the lab's config dataclass checks the key and the value's type
            path, parsed_value = parse_override(f"{key}={value}")
            nested = parsed_value
            for part in reversed(path):
                nested = {part: nested}
            load_config(cls, config, list(sets), flags=nested, flags_source=f"--param {key}={value}")
    root = Path(directory or f"{base.run.dir or 'runs/' + lab}_sweep").resolve()  # rlxf train's run.dir may be empty
    trials = []
    for setting in _grid(parsed):
        for seed in range(base.run.seed, base.run.seed + seeds):
            name = trial_name(setting, seed)
            run_dir = root / "trials" / name
            overrides = (*sets, *(f"{k}={v}" for k, v in setting), f"run.seed={seed}", f"run.dir={json.dumps(str(run_dir))}")
            trials.append(Trial(name, setting, seed, overrides))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError(f"--param: two settings share a directory name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                          "write the values differently")
    sweep = Sweep(config, lab, parsed, list(range(base.run.seed, base.run.seed + seeds)), root, trials)
    for t in trials:
        held = sweep.trial_dir(t) / "config.toml"
        if not fresh and held.is_file() and held.read_text() != run_identity(load_config(cls, config, list(t.overrides))):
            raise ConfigError(f"{held.parent} holds a run of another config (the config or --set changed since it ran): "
                              "pass --fresh to start the sweep over, or --dir to sweep elsewhere")
    return sweep


def _grid(params: list[tuple[str, list[str]]]) -> list[tuple[tuple[str, str], ...]]:
    settings: list[tuple[tuple[str, str], ...]] = [()]
    for key, values in params:
        settings = [(*s, (key, v)) for s in settings for v in values]
    return settings


# -- running --------------------------------------------------------------------------------------
def _run_trial(space: dict) -> None:
    """Tune's function trainable: one trial is one rlxf run, made and resumed as ``rlxf run`` would."""
    import torch
    from ray import tune

    os.chdir(space["cwd"])  # relative paths in the config mean what they mean to the user
    torch.set_num_threads(space["threads"])
    try:
        lab = lab_class(lab_of(space["config"]))
        cfg = load_config(lab.Config, space["config"], space["trial"]["overrides"])
        lab(cfg, quiet=True, log=lambda _msg: None).execute()
    except Exception as e:  # Ray copies a trial's exception, which not every exception class allows
        raise SweepError(f"{type(e).__name__}: {e}") from None
    tune.report(numbers(json.loads((Path(cfg.run.dir) / "summary.json").read_text())))


def held_cpus(scale: ScaleSettings, cpus_per_trial: float) -> float:
    """CPUs one trial holds while it runs: its own and, when its config runs on Ray, those of its
    learner workers (one per torch thread) and rollout actors, which Ray places apart from the trial."""
    cpus = cpus_per_trial
    if scale.executor == "ray":
        if scale.learner_workers > 1:  # a worker's threads as the trial will count them (rlxf.executors.learner)
            threads = scale.learner_threads or max(1, max(1, int(cpus_per_trial)) // scale.learner_workers)
            cpus += scale.learner_workers * threads
        cpus += scale.rollout_workers * scale.rollout_cpus
    return cpus


def concurrency(sweep: Sweep, trials: list[Trial], cluster_cpus: float, max_concurrent: int,
                cpus_per_trial: float) -> int:
    """How many trials may run at once (0 = as many as Tune fits): at most ``max_concurrent``, and,
    when trials start Ray workers of their own, as many as the cluster holds with all their workers,
    so that no trial waits forever for workers while others hold the CPUs."""
    cls = lab_class(sweep.lab).Config
    scales = [scale_of(load_config(cls, sweep.config, list(t.overrides)).run) for t in trials]
    if all(s.executor != "ray" for s in scales):
        return max_concurrent
    need = max(held_cpus(s, cpus_per_trial) for s in scales)
    if need > cluster_cpus:
        raise ConfigError(f"a trial holds {need:g} CPUs ({cpus_per_trial:g} of its own with --cpus-per-trial, the rest "
                          f"for its run.learner_workers and run.rollout_workers), but the Ray cluster has "
                          f"{cluster_cpus:g}: lower those, or raise run.num_cpus for a local instance")
    fits = int(cluster_cpus // need)
    return min(max_concurrent, fits) if max_concurrent else fits


def run_trials(sweep: Sweep, trials: list[Trial], scale: ScaleSettings, max_concurrent: int = 0,
               cpus_per_trial: float = 1.0, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run ``trials`` as one Ray Tune experiment (each reserving ``cpus_per_trial`` CPUs, at most
    ``max_concurrent`` at once, 0 = as many as fit); returns the error of each trial that failed."""
    connect_ray(scale)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's older console output is silent at verbose=0
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            log(f"[{trial.config['trial']['name']}] finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"[{trial.config['trial']['name']}] failed")

    space = {"trial": tune.grid_search([{"name": t.name, "overrides": list(t.overrides)} for t in trials]),
             "config": str(sweep.config), "cwd": os.getcwd(), "threads": max(1, int(cpus_per_trial))}
    tuner = tune.Tuner(
        tune.with_resources(_run_trial, {"cpu": cpus_per_trial}), param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None,
                                    trial_name_creator=lambda t: t.config["trial"]["name"],
                                    trial_dirname_creator=lambda t: t.config["trial"]["name"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep.dir), verbose=0, callbacks=[Progress()]))
    errors = {}
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # a failed trial is reported below, in one line
    for result in tuner.fit():
        if result.error is not None:
            errors[result.config["trial"]["name"]] = _first_line(result.error)
    return errors


def _first_line(error: BaseException) -> str:
    """The trial's own exception (:func:`_run_trial` wraps it), not Ray's wrapping of it."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, SweepError):
        return str(cause)
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def execute(sweep: Sweep, scale: ScaleSettings, metric: str = "", max_concurrent: int = 0,
            cpus_per_trial: float = 1.0, fresh: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run the sweep's unfinished trials, then write its results; returns them (see :func:`results`).
    Bad options, a missing Ray or an unreachable cluster stop it before it writes."""
    if cpus_per_trial <= 0 or max_concurrent < 0:
        raise ConfigError(f"--cpus-per-trial must be > 0 and --max-concurrent >= 0, got {cpus_per_trial} and "
                          f"{max_concurrent}")
    todo = list(sweep.trials) if fresh else [t for t in sweep.trials if not sweep.finished(t)]
    if todo:
        cpus = float(connect_ray(scale).cluster_resources().get("CPU", 0))
        max_concurrent = concurrency(sweep, todo, cpus, max_concurrent, cpus_per_trial)
    if fresh and sweep.dir.exists():
        shutil.rmtree(sweep.dir)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.dir / "sweep.json", json.dumps(
        {"config": str(sweep.config), "lab": sweep.lab, "params": dict(sweep.params), "seeds": sweep.seeds}, indent=2))
    log(f"sweep: {len(sweep.trials)} trials in {sweep.dir}: {len(sweep.trials) - len(todo)} finished already, "
        f"{len(todo)} to run")
    errors = run_trials(sweep, todo, scale, max_concurrent, cpus_per_trial, log) if todo else {}
    unfinished = [t.name for t in sweep.trials if not sweep.finished(t)]
    done = results(sweep, metric) if len(unfinished) < len(sweep.trials) else None
    if unfinished:
        why = "; ".join(f"{n}: {errors[n]}" for n in unfinished if n in errors)
        raise (SweepError if why else SweepInterrupted)(f"{len(unfinished)} of {len(sweep.trials)} trials did not finish ({why or 'interrupted'}). "
                         f"Their run directories are under {sweep.dir / 'trials'}; "
                         f"{'fix what failed and ' if why else ''}run the same command again to resume (finished trials "
                         f"are kept{'; the results so far are written' if done else ''})")
    return done


# -- results --------------------------------------------------------------------------------------
def numbers(summary, prefix: str = "") -> dict[str, float]:
    """Every number in a run's summary, by dotted key (``dpo.gold_mean``, ``metrics.nll_per_token.trained``)."""
    out: dict[str, float] = {}
    if isinstance(summary, dict):
        for k, v in summary.items():
            out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(summary, (int, float)) and not isinstance(summary, bool) and prefix:
        out[prefix[:-1]] = float(summary)
    return out


def default_metric(keys: list[str], params: list[str]) -> str:
    """The gold mean when the summary has one (of the policy the swept keys name, when it has
    several), else rlxf train's held-out loss; a :class:`SweepError` listing the keys otherwise."""
    gold = [k for k in keys if k.rsplit(".", 1)[-1] in ("gold_mean", "gold")]
    named = {part for p in params for part in p.split(".")}
    for found in (gold if len(gold) == 1 else [], [k for k in gold if k.split(".")[0] in named],
                  [k for k in keys if k in HELD_OUT_LOSS]):
        if len(found) == 1:
            return found[0]
    if gold:
        raise SweepError(f"the runs' summaries have several gold means ({', '.join(gold)}) and the swept keys name none "
                         "of their policies: choose one with --metric")
    raise SweepError(f"the runs' summaries have no gold reward and no held-out loss: choose a key with --metric "
                     f"(keys: {', '.join(keys)})")


def results(sweep: Sweep, metric: str = "") -> dict:
    """The metric over seeds per setting (finished trials only), written as ``results.md``,
    ``results.csv``, ``results.json`` and ``report.html`` in the sweep directory, and returned."""
    values: dict[Trial, float] = {}
    for t in sweep.trials:
        if not (sweep.trial_dir(t) / "summary.json").is_file():
            continue
        flat = numbers(json.loads((sweep.trial_dir(t) / "summary.json").read_text()))
        metric = metric or default_metric(list(flat), [k for k, _ in sweep.params])
        if metric not in flat:
            raise SweepError(f"--metric {metric}: not in the summary of {sweep.trial_dir(t)} (keys: {', '.join(flat)})")
        values[t] = flat[metric]
    rows = []
    for setting in _grid(sweep.params):
        per_seed = {t.seed: v for t, v in values.items() if t.setting == setting}
        if not per_seed:
            continue
        mean, se = mean_se(list(per_seed.values()))
        rows.append({"setting": dict(setting), "seeds": list(per_seed), "values": list(per_seed.values()),
                     "mean": mean, "se": se if len(per_seed) > 1 else None})
    first = dict(zip(rows[0]["seeds"], rows[0]["values"])) if rows else {}
    for row in rows[1:]:  # paired by seed: the same seed gives the same data and starting model
        shared = [s for s in row["seeds"] if s in first]
        if len(shared) > 1:
            own = dict(zip(row["seeds"], row["values"]))
            row["vs_first"], row["vs_first_se"] = paired_gain([own[s] for s in shared], [first[s] for s in shared])
    out = {"metric": metric, "config": str(sweep.config), "rows": rows}
    _write(sweep, out)
    return out


def format_table(out: dict) -> str:
    """The results as a markdown table: one row per setting, the metric's mean ± standard error
    over seeds and, paired by seed, its difference from the first setting."""
    rows = out["rows"]
    keys = list(rows[0]["setting"]) if rows else []
    head = [*keys, "seeds", f"{out['metric']} (mean)", "± s.e.", "vs first setting (paired)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        se = "" if r["se"] is None else f"{r['se']:.4f}"
        diff = f"{r['vs_first']:+.4f} ± {r['vs_first_se']:.4f}" if "vs_first" in r else ""
        lines.append("| " + " | ".join([*r["setting"].values(), str(len(r["seeds"])), f"{r['mean']:.4f}", se, diff]) + " |")
    return "\n".join(lines)


def _write(sweep: Sweep, out: dict) -> None:
    d, table = sweep.dir, format_table(out)
    atomic_write_text(d / "results.json", json.dumps(out, indent=2))
    atomic_write_text(d / "results.md", table + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = list(out["rows"][0]["setting"]) if out["rows"] else []
    writer.writerow([*keys, "seeds", "mean", "se", "vs_first", "vs_first_se"])
    for r in out["rows"]:
        writer.writerow([*r["setting"].values(), len(r["seeds"]), r["mean"], r["se"], r.get("vs_first"), r.get("vs_first_se")])
    atomic_write_text(d / "results.csv", buf.getvalue())
    plot(out, d / "sweep.png")
    sections = [report.paragraph(
        f"{out['config']} ({sweep.lab} lab) over {len(out['rows'])} settings and seeds {sweep.seeds}: the mean of "
        f"{out['metric']} over seeds ± its standard error; differences from the first setting are paired by seed. "
        "Each trial's own report is in trials/<trial>/report.html."),
        report.pre(table), report.image("sweep.png", f"{out['metric']} per setting")]
    title = f"rlxf sweep: {sweep.dir}"
    atomic_write_text(d / "report.html", f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
                      f"<style>{report.STYLE}</style></head><body><h1>{title}</h1>{''.join(sections)}</body></html>")


def plot(out: dict, path: Path) -> None:
    """The metric per setting, mean ± standard error over seeds, each seed's value faint. One
    numeric parameter is drawn on its own axis (logarithmic when it spans a factor of 10 or more)."""
    rows = out["rows"]
    fig, ax = report.plt.subplots(figsize=(7, 4.5))
    xs: list = [" ".join(f"{k}={v}" for k, v in r["setting"].items()) for r in rows]
    if rows and len(rows[0]["setting"]) == 1:
        key = next(iter(rows[0]["setting"]))
        try:
            xs = [float(r["setting"][key]) for r in rows]
            ax.set_xlabel(key)
            if min(xs) > 0 and max(xs) >= 10 * min(xs):
                ax.set_xscale("log")
        except ValueError:
            pass
    for x, r in zip(xs, rows):
        ax.scatter([x] * len(r["values"]), r["values"], color="C0", alpha=0.3, s=12)
    ax.errorbar(xs, [r["mean"] for r in rows], yerr=[r["se"] or 0.0 for r in rows], fmt="o-", color="C0", capsize=3)
    ax.set_ylabel(out["metric"])
    ax.set_title(f"{out['metric']}: mean ± s.e. over seeds")
    ax.grid(alpha=0.3)
    if xs and isinstance(xs[0], str):
        ax.tick_params(axis="x", labelrotation=30)
    report.save_figure(fig, path)


def sweep_scale(sweep: Sweep, sets: list[str]) -> ScaleSettings:
    """Where the trials run: the config's ``[run]`` Ray address and CPU count, executor ``ray``."""
    cfg = load_config(lab_class(sweep.lab).Config, sweep.config, list(sets))
    scale = scale_of(cfg.run)
    scale.executor = "ray"
    return scale

