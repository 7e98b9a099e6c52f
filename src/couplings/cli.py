"""The ``couplings`` command: list, run and reproduce the experiments.

Usage::

    couplings list [--verbose]
    couplings run NAME [--quick] [--seed N] [--out DIR] [--fresh] [--no-progress] [key=value ...]
    couplings reproduce [--quick] [--seed N] [--out DIR] [--fresh] [--no-progress]

``key=value`` sets a field of the experiment's config dataclass (``couplings list --verbose``
shows them), e.g. ``couplings run ot-accuracy --quick n=128 eps_rel=1,0.1,0.01``. Results go to
``DIR/NAME/`` (``metrics.json``, ``report.md``, ``report.html``, figures); ``reproduce`` also
writes ``DIR/index.md`` and ``DIR/index.html``. A killed run resumes from
``DIR/NAME/checkpoint.pt`` when rerun with the same settings; ``--fresh`` starts over.

Exit codes: 0 success, 1 an experiment failed, 2 bad command line (unknown experiment or config
key, unparsable value), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import typing
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "couplings"


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seed must be a non-negative integer, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {value}")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="use the quick setting (a minute or two on a laptop)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the run (default 0)")
    parser.add_argument("--out", default="results", metavar="DIR",
                        help="results directory (default: results)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore an existing checkpoint and start over")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bars (default: shown when stderr is a terminal)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``couplings`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the experiments of the couplings library and write their reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list the experiments")
    listing.add_argument("-v", "--verbose", action="store_true",
                         help="also show each config field, its type, full and quick values")

    run = commands.add_parser(
        "run", help="run one experiment",
        description="Run one experiment into DIR/NAME/. key=value pairs override fields of its "
                    "config, e.g. n=128 eps_rel=1,0.1,0.01 (see couplings list --verbose).",
    )
    run.add_argument("name", metavar="NAME", help="experiment name (see couplings list)")
    _add_run_options(run)
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    reproduce = commands.add_parser(
        "reproduce", help="run every experiment and write an index report",
        description="Run every registered experiment and write DIR/index.md and index.html.",
    )
    _add_run_options(reproduce)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _list(verbose: bool) -> int:
    from . import experiments
    from .experiments.overrides import config_fields

    width = max((len(n) for n in experiments.names()), default=0)
    for exp in experiments.all_experiments():
        print(f"{exp.name:<{width}}  {exp.description}")
        if verbose:
            full, quick = exp.config(), exp.config(quick=True)
            for name, tp in config_fields(exp.config_type).items():
                tp_name = str(tp).replace("typing.", "") if typing.get_args(tp) else tp.__name__
                full_value, quick_value = getattr(full, name), getattr(quick, name)
                extra = "" if full_value == quick_value else f"   (quick: {quick_value!r})"
                print(f"    {name}: {tp_name} = {full_value!r}{extra}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from . import experiments
    from .experiments.overrides import OverrideError, apply_overrides
    from .experiments.runner import run_experiment

    try:
        experiment = experiments.get(args.name)
    except KeyError as exc:
        return _error(exc.args[0])
    try:
        config = apply_overrides(experiment.config(quick=args.quick), args.overrides)
    except OverrideError as exc:
        return _error(f"{experiment.name}: {exc}")
    record = run_experiment(experiment, config, seed=args.seed, out=args.out, quick=args.quick,
                            fresh=args.fresh, show_progress=args.progress)
    print(f"{experiment.name}: done in {record.wall_time_s:.1f} s")
    for path in (record.files.markdown, record.files.html, record.files.metrics):
        print(f"  {path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from . import experiments
    from .experiments.runner import reproduce

    entries = reproduce(experiments.all_experiments(), out=args.out, quick=args.quick,
                        seed=args.seed, fresh=args.fresh, show_progress=args.progress)
    for entry in entries:
        status = "ok" if entry.ok else f"FAILED ({entry.error})"
        print(f"{entry.name}: {status}")
    print(f"index: {args.out}/index.md, {args.out}/index.html")
    return 0 if all(e.ok for e in entries) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``couplings`` command; returns the exit code.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Example:
        >>> main(["list"])  # doctest: +ELLIPSIS
        ot-accuracy...Sinkhorn vs exact OT...
        0
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # key=value pairs after an option land here (argparse stops at options)
            if args.command != "run" or any(t.startswith("-") for t in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = [*args.overrides, *extra]
    except SystemExit as exc:  # argparse's usage errors (code 2) and --help (code 0)
        return exc.code if isinstance(exc.code, int) else 2

    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    try:
        if args.command == "list":
            return _list(args.verbose)
        if args.command == "run":
            return _run(args)
        return _reproduce(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; rerun the same command to resume from the checkpoint.",
              file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
