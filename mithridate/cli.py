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


def _add_datasets(sub):
    p = sub.add_parser(
        "datasets", help="show which data sets are present and check their sha256",
        description="Data sets are looked for in $MITHRIDATE_DATA/<folder>/, then in "
                    "~/.cache/mithridate/<folder>/ ($XDG_CACHE_HOME honoured).")
    act = p.add_subparsers(dest="action", required=True)
    act.add_parser("list", help="a table of data sets and where their files were found")
    v = act.add_parser("verify", help="check the sha256 of present files (exit 1 if any is "
                                      "corrupt)")
    v.add_argument("names", nargs="*", metavar="NAME", help="data sets (default: all)")
    p.set_defaults(func=_datasets)


def _datasets(args):
    from . import datasets
    from .datasets import status
    if args.action == "list":
        rows = [("name", "folder", "where", "files")] + status.list_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
        return 0
    try:
        names = [datasets.check_name(n) for n in args.names] or list(datasets.SOURCES)
    except ValueError as e:
        print(f"mithridate datasets verify: {e}", file=sys.stderr)
        return 2
    counts = {}
    for name in names:
        if name not in datasets.SOURCES:
            print(f"{'embedded':10} {name}: installs with its package, nothing to verify")
            continue
        for state, label, detail in status.verify_rows(datasets.SOURCES[name]):
            counts[state] = counts.get(state, 0) + 1
            print(f"{state.upper():10} {label}  {detail}")
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to verify")
    return 1 if counts.get("corrupt") else 0


# One entry per subcommand; sweep, reproduce and datasets slot in here.
COMMANDS = (_add_bench, _add_datasets)


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
