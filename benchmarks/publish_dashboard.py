"""Run the asv suite over the last N commits of main and publish the HTML dashboard.

    python benchmarks/publish_dashboard.py --commits 5 --out dashboard
    python -m http.server -d dashboard 8080        # then open http://localhost:8080

Each commit is built by asv in its virtualenv (``benchmarks/.asv/env``) with
pip's configured indexes (the local registries on these machines) and the CPU
build of torch pinned in ``asv.conf.json``. A commit that does not build is
skipped and named in the closing report. Results accumulate in
``benchmarks/.asv/results``: a rerun measures only what is missing.

asv's page loads jQuery, flot and Bootstrap from CDNs, out of reach offline:
the published page gets the copies that asv 0.5.1 (the last release to ship
them, downloaded once with pip) has of the same libraries.

``--existing`` measures the package installed in this interpreter instead and
records it as HEAD (no builds: for tests, and for a look at the working tree); ``--sample`` runs the first parameter combination of every benchmark
only, so that each still gets a graph.
"""
import argparse
import json
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from asv import util
from asv.machine import MachineCollection
from asv.results import iter_results_for_machine

BENCH_DIR = Path(__file__).resolve().parent
CONFIG = BENCH_DIR / "asv.conf.json"
PATH_KEYS = ("repo", "benchmark_dir", "env_dir", "results_dir", "html_dir")
ASSETS_FROM = "asv==0.5.1"
ASSETS_DIR = BENCH_DIR / ".asv" / "page-assets-asv-0.5.1"
LOCAL_COPIES = {  # end of a CDN address in asv's index.html -> file in asv 0.5.1's www/vendor
    "/jquery-3.3.1.min.js": "jquery-3.3.1.min.js",
    "/flot/0.8.3/jquery.flot.min.js": "jquery.flot-0.8.3.min.js",
    "/flot/0.8.3/jquery.flot.time.min.js": "jquery.flot-0.8.3.time.min.js",
    "/flot/0.8.3/jquery.flot.selection.min.js": "jquery.flot-0.8.3.selection.min.js",
    "/flot/0.8.3/jquery.flot.categories.min.js": "jquery.flot-0.8.3.categories.min.js",
    "/jquery.flot.orderBars.js": "jquery.flot.orderBars.js",
    "/stupidtable.min.js": "stupidtable.js",
    "/md5.min.js": "md5.js",
    "/bootstrap.min.js": "bootstrap-3.1.0.min.js",
    "/bootstrap.min.css": "bootstrap-3.1.0.min.css",
}
CDN_TAG = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"[^>]*>')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=None, metavar="N",
                   help="benchmark the last N commits of main (first parent; default 5)")
    p.add_argument("--quick", action="store_true",
                   help="asv --quick: one run per benchmark, no repeats (rough numbers)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / ".asv" / "html",
                   help="folder for the published dashboard (default benchmarks/.asv/html)")
    p.add_argument("--results", type=Path, default=BENCH_DIR / ".asv" / "results",
                   help="asv results folder (default benchmarks/.asv/results)")
    select = p.add_mutually_exclusive_group()
    select.add_argument("--bench", action="append", metavar="REGEX",
                        help="run only benchmarks matching REGEX (repeatable; asv --bench)")
    select.add_argument("--sample", action="store_true",
                        help="run only the first parameter combination of each benchmark")
    p.add_argument("--existing", action="store_true",
                   help="measure the package installed in this Python, recorded as HEAD")
    args = p.parse_args(argv)
    if args.existing and args.commits is not None:
        p.error("--existing measures the installed package as HEAD only: drop --commits")
    if args.commits is None:
        args.commits = 1 if args.existing else 5
    if args.commits < 1:
        p.error(f"--commits must be at least 1, got {args.commits}")
    return args


def write_config(args, folder):
    """asv.conf.json with every path absolute (asv resolves them from the config's folder)."""
    conf = util.load_json(str(CONFIG), js_comments=True)
    for key in PATH_KEYS:
        conf[key] = str((BENCH_DIR / conf[key]).resolve())
    conf["results_dir"], conf["html_dir"] = str(args.results.resolve()), str(args.out.resolve())
    path = Path(folder) / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=1))
    return conf, path


def git(*argv):
    return subprocess.run(["git", *argv], cwd=BENCH_DIR, check=True, text=True,
                          capture_output=True).stdout.split()


def first_combinations():
    """asv --bench regexes selecting the first parameter combination of every benchmark."""
    from asv_runner.discovery import disc_benchmarks

    sys.path.insert(0, str(BENCH_DIR))
    regexes = []
    for bench in disc_benchmarks(str(BENCH_DIR / "benchmarks")):
        name = bench.name
        if bench.params:
            name += "(" + ", ".join(values[0] for values in bench.params) + ")"
        regexes.append("^" + re.escape(name) + "$")
    return regexes


