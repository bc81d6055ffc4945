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
        "bench", help="time every (hot path, backend) against a reference and the memory roof",
        description="Measure the read-bandwidth roof, then time each op, backend, shape and "
                    "dtype against the reference (torch; numpy floats for the fixed point) in "
                    "the same process. Pairs the backend registry lacks or this machine cannot "
                    "run are listed as skipped, with the reason.")
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


def _add_executor_options(p):
    from .experiments.runner import RAY_CONNECT_SECONDS  # light: no pandas, no ray
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process, or a process pool with --workers > 1; "
                        "ray: a Ray cluster (a local one unless --address)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes for the local pool, CPUs for a local Ray cluster (default 1)")
    p.add_argument("--address", metavar="ADDR",
                   help="join this Ray cluster (e.g. auto, host:6379 or ray://host:10001); "
                        "needs --executor ray; a host:port where nothing answers within "
                        f"{RAY_CONNECT_SECONDS:g} s is refused (exit 2)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr")


def _add_sweep(sub):
    p = sub.add_parser(
        "sweep", help="run a sweep spec (TOML); rerunning it resumes",
        description="Run every config of the spec's grid x seeds, committing each finished "
                    "batch to OUT/results.sqlite; rerunning the same command skips the configs "
                    "already there. Ends with a table of mean and std per parameter set.")
    p.add_argument("spec", metavar="SPEC", help="TOML file: name, experiment, seeds, [grid], "
                                                "[fixed]")
    p.add_argument("--out", metavar="DIR", help="results directory (default: results/NAME)")
    p.add_argument("--export", metavar="PATH", help="also write the results to PATH (.csv or "
                                                   ".parquet)")
    _add_executor_options(p)
    p.set_defaults(func=_sweep)


def _check_run_args(args):
    """Argument errors the parser cannot see, before any work starts."""
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give a positive number of workers")
    if args.address is not None and args.executor != "ray":
        raise ValueError("--address joins a Ray cluster: add --executor ray")
    export = getattr(args, "export", None)
    if export is not None:
        from pathlib import Path
        if Path(export).suffix not in (".csv", ".parquet"):
            raise ValueError(f"--export {export}: the path must end in .csv or .parquet")
        if not Path(export).resolve().parent.is_dir():
            raise ValueError(f"--export {export}: directory {Path(export).parent} does not exist")


def _guarded(command, work):
    """(work(), 0); or (None, exit code) with the message on stderr: 2 for bad
    input (spec, store, arguments; SpecError and StoreError are ValueErrors),
    1 for an experiment that failed."""
    from .experiments import SweepError
    try:
        return work(), 0
    except ValueError as e:
        code, error = 2, e
    except SweepError as e:
        code, error = 1, e
    print(f"mithridate {command}: {error}", file=sys.stderr)
    return None, code


def _sweep(args):
    from pathlib import Path
    from .experiments import SweepSpec, run_sweep
    from .experiments.runner import format_summary

    def work():
        _check_run_args(args)
        spec = SweepSpec.from_toml(args.spec)
        out = Path(args.out) if args.out else Path("results") / spec.name
        return spec, out, run_sweep(spec, out, args.executor, args.workers, args.address,
                                    args.progress)
    done, code = _guarded("sweep", work)
    if done is None:
        return code
    spec, out, frame = done
    print(format_summary(frame, spec))
    print(f"{len(frame)} configs in {out / 'results.sqlite'}")
    if args.export:
        from .experiments import ResultsStore
        with ResultsStore(out, spec) as store:
            print(f"exported to {store.export(args.export)}")
    return 0


def _add_reproduce(sub):
    p = sub.add_parser(
        "reproduce", help="run a registered figure and write its CSV, PNGs and summary",
        description="Run the figure's sweep (resumable, like `mithridate sweep`), then write "
                    "results.csv, its PNGs and summary.md to --out.")
    p.add_argument("name", nargs="?", metavar="NAME", help="figure name (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered figures")
    p.add_argument("--quick", action="store_true", help="a reduced grid that runs in seconds")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: results/NAME, results/NAME-quick)")
    _add_executor_options(p)
    p.set_defaults(func=_reproduce)


def _reproduce(args):
    from pathlib import Path
    from .experiments import FIGURES, get_figure, load_builtin, run_sweep
    if args.list:
        load_builtin()
        width = max(map(len, FIGURES), default=0)
        for name, figure in sorted(FIGURES.items()):
            print(f"{name.ljust(width)}  {figure.description}")
        return 0

    def work():
        if args.name is None:
            raise ValueError("give a figure NAME or --list")
        _check_run_args(args)
        figure = get_figure(args.name)
        out = Path(args.out) if args.out else \
            Path("results") / (f"{args.name}-quick" if args.quick else args.name)
        spec = figure.spec(args.quick)
        return figure, spec, out, run_sweep(spec, out, args.executor, args.workers,
                                            args.address, args.progress)
    done, code = _guarded("reproduce", work)
    if done is None:
        return code
    figure, spec, out, frame = done
    from .experiments import ResultsStore
    with ResultsStore(out, spec) as store:  # the store's atomic export, not a second writer
        written = [store.export(out / "results.csv"), *figure.plot(frame, out)]
    summary = figure.summary(frame)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print("wrote " + ", ".join(map(str, written + [out / "summary.md"])))
    return 0


def _add_warmup(sub):
    from .warmup import DTYPES, JOBS
    p = sub.add_parser(
        "warmup", help="compile every numba kernel now (minutes, once per install), so first calls are fast",
        description="Fill numba's on-disk cache (beside the installed kernels, or NUMBA_CACHE_DIR) by running "
                    "every public entry point on tiny problems, one task per process, then check in one more "
                    "process that everything loads from the cache. Run again after upgrading mithridate or numba.")
    p.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), metavar="JOB",
                   help=f"what to compile (default: all of {', '.join(JOBS)})")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), metavar="DTYPE",
                   help="float dtypes to compile for (default: float64 float32)")
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: one per core)")
    p.set_defaults(func=_warmup)


def _warmup(args):
    from .warmup import warmup
    r = warmup(args.jobs, args.dtypes, args.processes, progress=True)
    print(f"compiled {len(r['seconds'])} tasks in {sum(r['seconds'].values()):.0f} s of worker time; "
          "the numba cache is complete" if not any(r["recompiled"].values()) else
          "the final check compiled what concurrent writes dropped: "
          + ", ".join(f"{j}/{d}" for (j, d), v in r["recompiled"].items() if v))
    return 0


# One entry per subcommand.
COMMANDS = (_add_bench, _add_datasets, _add_sweep, _add_reproduce, _add_warmup)


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
