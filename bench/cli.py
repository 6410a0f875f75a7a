"""The command line: a thin layer over the library (``python -m bench`` or ``tierbench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench.errors import UserError

DEFAULT_SCENARIOS = "scenarios/smoke.yaml"
EXIT_FAILED = 1
"""``run``: some run (or one of its attacks) failed; rerunning the same command retries only those."""
EXIT_USER_ERROR = 2
"""A mistake in the input (scenario file, command line), reported without a traceback."""


def _run(args: argparse.Namespace) -> int:
    from bench.presets import apply, runnable
    from bench.results import ResultStore
    from bench.scenario import check_all, load_many
    from bench.sweep import planned_runs, summarize, sweep

    scenarios, skipped = runnable(apply(load_many(args.paths), args.preset))
    for message in skipped + check_all(scenarios):  # data files, columns, model paths: before any run
        print(message, file=sys.stderr)
    if not scenarios:
        print("nothing to run on this machine")
        return 0
    figures = str(Path(args.out) / "figures") if args.figures else None
    runs = planned_runs(scenarios, ResultStore(args.out), args.seeds)  # before the sweep adds to the store
    store = sweep(scenarios, args.out, seeds=args.seeds, force=args.force, show_progress=not args.quiet, figures=figures)
    summary = summarize(store, runs)
    print(f"wrote {store.jsonl} and {store.csv}")
    print("\n".join(summary.lines()))
    return EXIT_FAILED if summary.failed else 0


def _validate(args: argparse.Namespace) -> int:
    from bench.scenario import check_all, load_many

    paths = args.paths or ["scenarios"]
    scenarios = load_many(paths)
    for note in check_all(scenarios):
        print(f"note: {note}", file=sys.stderr)
    print(f"ok: {len(scenarios)} scenarios in {', '.join(map(str, paths))}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from bench.config import field_docs
    from bench.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS

    for registry in (TIERS, MODELS, TASKS, METHODS, ATTACKS, DEFENSES):
        print(f"{registry.kind}s:")
        for name in registry.names():
            cls = registry.get(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"  {name:24s} {summary}")
            if args.verbose:
                for key, text in field_docs(cls.Config).items():
                    print(f"      {key}: {text}")
    scenario_files = sorted(Path("scenarios").rglob("*.yaml")) if Path("scenarios").exists() else []
    print("scenario files:")
    for path in scenario_files:
        print(f"  {path}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from bench.report import metric_table

    print(metric_table(args.results, metrics=args.metric))
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.report import write_reports, write_study_report

    if args.study:
        command = args.command_line or ""
        paths = write_study_report(args.runs, args.out, command)
        print("wrote " + ", ".join(map(str, paths)))
        return 0
    notes = write_reports(args.runs, args.out, args.scenarios, figures=not args.no_figures)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}/leaderboard.csv, table4.csv, table4.md, table1.*, figures/, index.html")
    return 0


def _table1(args: argparse.Namespace) -> int:
    from bench.table1 import write_table1

    csv_path, md_path = write_table1(Path(args.out))
    print(f"wrote {csv_path} and {md_path}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run, "validate": _validate, "ls": _ls, "table": _table,
                                                           "report": _report, "table1": _table1}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierbench", description="Privacy attacks and defenses in federated post-training.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenario files (a grid expands) and write results")
    run.add_argument("paths", nargs="*", default=[DEFAULT_SCENARIOS])
    run.add_argument("--out", default="results/runs", help="directory for results.jsonl and results.csv")
    run.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 instead of the files' seeds")
    run.add_argument("--force", action="store_true", help="rerun runs already in the results")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--figures", action="store_true", help="a log-log ROC figure per run with membership attacks, in OUT/figures")
    run.add_argument("--preset", default="cpu-small", help="size overlay: cpu-small (the files as written) or gpu")
    validate = sub.add_parser("validate", help="load and check scenario files")
    validate.add_argument("paths", nargs="*")
    ls = sub.add_parser("ls", help="list registered components and scenario files")
    ls.add_argument("-v", "--verbose", action="store_true", help="also list each component's config keys")
    table = sub.add_parser("table", help="print a results table")
    table.add_argument("results", nargs="?", default="results/runs/results.jsonl")
    table.add_argument("--metric", action="append", help="only these metrics (repeatable)")
    report = sub.add_parser("report", help="leaderboard, Table 4, Table 1, figures and index.html from results")
    report.add_argument("runs", nargs="?", default="results/runs", help="results directory (or its results.jsonl)")
    report.add_argument("--out", default="results", help="directory for the published files")
    report.add_argument("--scenarios", nargs="*", default=["scenarios/table4.yaml", "scenarios/table4-poisoning.yaml", "scenarios/table4-closed.yaml"],
                        help="scenario files of the runs (to name the attacks of runs that recorded none)")
    report.add_argument("--no-figures", action="store_true", help="skip the figures")
    report.add_argument("--study", action="store_true", help="a study: leaderboard.csv, summary.md, index.html only")
    report.add_argument("--command-line", help="the command that produced the runs, recorded in summary.md")
    table1 = sub.add_parser("table1", help="write Table 1 (tier x method) as CSV and markdown")
    table1.add_argument("--out", default="results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
