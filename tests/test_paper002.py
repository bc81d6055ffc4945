"""Paper-002 figures through `mithridate reproduce --quick`, and their computed summaries."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mithridate import cli
from mithridate.experiments import get_figure

DATA = Path(os.environ.get("MITHRIDATE_DATA", "/nonexistent"))
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(),
                                reason="MITHRIDATE_DATA does not hold ../shared/data")


def _reproduce(name, out):
    assert cli.main(["reproduce", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    frame = pd.read_csv(out / "results.csv")
    summary = (out / "summary.md").read_text()
    return frame, summary, sorted(p.name for p in out.glob("*.png"))


def test_fig1_quick_through_cli(tmp_path):
    frame, summary, pngs = _reproduce("paper002-fig1", tmp_path)
    assert sorted(frame["panel"]) == ["l2", "lam", "plain"]
    assert pngs == ["paper002_fig1.png"]
    plain = frame[frame["panel"] == "plain"].iloc[0]
    # the optimal point hurts the unregularised model on the validation set
    assert plain["val_error_poisoned"] >= plain["val_error_clean"]
    assert summary.count("HOLD") == 3  # three claims, each stated as holding or not
    assert f"{plain['val_error_clean']:.3f}" in summary


@needs_data
def test_fig2_quick_through_cli_and_resume(tmp_path):
    frame, summary, pngs = _reproduce("paper002-fig2-mnist", tmp_path)
    assert set(frame["setting"]) == {"-8", "large", "clean", "rmd"}
    assert sorted(frame["n_points"].unique()) == [0, 4, 8]
    for col in ("test_error", "fpr", "fnr", "w_norm2", "lam"):
        assert frame[col].between(0, np.inf).all() or col == "lam"
    # fixed settings keep their lam; the large one is the top of lam_range
    assert (frame.loc[frame["setting"] == "-8", "lam"] == -8).all()
    assert np.allclose(frame.loc[frame["setting"] == "large", "lam"], np.log(200))
    assert pngs == ["mnist_fig2_lam_wnorm.png", "mnist_fig2_test_error.png",
                    "mnist_fig4_rates.png", "mnist_fig6_histograms.png", "mnist_fig8_9_points.png"]
    assert summary.count("HOLD") == 5
    before = (tmp_path / "results.sqlite").stat().st_mtime_ns
    assert cli.main(["reproduce", "paper002-fig2-mnist", "--quick", "--out", str(tmp_path)]) == 0
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(frame)  # resumed, nothing redone
    assert (tmp_path / "results.sqlite").stat().st_mtime_ns >= before


def _fake_fig2(lam_rmd, err_rmd_top):
    rows = []
    for seed in (0, 1):
        for s in ("-8", "large", "clean", "rmd"):
            for j, n in enumerate((0, 17, 34)):
                err = {"-8": 0.01 + 0.1 * j, "large": 0.05 + 0.01 * j, "clean": 0.01 + 0.09 * j,
                       "rmd": 0.01 + (err_rmd_top / 2) * j}[s]
                rows.append(dict(dataset="mnist", setting=s, n_points=n, seed=seed, n_train=512,
                                 fraction=n / 512, test_error=err, fpr=err, fnr=err,
                                 w_norm2=10.0 / (1 + j) if s == "rmd" else 5.0,
                                 lam=lam_rmd[j] if s == "rmd" else 0.0, val_loss=0.1,
                                 attack_seconds=1.0))
    return pd.DataFrame(rows)


def test_fig2_summary_is_computed_from_the_numbers():
    summary = get_figure("paper002-fig2-mnist").summary
    good = summary(_fake_fig2([1.6, 2.0, 3.0], 0.06))
    assert good.count("- HOLDS") == 5 and "DOES NOT HOLD" not in good
    assert "1.60 at 0 points to 3.00 at 34" in good
    bad = summary(_fake_fig2([1.6, 1.4, 1.2], 0.5))
    assert "DOES NOT HOLD: the learned lam grows" in bad
    assert "DOES NOT HOLD: under the strongest attack" in bad
