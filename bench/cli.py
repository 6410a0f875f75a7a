"""The command line: a thin layer over the library (``python -m bench`` or ``tierbench``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bench.api.errors import UserError

DEFAULT_SCENARIO = "smoke.yaml"
EXIT_FAILED = 1
"""``run``: some run (or one of its attacks) failed; rerunning the same command retries only those."""
EXIT_USER_ERROR = 2
"""A mistake in the input (scenario file, command line), reported without a traceback."""
PLUGINS_ENV = "TIERBENCH_PLUGINS"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def scenario_root() -> Path | None:
    """``scenarios/`` in the working directory, else the one beside the package (a checkout or an
    editable install), else None (a wheel installed elsewhere ships no scenario files)."""
    for folder in (Path("scenarios"), PROJECT_ROOT / "scenarios"):
        if folder.is_dir():
            return folder
    return None


def _scenarios_or_explain() -> Path:
    root = scenario_root()
    if root is None:
        raise UserError(f"no scenarios/ folder in {Path.cwd()} nor beside TierBench ({PROJECT_ROOT}): run from a "
                        "TierBench checkout (git clone, then `make bench`), or pass scenario files")
    return root


def check_paths(paths: list[str]) -> None:
    """A relative path that is missing here but exists in the TierBench checkout: say where to run from."""
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_absolute() and (PROJECT_ROOT / path).exists():
            raise UserError(f"{given} does not exist in {Path.cwd()}; TierBench's own is {PROJECT_ROOT / path} "
                            f"(run from {PROJECT_ROOT}, or give that path)")


def _seed_count(text: str) -> int:
    """``--seeds N``: bounded like a file's ``seeds`` (argparse turns the ValueError into exit 2)."""
    from bench.spec.scenario import MAX_SEEDS

    count = int(text)
    if not 1 <= count <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"a seed count must be in 1..{MAX_SEEDS}, got {count}")
    return count


def _run(args: argparse.Namespace) -> int:
    from bench.engine.sweep import planned_runs, summarize, sweep
    from bench.spec.presets import apply, runnable
    from bench.spec.scenario import check_all, load_many
    from bench.store.results import ResultStore

    paths = args.paths or [str(_scenarios_or_explain() / DEFAULT_SCENARIO)]
    check_paths(paths)
    scenarios, skipped = runnable(apply(load_many(paths), args.preset))
    for message in skipped + check_all(scenarios):  # data files, columns, model paths: before any run
        print(message, file=sys.stderr)
    if not scenarios:
        print("nothing to run on this machine")
        return 0
    figures = str(Path(args.out) / "figures") if args.figures else None
    runs = planned_runs(scenarios, ResultStore(args.out), args.seeds)  # before the sweep adds to the store
    store = sweep(scenarios, args.out, seeds=args.seeds, force=args.force, show_progress=not args.quiet, figures=figures,
                  executor=_executor(args))
    summary = summarize(store, runs)
    print(f"wrote {store.jsonl} and {store.csv}")
    print("\n".join(summary.lines()))
    _store_table1(Path(args.out))
    return EXIT_FAILED if summary.failed else 0


def _executor(args: argparse.Namespace):
    """The executor ``--executor`` names, configured by ``--workers`` / ``--address`` where it takes them."""
    import dataclasses

    from bench.engine.executors import executor_class

    cls = executor_class(args.executor)
    keys = {f.name for f in dataclasses.fields(cls.Config)}
    given = {"workers": args.workers, "address": args.address}
    for key, value in given.items():
        if value is not None and key not in keys:
            raise UserError(f"--{key} does not apply to the {args.executor} executor", key=f"--{key}")
    values = {k: v for k, v in given.items() if v is not None}
    if "plugins" in keys:
        values["plugins"] = tuple(plugin_dirs(args))
    return cls(cls.Config(**values))


def _worker_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= 4096:
        raise argparse.ArgumentTypeError(f"a worker count must be in 1..4096, got {count}")
    return count


def _store_table1(out: Path) -> None:
    """Table 1 depends on the code, not on results: store it beside the runs so ``report`` copies it
    without importing the components."""
    from bench.reporting.table1 import write_table1

    write_table1(out)


def _validate(args: argparse.Namespace) -> int:
    from bench.spec.scenario import check_all, load_many

    paths = args.paths or [str(_scenarios_or_explain())]
    check_paths(paths)
    scenarios = load_many(paths)
    for note in check_all(scenarios):
        print(f"note: {note}", file=sys.stderr)
    print(f"ok: {len(scenarios)} scenarios in {', '.join(map(str, paths))}")
    return 0


def summary_of(cls: type) -> str:
    """A component's one-line description: its class docstring, else its module's."""
    import sys as _sys

    text = cls.__doc__ or getattr(_sys.modules.get(cls.__module__), "__doc__", None) or ""
    return text.strip().splitlines()[0] if text.strip() else ""


