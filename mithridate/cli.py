"""The ``mithridate`` command line.

Each subcommand is a function in ``COMMANDS`` that adds its parser and sets
``func``, the callable that runs it and returns an exit code. Heavy modules
(numba, torch) are imported inside those callables so ``mithridate --help``
stays fast.
"""
import argparse
import json
import sys

from . import __version__


def _add_bench(sub):
    from .bench import CANDIDATES, OPS  # light: numpy and the backend registry only
    p = sub.add_parser(
        "bench", help="time the hot paths against the torch reference and the memory roof",
        description="Measure the read-bandwidth roof, then time each op, backend, shape and "
                    "dtype against the torch reference in the same process.")
    p.add_argument("--quick", action="store_true", help="small shapes only (under 30 s)")
    p.add_argument("--json", action="store_true",
                   help="print only a JSON list of records on stdout (notes go to stderr)")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), metavar="OP",
                   help=f"ops to time (default: all of {', '.join(OPS)})")
    p.add_argument("--backends", nargs="+", choices=CANDIDATES, default=list(CANDIDATES),
                   metavar="BACKEND",
                   help=f"backends to time against the reference (default: all of "
                        f"{', '.join(CANDIDATES)}; unavailable ones are skipped with a note)")
    p.set_defaults(func=_bench)


def _bench(args):
    from . import bench
    records, notes = bench.run(args.ops, args.backends, quick=args.quick,
                               progress=not args.quick)
    if args.json:
        print("\n".join(notes), file=sys.stderr)
        print(json.dumps(records, indent=1))
    else:
        print("\n".join(notes))
        if records:
            print(bench.format_table(records))
    return 0 if records else 1


# One entry per subcommand; sweep, reproduce and datasets slot in here.
COMMANDS = (_add_bench,)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mithridate", description="Fast engine for data-poisoning research.")
    parser.add_argument("--version", action="version", version=f"mithridate {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Run the command line on `argv` (default sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2)
        return e.code
    return args.func(args)
