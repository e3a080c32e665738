"""``rlxf label init|add-labeler|add-items|serve|export``: the feedback app's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlxf.app.selection import SELECTIONS
from rlxf.data.label_store import KINDS


def add_label_commands(subparsers) -> None:
    """Register ``rlxf label ...`` on the top-level parser's subparsers."""
    label = subparsers.add_parser("label", help="collect human feedback in a web app (see docs/feedback_app.md)")
    sub = label.add_subparsers(dest="label_command", required=True)

    def project(sp):
        sp.add_argument("--project", required=True, metavar="DIR", help="the label project directory")
        return sp

    init = project(sub.add_parser("init", help="create a label project and print its owner token"))
    init.add_argument("--kind", choices=KINDS, default="preference", help="what labelers are asked")
    init.add_argument("--name", help="project name (default: the directory name)")
    init.add_argument("--database", metavar="URL",
                      help="a postgresql:// URL (default: labels.sqlite in the project directory)")
    init.add_argument("--overlap", type=int, default=1, help="labelers per item, >1 to measure agreement")
    init.add_argument("--selection", choices=SELECTIONS, default="uniform", help="which question to ask next")
    init.add_argument("--scale", type=float, nargs=2, default=[1, 5], metavar=("LOW", "HIGH"),
                      help="rating scale (rating projects)")
    init.add_argument("--max-critique-chars", type=int, default=4000)
    init.add_argument("--nu", type=float, default=1.0,
                      help="exploration weight of the apohf rule: bonus sqrt(nu * variance); -1 asks random pairs")
    init.add_argument("--eps", type=float, default=0.0, help="uncertainty threshold of the randomized rule")
    init.add_argument("--query-policy", metavar="FILE",
                      help="the learned rule's pair query policy (default: the shipped one; --selection learned)")
    init.add_argument("--seed", type=int, default=0)

    add = project(sub.add_parser("add-labeler", help="register a labeler and print their token"))
    add.add_argument("name")

    items = project(sub.add_parser("add-items", help="add items from a JSONL file (prompt + responses)"))
    items.add_argument("file")

    prompts = project(sub.add_parser("add-prompts", help="make the project a prompt-optimisation project: each "
                                     "question duels two candidate prompts, picked by APOHF (docs/prompts.md)"))
    source = prompts.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="candidates as JSONL: prompt, shown (the model's answers), embedding")
    source.add_argument("--task", help="candidates from a built-in prompt task instead (e.g. kinds)")
    prompts.add_argument("--n", type=int, default=20, help="with --task: how many random candidate prompts")
    prompts.add_argument("--max-duels", type=int, default=150, help="stop asking after this many duels")
    prompts.add_argument("--n-init", type=int, default=5, help="random duels before APOHF's rule starts")

    project(sub.add_parser("best-prompt", help="the prompt APOHF reports from the duels answered so far"))

    serve = project(sub.add_parser("serve", help="start the web app"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reward-model", action="append", default=[], metavar="DIR",
                       help="a reward model directory scoring items for active selection (repeat for an ensemble)")

    export = project(sub.add_parser("export", help="write the labels as an rlxf/TRL dataset"))
    export.add_argument("out", help="output path: .jsonl, .parquet, or a directory (save_to_disk)")
    export.add_argument("--record", help="record kind, e.g. comparison, critique or correction")


def run_label_command(args) -> int:
    """Run one ``rlxf label`` command; a bad request prints ``rlxf: error: ...`` and returns 2."""
    from rlxf.data.io import DataError
    from rlxf.data.label_store import StoreError

    try:
        return _dispatch(args)
    except (StoreError, DataError, FileNotFoundError) as e:
        print(f"rlxf: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from rlxf.app import project as proj

    cmd = args.label_command
    if cmd == "init":
        from rlxf.data.label_store import StoreError

        scale = [int(x) if float(x).is_integer() else x for x in args.scale]
        extra = {}
        if args.query_policy:
            if args.selection != "learned":
                raise StoreError("--query-policy: only the 'learned' selection reads it (add --selection learned)")
            from rlxf.algorithms.active.pairs import load_pair_policy

            try:
                load_pair_policy(args.query_policy, "--query-policy")
            except ValueError as e:
                raise StoreError(str(e)) from None
            extra["query_policy"] = str(Path(args.query_policy).resolve())
        token = proj.init_project(args.project, args.kind, args.name, args.database, overlap=args.overlap,
                                  selection=args.selection, scale=scale, max_critique_chars=args.max_critique_chars,
                                  nu=args.nu, eps=args.eps, seed=args.seed, **extra)
        print(f"created {args.kind} project in {args.project}")
        print(f"owner token: {token}")
        print("(shown once; it opens the project page and the export)")
        return 0
    if cmd == "serve":
        return _serve(args)
    if cmd in ("add-prompts", "best-prompt"):
        return _prompt_duels(args)
    if cmd == "export":
        path, n = proj.export_project(args.project, args.out, args.record)
        print(f"wrote {n} records to {path}")
        return 0
    store, project = proj.open_project(args.project)
    try:
        if cmd == "add-labeler":
            token = store.add_labeler(project, args.name)
            print(f"labeler {args.name!r} token: {token}")
            print(f"labeling page: http://HOST:PORT/label#token={token}")
        else:
            ids = store.add_items(project, proj.read_items(args.file))
            print(f"added {len(ids)} items (ids {ids[0]}..{ids[-1]}) to project {project.name!r}")
    finally:
        store.close()
    return 0


def _serve(args) -> int:
    import uvicorn

    from rlxf.app.project import open_project
    from rlxf.app.selection import reward_model_scorer
    from rlxf.app.server import create_app, listening_socket
    from rlxf.data.label_store import StoreError

    store, project = open_project(args.project)
    from rlxf.app.prompt_duels import PromptDuels

    duels = PromptDuels.of(args.project, project)
    scorer = None
    if args.reward_model:
        from rlxf.rewards.model import RewardModel

        scorer = reward_model_scorer([RewardModel.from_pretrained(d) for d in args.reward_model])
    app = create_app(store, project, scorer, duels, video_dir=Path(args.project) / "videos")
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as e:
        store.close()
        raise StoreError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    print(f"serving project {project.name!r} on http://{args.host}:{args.port}/label "
          f"(owner page: /project)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
    return 0


def _prompt_duels(args) -> int:
    from rlxf.app import prompt_duels as pd
    from rlxf.app.project import open_project

    if args.label_command == "add-prompts":
        if args.task:
            from rlxf.lab.prompts import TASKS, duel_candidates

            if args.task not in TASKS or args.n < 2:
                raise pd.StoreError(f"--task must be one of {', '.join(TASKS)} and --n at least 2; "
                                    f"got {args.task!r} and {args.n}")
            open_project(args.project)[0].close()  # a missing project is named before the model runs
            candidates = duel_candidates(args.task, args.n, seed=0)
        else:
            candidates = pd.read_candidates(args.file)
        path = pd.add_prompts(args.project, candidates, args.max_duels, args.n_init)
        print(f"{len(candidates)} candidate prompts in {path}; each question is now a duel of two of them")
        return 0
    store, project = open_project(args.project)
    try:
        duels = pd.PromptDuels.of(args.project, project)
        if duels is None:
            raise pd.StoreError(f"{args.project} is not a prompt-duel project (run rlxf label add-prompts first)")
        best = duels.reported(store, project)
    finally:
        store.close()
    if best["prompt"] is None:
        print("no duel answered yet")
    else:
        print(f"after {best['duels']} answered duels APOHF reports candidate {best['index']}: {best['prompt']!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``rlxf label ...`` alone (``python -m rlxf.app.cli``), as the main CLI does."""
    parser = argparse.ArgumentParser(prog="rlxf")
    add_label_commands(parser.add_subparsers(dest="command", required=True))
    return run_label_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
