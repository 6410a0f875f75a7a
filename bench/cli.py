"""The command line: a thin layer over the library (``python -m bench`` or ``tierbench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bench.errors import UserError

DEFAULT_SCENARIOS = "scenarios/smoke.yaml"


def _run(args: argparse.Namespace) -> int:
    from bench.presets import apply, runnable
    from bench.scenario import load_many
    from bench.sweep import run_status, sweep

    scenarios, skipped = runnable(apply(load_many(args.paths), args.preset))
    for message in skipped:
        print(message, file=sys.stderr)
    if not scenarios:
        print("nothing to run on this machine")
        return 0
    figures = str(Path(args.out) / "figures") if args.figures else None
    store = sweep(scenarios, args.out, seeds=args.seeds, force=args.force, show_progress=not args.quiet, figures=figures)
    counts = run_status(store)
    print(f"wrote {store.jsonl} and {store.csv}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    _store_table1(Path(args.out))
    return 0


def _store_table1(out: Path) -> None:
    """Table 1 depends on the code, not on results: store it beside the runs so ``report`` copies it
    without importing the components."""
    from bench.table1 import write_table1

    write_table1(out)


def _validate(args: argparse.Namespace) -> int:
    from bench.scenario import load_many

    paths = args.paths or ["scenarios"]
    scenarios = load_many(paths)
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
    from bench.report import default_out, write_reports, write_study_report

    out = Path(args.out) if args.out else default_out(args.runs)
    if args.study:
        command = args.command_line or ""
        paths = write_study_report(args.runs, out, command)
        print("wrote " + ", ".join(map(str, paths)))
        return 0
    notes = write_reports(args.runs, out, args.scenarios, figures=not args.no_figures)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}/: {', '.join(written)}")
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
    report.add_argument("--out", default=None,
                        help="directory for the report files, the only place written (default: RUNS/report; "
                             "`make bench` passes --out results to publish)")
    report.add_argument("--scenarios", nargs="*", default=[],
                        help="scenario files: keep only stored runs of the scenarios they describe now "
                             "(loads the files and the component registry)")
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
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
