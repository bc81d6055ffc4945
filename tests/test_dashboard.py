"""The published asv dashboard, opened in headless Chromium: every benchmark has a graph.

One dashboard is published for the whole module from the installed package
(``--existing``, recorded as HEAD), with the first parameter combination of each
benchmark run once (``--sample --quick``): every benchmark gets a data point in
well under a minute on two cores.
"""
import functools
import http.server
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("asv", reason="asv is in the bench extra: pip install '.[bench]'")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "publish_dashboard.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is absent: apt-get install chromium (.ci/run does)")
PNG = b"\x89PNG\r\n\x1a\n"


def load_script():
    spec = importlib.util.spec_from_file_location("publish_dashboard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_names_commits_that_did_not_build(tmp_path):
    from asv.machine import Machine
    from asv.results import Results
    from asv.runner import BenchmarkResult, fail_benchmark

    bench = {"name": "bench_x.time_x", "params": [], "version": "1"}
    outcomes = {  # commit -> (what asv stores for its benchmark, the time asv spent running it)
        "a" * 40: (BenchmarkResult([1.5], [[1.5]], [1], 0, "", None), 2.0),
        "b" * 40: (fail_benchmark(bench), None),  # a failed build: nothing was run
        "c" * 40: (fail_benchmark(bench, stderr="ImportError"), 2.0),
    }
    for commit, (outcome, duration) in outcomes.items():
        res = Results({"machine": "m", "python": "3.11"}, {}, commit, 0, "3.11", "env", {})
        res.add_result(bench, outcome, duration=duration)
        res.save(str(tmp_path))
    machine = Machine()
    machine.__dict__.update(machine="m")
    machine.save(str(tmp_path))
    lines, measured = load_script().commit_status(tmp_path, "m", [*outcomes, "d" * 40])
    assert measured == 1
    assert lines == ["aaaaaaaa measured: 1 benchmarks with data points",
                     "bbbbbbbb skipped: it did not build, or the suite could not import it "
                     "(asv's log above says which)",
                     "cccccccc skipped: every benchmark failed (asv's log above says why)",
                     "dddddddd skipped: no results (see asv's log above)"]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(html folder, benchmark names from asv's benchmarks.json) of a freshly published dashboard."""
    tmp = tmp_path_factory.mktemp("dashboard")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--existing", "--sample", "--quick",
         "--results", str(tmp / "results"), "--out", str(tmp / "html")],
        capture_output=True, text=True, timeout=600)  # ~1 min on 2 idle cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(set(json.loads((tmp / "results" / "benchmarks.json").read_text())) - {"version"})
    assert names, "asv discovered no benchmark"
    return tmp / "html", names


@pytest.fixture(scope="module")
def site(dashboard):
    """URL of the dashboard served on the loopback (the page loads its data with XHR)."""
    handler = functools.partial(_QuietHandler, directory=str(dashboard[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/index.html"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium(tmp_path, url, *args, height=900):
    """Run headless Chromium on url until the page's scripts settle; its stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size=1400,{height}",
           "--virtual-time-budget=20000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


@needs_chromium
def test_every_benchmark_has_points_in_the_published_graphs(dashboard):
    html, names = dashboard
    index = json.loads((html / "index.json").read_text())
    assert sorted(index["benchmarks"]) == names
    for name in names:
        summary = json.loads((html / "graphs" / "summary" / f"{name}.json").read_text())
        assert any(y is not None for _, y in summary), f"{name}: no point in its summary graph"
        # the per-benchmark page plots these: one file per machine/python/branch
        graphs = [json.loads(p.read_text()) for p in (html / "graphs").rglob(f"{name}.json")
                  if p.parent.name != "summary"]
        points = [y for graph in graphs for _, ys in graph
                  for y in (ys if isinstance(ys, list) else [ys]) if y is not None]
        assert points, f"{name}: its graph has no data point (did its first combination run?)"


@needs_chromium
def test_the_grid_page_draws_a_plot_for_every_benchmark(dashboard, site, tmp_path):
    _, names = dashboard
    # thumbnails are drawn when scrolled into view: a window tall enough for all of them
    dom = chromium(tmp_path, site, "--dump-dom", height=300 * len(names) + 1000)
    assert "airspeed velocity error" not in dom, "the page's scripts failed to load"
    cells = dict(chunk.split('"', 1) for chunk in dom.split('id="summarygrid-')[1:])
    missing = [n for n in names if 'class="flot-base"' not in cells.get(n, "")]
    assert not missing, f"no plot drawn for {missing}"


@needs_chromium
def test_a_benchmark_page_plots_its_graph_and_screenshots(dashboard, site, tmp_path):
    _, names = dashboard
    page = f"{site}#{names[0]}"
    dom = chromium(tmp_path, page, "--dump-dom")
    graph = dom.split('id="main-graph"', 1)[-1].split('id="overview"', 1)[0]
    assert 'class="flot-base"' in graph, f"{names[0]}: no plot on its page"
    shot = tmp_path / "dashboard.png"
    chromium(tmp_path, page, f"--screenshot={shot}")
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000, shot
    print(f"screenshot of {names[0]}'s page: {shot}")
