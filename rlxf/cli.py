"""The ``rlxf`` command: run a pipeline config, run the quickstart, rebuild a report."""

from __future__ import annotations

import argparse
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

    run = sub.add_parser("run", help="run (or resume) the pipeline of a TOML config")
    run.add_argument("config", help="path to a TOML config")
    common(run)
    quick = sub.add_parser("quickstart", help="SFT -> comparisons -> reward model -> DPO/RLOO/best-of-N -> report")
    common(quick)
    rep = sub.add_parser("report", help="rewrite report.html of a finished run (of any lab) and print its table")
    rep.add_argument("run_dir")
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
    cfg = load_config(lab.Config, config_path, [*args.overrides, *report_to])
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    runner = lab(cfg, fresh=args.fresh, quiet=args.quiet, log=log)
    summary = runner.execute()
    print(runner.format_table(summary))
    print(f"report: {runner.run.dir / 'report.html'}")
    print(runner.run.dir.resolve())
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
    args = _parser().parse_args(argv)
    if args.command == "label":
        from rlxf.app.cli import run_label_command

        return run_label_command(args)
    from rlxf.core.config import ConfigError
    from rlxf.core.runs import RunError
    from rlxf.core.trackers import TrackerError
    from rlxf.data.io import DataError
    from rlxf.lab.pipeline import PipelineError

    try:
        if args.command == "run":
            return _run(args.config, args)
        if args.command == "quickstart":
            return _run(quickstart_config_path(), args)
        return _report(args.run_dir)
    except (ConfigError, DataError, PipelineError, RunError, TrackerError, FileNotFoundError) as e:
        print(f"rlxf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlxf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
