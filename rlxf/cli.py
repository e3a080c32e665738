"""The ``rlxf`` command: train a method on one's own model and data, sample from the result, run a
pipeline config, run the quickstart, rebuild a report."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlxf", description="Reinforcement learning from any feedback.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set dpo.beta=0.2")
        sp.add_argument("--fresh", action="store_true", help="delete the run directory first instead of resuming")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
        sp.add_argument("--report-to", dest="report_to", action="append", default=[], metavar="TRACKER",
                        choices=["tensorboard", "wandb", "trackio", "none"],
                        help="also log metrics to tensorboard, wandb or trackio (repeatable; sets run.report_to)")

    train = sub.add_parser("train", add_help=False, help="train METHOD on your own model, data and rewards",
                           usage="rlxf train METHOD --model M --data D [options]",
                           description="Train a method on your own model and data (rlxf train --help lists the "
                                       "methods; rlxf train METHOD --help lists a method's settings).")
    train.add_argument("method", nargs="?", default="", metavar="METHOD")
    train.add_argument("-h", "--help", action="store_true", help="show this help, or METHOD's settings, and exit")
    train.add_argument("--model", help="a Hugging Face model directory, a .gguf file, or smollm2")
    train.add_argument("--data", help="training data: .jsonl, .json, .parquet, a save_to_disk directory or a "
                                      "cached datasets name")
    train.add_argument("--eval-data", dest="eval_data", help="held-out data (default: a split of --data)")
    train.add_argument("--reward", dest="rewards", action="append", default=[], metavar="SPEC",
                       help="a reward for online methods (repeatable): file.py:fn, module:fn, a reward-model "
                            "directory, judge:..., answer_match, regex:PATTERN, length_penalty:N; weight as 0.5*SPEC")
    train.add_argument("--monitor", dest="monitors", action="append", default=[], metavar="SPEC",
                       help="a reward that is only logged and reported, never learned from (repeatable)")
    train.add_argument("--output", metavar="DIR", help="the run directory; the trained model goes to DIR/model "
                                                       "(default: runs/train_METHOD)")
    train.add_argument("--config", metavar="FILE.toml", help='a TOML config with lab = "train" (flags override it)')
    train.add_argument("--chat-template", dest="chat_template", metavar="FILE",
                       help="a Jinja chat template, for a tokenizer without one")
    train.add_argument("--dry-run", dest="dry_run", action="store_true",
                       help="load and check the model, data and rewards, say what would run, write nothing")
    common(train)
    sample = sub.add_parser("sample", help="generate from a trained model (a rlxf train run or a model directory)")
    sample.add_argument("model", metavar="RUN_OR_MODEL")
    which = sample.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    which.add_argument("--prompts", metavar="FILE", help="a file of prompts: one per line, or .jsonl with a prompt field")
    sample.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    sample.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--raw", action="store_true",
                        help="give the prompts as written, not as a user turn of the chat template (the default for "
                             "a run trained on chat data, or a model directory whose tokenizer has a template)")
    run = sub.add_parser("run", help="run (or resume) the pipeline of a TOML config")
    run.add_argument("config", help="path to a TOML config")
    run.add_argument("--chat-template", dest="chat_template", metavar="FILE",
                     help="a Jinja chat template for a model whose tokenizer has none (sets model.chat_template)")
    common(run)
    quick = sub.add_parser("quickstart", help="SFT -> comparisons -> reward model -> DPO/RLOO/best-of-N -> report")
    common(quick)
    sweep = sub.add_parser("sweep", help="run a config over a grid of settings and seeds on Ray Tune; a table of "
                                         "the metric's mean and standard error per setting")
    sweep.add_argument("config", help="path to a TOML config")
    sweep.add_argument("--param", dest="params", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                       help="a setting to sweep and its values (repeatable: the grid is every combination)")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per setting, from the config's run.seed (default 1)")
    sweep.add_argument("--metric", default="", metavar="KEY",
                       help="a summary key, e.g. dpo.gold_mean (default: the gold mean, else the held-out loss)")
    sweep.add_argument("--dir", default="", help="the sweep directory (default: the config's run.dir + _sweep)")
    sweep.add_argument("--max-concurrent", dest="max_concurrent", type=int, default=0, metavar="K",
                       help="trials at once (default 0: as many as the CPUs allow)")
    sweep.add_argument("--cpus-per-trial", dest="cpus_per_trial", type=float, default=1.0, metavar="N",
                       help="CPUs each trial reserves, and its torch threads (default 1)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value in every trial (repeatable)")
    sweep.add_argument("--fresh", action="store_true", help="delete the sweep directory first instead of resuming")
    sweep.add_argument("--quiet", action="store_true", help="no progress messages")
    rep = sub.add_parser("report", help="rewrite report.html of a finished run (of any lab) and print its table")
    rep.add_argument("run_dir")
    crit = sub.add_parser("critique-eval", help="RealCritic's closed-loop evaluation of critics (direct, self, cross, "
                                                "iterative critique): prints the table")
    crit.add_argument("config", help="path to a TOML config (e.g. configs/critique_eval.toml)")
    crit.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override a config value (repeatable), e.g. --set items.n=100")
    from rlxf.app.cli import add_label_commands

    add_label_commands(sub)
    return p


def quickstart_config_path() -> Path:
    return Path(str(resources.files("rlxf") / "configs" / "quickstart.toml"))


def _run(config_path: str | Path, args) -> int:
    from rlxf.core.config import load_config
    from rlxf.lab.registry import lab_class, lab_of

    lab = lab_class(lab_of(config_path))
    report_to = [f"run.report_to={args.report_to!r}".replace("'", '"')] if args.report_to else []
    template = [f"model.chat_template={json.dumps(args.chat_template)}"] if getattr(args, "chat_template", None) else []
    cfg = load_config(lab.Config, config_path, [*args.overrides, *report_to, *template])
    return _execute(lab(cfg, fresh=args.fresh, quiet=args.quiet, log=_log(args)))


def _execute(runner) -> int:
    """Run (or resume) a lab's stages, then print its table, its report's path and, last, where the
    result is: the trained model of a train run, else the run directory."""
    summary = runner.execute()
    print(runner.format_table(summary))
    print(f"report: {runner.run.dir / 'report.html'}")
    print(Path(getattr(runner, "output_dir", runner.run.dir)).resolve())
    return 0


def _log(args):
    return (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _train(args, parser: argparse.ArgumentParser) -> int:
    from rlxf.core.config import load_config
    from rlxf.lab import train

    if args.help:
        sub = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001 - argparse keeps them here
        print(sub.format_help())
        print(train.method_options(args.method) if args.method else train.methods_help())
        return 0
    flags: dict = {"method": args.method} if args.method else {}
    for key, section, name in (("model", "model", "path"), ("chat_template", "model", "chat_template"),
                               ("data", "data", "path"), ("eval_data", "data", "eval_path"), ("output", "run", "dir")):
        if getattr(args, key):
            flags.setdefault(section, {})[name] = getattr(args, key)
    if args.report_to:
        flags.setdefault("run", {})["report_to"] = args.report_to
    for key in ("rewards", "monitors"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    cfg = load_config(train.TrainConfig, args.config, args.overrides, flags=flags)
    if cfg.lab != "train":
        raise train.TrainError(f'{args.config}: lab = "{cfg.lab}", but rlxf train runs configs with lab = "train"')
    if args.dry_run:
        print(train.dry_run(cfg))
        return 0
    return _execute(train.TrainLab(cfg, fresh=args.fresh, quiet=args.quiet, log=_log(args)))


def _sample(args) -> int:
    from rlxf.lab.train import read_prompts, sample_texts

    prompts = read_prompts(args.prompts) if args.prompts else args.prompt
    outputs = sample_texts(args.model, prompts, args.n, args.max_new_tokens, args.temperature, args.top_p, args.seed,
                           chat=False if args.raw else None)
    for i, (prompt, completions) in enumerate(zip(prompts, outputs)):
        for j, text in enumerate(completions):
            if len(prompts) > 1 or args.n > 1:
                print(f"=== prompt {i + 1}, sample {j + 1}: {prompt}")
            print(text)
    return 0


def _sweep(args) -> int:
    from rlxf.lab import sweep

    plan = sweep.plan(args.config, args.params, args.seeds, args.overrides, args.dir, args.fresh)
    try:
        out = sweep.execute(plan, sweep.sweep_scale(plan, args.overrides), args.metric, args.max_concurrent,
                            args.cpus_per_trial, args.fresh, _log(args))
    except sweep.SweepError as e:
        print(f"rlxf: error: {e}", file=sys.stderr)
        return 130 if isinstance(e, sweep.SweepInterrupted) else 2
    print(sweep.format_table(out))
    print(f"report: {plan.dir / 'report.html'}")
    return 0


def _report(run_dir: str) -> int:
    from rlxf.core.runs import RunError
    from rlxf.lab.registry import reopen

    lab = reopen(run_dir)
    unfinished = lab.unfinished()
    if unfinished:
        raise RunError(f"{run_dir} is not a finished run: stage(s) {', '.join(unfinished)} have not finished "
                       "(run its config again with 'rlxf run' to finish them)")
    report = lab.write_report()
    print(lab.format_table(lab.summary()))
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while the libraries are still importing
        print("rlxf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "label":
        from rlxf.app.cli import run_label_command

        return run_label_command(args)
    from rlxf.core.cluster import ClusterError
    from rlxf.core.config import ConfigError
    from rlxf.core.runs import RunError
    from rlxf.core.trackers import TrackerError
    from rlxf.data.io import DataError
    from rlxf.executors.learner import LearnerError
    from rlxf.lab.pipeline import PipelineError
    from rlxf.lab.train import USER_ERRORS

    try:
        if args.command == "train":
            return _train(args, parser)
        if args.command == "sample":
            return _sample(args)
        if args.command == "run":
            return _run(args.config, args)
        if args.command == "quickstart":
            return _run(quickstart_config_path(), args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "critique-eval":
            from rlxf.critique.config import critique_eval_command

            print(critique_eval_command(args.config, args.overrides))
            return 0
        return _report(args.run_dir)
    except (ConfigError, DataError, PipelineError, RunError, TrackerError, ClusterError, FileNotFoundError,
            *USER_ERRORS) as e:
        print(f"rlxf: error: {e}", file=sys.stderr)
        return 2
    except LearnerError as e:  # a worker died or raised: not the input's fault, but no traceback either
        print(f"rlxf: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