def commit_status(results_dir, machine, commits):
    """One line per commit: how many benchmarks have data points, or why none do."""
    by_hash = {}
    for res in iter_results_for_machine(str(results_dir), machine):
        by_hash.setdefault(res.commit_hash, []).append(res)
    lines, measured = [], 0
    for commit in commits:
        found = by_hash.get(commit, [])
        keys = [(r, k) for r in found for k in r.get_all_result_keys()]
        with_data = {k for r, k in keys if _has_data(r.get_result_value(k, r.get_result_params(k)))}
        if with_data:
            measured += 1
            lines.append(f"{commit[:8]} measured: {len(with_data)} benchmarks with data points")
        elif not found:
            lines.append(f"{commit[:8]} skipped: no results (see asv's log above)")
        elif all(r.duration.get(k) is None for r, k in keys):  # asv times only what it ran
            lines.append(f"{commit[:8]} skipped: it did not build, or the suite could not "
                         "import it (asv's log above says which)")
        else:
            lines.append(f"{commit[:8]} skipped: every benchmark failed (asv's log above says why)")
    return lines, measured


def _has_data(values):
    values = values if isinstance(values, list) else [values]
    return any(v is not None and v == v for v in values)  # neither failed nor skipped (nan)


def page_assets():
    """Folder with the local copies of the page's libraries, fetched with pip on first use."""
    if not all((ASSETS_DIR / name).is_file() for name in LOCAL_COPIES.values()):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--no-binary", ":all:", "-d", tmp, ASSETS_FROM], check=True)
            with tarfile.open(next(Path(tmp).glob("asv-*.tar.gz"))) as sdist:
                ASSETS_DIR.mkdir(parents=True, exist_ok=True)
                for member in sdist.getmembers():
                    name = Path(member.name).name
                    if "/www/vendor/" in member.name and name in LOCAL_COPIES.values():
                        (ASSETS_DIR / name).write_bytes(sdist.extractfile(member).read())
    return ASSETS_DIR


def make_offline(html_dir):
    """Point the published page's CDN scripts and stylesheet at local copies in vendor/."""
    vendor = Path(html_dir) / "vendor"
    vendor.mkdir(exist_ok=True)
    assets = page_assets()

    def local(tag):
        kind, url = tag.group(1), tag.group(2)
        name = next((f for end, f in LOCAL_COPIES.items() if url.endswith(end)), None)
        if name is None:
            sys.exit(f"asv's page loads {url}, which has no local copy: add it to LOCAL_COPIES")
        (vendor / name).write_bytes((assets / name).read_bytes())
        if kind == "link":
            return f'<link rel="stylesheet" href="vendor/{name}">'
        return f'<script src="vendor/{name}" onerror="js_load_failure()">'

    index = Path(html_dir) / "index.html"
    index.write_text(CDN_TAG.sub(local, index.read_text()))


def main(argv=None):
    args = parse_args(argv)
    machine = platform.node()
    with tempfile.TemporaryDirectory() as tmp:
        conf, config = write_config(args, tmp)
        asv = [sys.executable, "-m", "asv", "--config", str(config)]
        try:
            MachineCollection.load(machine)
        except util.UserError:  # first use: describe this machine with asv's defaults
            subprocess.run(asv + ["machine", "--yes", "--machine", machine], check=True,
                           stdout=subprocess.DEVNULL)
        run = asv + ["run", "--machine", machine]
        if args.existing:
            commits = git("rev-parse", "HEAD")
            run += ["-E", f"existing:{sys.executable}", "--set-commit-hash", commits[0]]
            print(f"measuring the installed package (working tree), recorded as HEAD {commits[0][:8]}")
        else:
            commits = git("rev-list", "--first-parent", "-n", str(args.commits), conf["branches"][0])
            hashfile = Path(tmp) / "commits.txt"
            hashfile.write_text("\n".join(commits) + "\n")
            # failed builds and benchmarks are retried; a --sample run's gaps are filled
            run += [f"HASHFILE:{hashfile}", "--skip-existing-successful"]
        if args.quick:
            run.append("--quick")
        for regex in first_combinations() if args.sample else args.bench or []:
            run += ["--bench", regex]
        # asv exits 2 when a benchmark or a build failed: the report below says which
        if subprocess.run(run).returncode not in (0, 2):
            sys.exit("asv run failed before measuring anything (its log above says why)")
        lines, measured = commit_status(args.results, machine, commits)
        print("\n".join(["", "commits:"] + ["  " + line for line in lines]))
        if not measured:
            sys.exit("no commit has data points: nothing to publish")
        subprocess.run(asv + ["publish"], check=True)
    make_offline(args.out)
    print(f"dashboard published in {args.out}: python -m http.server -d {args.out} 8080")


if __name__ == "__main__":
    main()
