"""The shared curve plot: coincidence detection, its caption, log axes, bands."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mithridate.experiments.plots import coinciding, plot_metric_vs_fraction


def series(values, x=(0.0, 0.1, 0.2)):
    return pd.Series(values, index=list(x), dtype=float)


def test_coinciding_groups_exact_near_and_apart():
    means = {"a": series([0.1, 0.2, 0.3]), "b": series([0.1, 0.2, 0.3]),
             "c": series([0.1, 0.205, 0.3]), "d": series([0.5, 0.6, 0.7])}
    assert coinciding(means, 1e-3) == [(["a", "b"], True)]
    assert coinciding(means, 0.01) == [(["a", "b", "c"], False)]
    assert coinciding(means, 1.0) == [(["a", "b", "c", "d"], False)]
    # curves on different x grids, or a single point, never count as coinciding
    assert coinciding({"a": series([0.1, 0.2], x=(0, 1)), "b": series([0.1, 0.2], x=(0, 2))}, 1) == []
    assert coinciding({"a": series([0.1], x=(0,)), "b": series([0.1], x=(0,))}, 1) == []


def frame(curves, seeds=(0, 1, 2), col=None):
    """Rows (setting, beta, seed, metric): the metric of each seed is the curve +- 0.01."""
    rows = []
    for name, ys in curves.items():
        for beta, y in zip((0.0, 0.1, 0.2), ys):
            for s in seeds:
                rows.append({"setting": name, "beta": beta, "seed": s, "panel": col or "p",
                             "metric": y + 0.01 * (s - 1)})
    return pd.DataFrame(rows)


def description(path):
    return Image.open(path).text.get("Description", "")


def test_coinciding_curves_are_named_in_the_png(tmp_path):
    df = frame({"lam = -8": [0.1, 0.2, 0.3], "lam_CLEAN": [0.1, 0.2, 0.3],
                "lam_RMD": [0.1, 0.15, 0.2]})
    path = plot_metric_vs_fraction(df, "metric", tmp_path / "a.png", hue="setting")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert description(path) == "lam = -8 and lam_CLEAN coincide"
    df = frame({"x": [0.1, 0.2, 0.3], "y": [0.1, 0.2, 0.302], "z": [0.5, 0.6, 0.9]})
    path = plot_metric_vs_fraction(df, "metric", tmp_path / "b.png", hue="setting", col="panel")
    assert description(path) == "p: x and y overlap (within 1% of the axis)"
    df = frame({"x": [0.1, 0.2, 0.3], "y": [0.3, 0.2, 0.1]})  # crossing is not coinciding
    assert description(plot_metric_vs_fraction(df, "metric", tmp_path / "c.png", hue="setting")) == ""


def test_far_curve_gets_a_log_axis_and_near_ones_stay_apart(tmp_path):
    # on a linear axis the 0.5/0.55 curves would be within 1% of a 0..30 range
    df = frame({"far": [0.5, 15.0, 30.0], "a": [0.5, 0.5, 0.5], "b": [0.55, 0.55, 0.55]})
    path = plot_metric_vs_fraction(df, "metric", tmp_path / "log.png", hue="setting")
    assert description(path) == ""
    lin = plot_metric_vs_fraction(df[df.setting != "far"], "metric", tmp_path / "lin.png",
                                  hue="setting")
    assert description(lin) == ""


@pytest.mark.parametrize("sharey", [True, False])
def test_panels_without_shared_axis(tmp_path, sharey):
    df = pd.concat([frame({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]}, col="lam"),
                    frame({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.4]}, col="error")])
    path = plot_metric_vs_fraction(df, "metric", tmp_path / "p.png", hue="setting", col="panel",
                                   sharey=sharey)
    assert description(path) == "lam: a and b coincide"
    assert np.asarray(Image.open(path)).shape[1] > 800  # two panels and the legend


def test_log_axis_only_where_it_separates_curves():
    from mithridate.experiments.plots import _log_axis
    far = {"far": series([0.5, 15.0, 30.0]), "a": series([0.5, 0.5, 0.5]), "b": series([0.55] * 3)}
    assert _log_axis([far])
    # wide ratio (a rate near 0), but every curve is already apart on a linear axis
    rates = {"a": series([0.05, 0.18, 0.09]), "b": series([0.015, 0.001, 0.007])}
    assert not _log_axis([rates])
    assert not _log_axis([{**far, "zero": series([0.0, 1.0, 2.0])}])  # zero has no log