def type_name(hint: object) -> str:
    """A config field's type as a user reads it: ``int``, ``float or null``, ``one of 'a', 'b'``."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or hint is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def config_lines(config_cls: type) -> list[str]:
    """``key: type = default`` and the field's doc, for every field of a config dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    lines = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f"= {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            default = "(a section: its keys are listed apart)" if dataclasses.is_dataclass(value) else f"= {value!r}"
        else:
            default = "(required)"
        lines.append(f"{f.name}: {type_name(hints.get(f.name, f.type))} {default}  {f.metadata.get('doc', '')}".rstrip())
    return lines


def _ls(args: argparse.Namespace) -> int:
    from bench.api.registry import ATTACKS, DEFENSES, METHODS, MODELS, TASKS, TIERS

    if args.verbose:
        from bench.spec import scenario

        sections = [("scenario file (top-level keys)", getattr(scenario, "ScenarioSpec", None)),
                    ("federation (scenario key `federation:`)", scenario.Federation)]
        for title, config in sections:
            if config is not None:
                print(f"{title}:")
                for line in config_lines(config):
                    print(f"      {line}")
    for registry in (TIERS, MODELS, TASKS, METHODS, ATTACKS, DEFENSES):
        print(f"{registry.kind}s:")
        for name in registry.names():
            cls = registry.get(name)
            print(f"  {name:24s} {summary_of(cls)}")
            if args.verbose:
                for line in config_lines(cls.Config):
                    print(f"      {line}")
    root = scenario_root()
    print(f"scenario files ({root}):" if root else "scenario files: none found (see `tierbench validate --help`)")
    for path in sorted(root.rglob("*.yaml")) if root else []:
        print(f"  {path}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from bench.reporting.report import metric_table

    print(metric_table(args.results, metrics=args.metric))
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.reporting.report import default_out, write_reports, write_study_report

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
    from bench.reporting.table1 import write_table1

    csv_path, md_path = write_table1(Path(args.out))
    print(f"wrote {csv_path} and {md_path}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run, "validate": _validate, "ls": _ls, "table": _table,
                                                           "report": _report, "table1": _table1}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierbench", description="Privacy attacks and defenses in federated post-training.")
    sub = p.add_subparsers(dest="command", required=True)
    plugins = argparse.ArgumentParser(add_help=False)
    plugins.add_argument("--plugins", action="append", default=[], metavar="DIR",
                         help="also load the attack, defense, method, task, model and tier modules in DIR "
                              f"(repeatable; also ${PLUGINS_ENV}, {os.pathsep}-separated)")
    run = sub.add_parser("run", parents=[plugins], help="run scenario files (a grid expands) and write results")
    run.add_argument("paths", nargs="*", default=[], help=f"scenario files or folders (default: scenarios/{DEFAULT_SCENARIO})")
    run.add_argument("--out", default="results/runs", help="directory for results.jsonl and results.csv")
    run.add_argument("--seeds", type=_seed_count, default=None,
                     help="run seeds 0..N-1 instead of the files' seeds (N in 1..1000)")
    run.add_argument("--force", action="store_true", help="rerun runs already in the results")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--figures", action="store_true", help="a log-log ROC figure per run with membership attacks, in OUT/figures")
    run.add_argument("--preset", default="cpu-small", help="size overlay: cpu-small (the files as written) or gpu")
    run.add_argument("--executor", default="serial",
                     help="where runs go: serial (this process), pool (local single-threaded worker processes), "
                          "ray (Ray tasks), auto (pool for CPU runs of zoo models, else serial); one writer either way")
    run.add_argument("--workers", type=_worker_count, default=None,
                     help="pool/auto: worker processes; ray: CPUs of the local instance, or runs in flight on a "
                          "cluster (default: one per core)")
    run.add_argument("--address", default=None, help="ray: an existing cluster's address (default: start a local instance)")
    validate = sub.add_parser("validate", parents=[plugins], help="load and check scenario files")
    validate.add_argument("paths", nargs="*")
    ls = sub.add_parser("ls", parents=[plugins], help="list registered components and scenario files")
    ls.add_argument("-v", "--verbose", action="store_true", help="also list each component's config keys")
    table = sub.add_parser("table", help="print a results table")
    table.add_argument("results", nargs="?", default="results/runs/results.jsonl")
    table.add_argument("--metric", action="append",
                       help="show these metrics (repeatable; default: the headline ones that have values)")
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
    table1 = sub.add_parser("table1", parents=[plugins], help="write Table 1 (tier x method) as CSV and markdown")
    table1.add_argument("--out", default="results")
    return p


def plugin_dirs(args: argparse.Namespace) -> list[str]:
    from_env = [d for d in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if d]
    return from_env + list(getattr(args, "plugins", []) or [])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if hasattr(args, "plugins") and plugin_dirs(args):  # report and table load no components: no plugins
            from bench.api.registry import load_plugin_dir

            for directory in plugin_dirs(args):
                load_plugin_dir(directory)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tierbench table | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
