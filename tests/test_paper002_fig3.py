"""paper002-fig3 (Figures 3, 5, 7: the attack on the network) through `mithridate
reproduce --quick`, its presets, and its summary computed from the numbers."""
import math
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


@needs_data
def test_fig3_quick_through_cli_and_resume(tmp_path):
    args = ["reproduce", "paper002-fig3", "--quick", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    frame = pd.read_csv(tmp_path / "results.csv")
    summary = (tmp_path / "summary.md").read_text()
    datasets = list(dict.fromkeys(frame["dataset"]))
    assert {"mnist", "fashion-mnist"} <= set(datasets)
    assert set(frame["setting"]) == {"-8", "large", "rmd"}
    assert sorted(frame["n_points"].unique()) == [0, 4, 8]
    assert (frame["preset"] == "quick").all() and (frame["n_features"] == 784).all()
    for col in ("test_error", "fpr", "fnr"):
        assert frame[col].between(0, 1).all()
    for l in (1, 2, 3):  # one lam and one normalised norm per layer
        assert (frame[f"wnorm_{l}"] > 0).all()
        assert (frame.loc[frame["setting"] == "-8", f"lam_{l}"] == -8).all()
        assert np.allclose(frame.loc[frame["setting"] == "large", f"lam_{l}"], math.log(40))
        rmd = frame.loc[frame["setting"] == "rmd", f"lam_{l}"]
        assert rmd.between(-8, math.log(60)).all()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"{ds}_{f}.png" for ds in datasets for f in (
        "fig3_test_error", "fig3_lam", "fig3_layer_norms", "fig5_rates", "fig7_histograms"))
    assert summary.count("HOLD") == 6 * len(datasets)  # six claims per data set
    assert "preset 'quick'" in summary
    assert ("dog-vs-fish" in summary) and ("784 inputs" in summary)
    before = len(frame)
    assert cli.main(args) == 0  # resumed: every config is in the store, nothing rerun
    assert len(pd.read_csv(tmp_path / "results.csv")) == before


def test_fig3_presets():
    paper = get_figure("paper002-fig3").spec(False)
    f = paper.fixed
    # Table 2's network row and Table 3's
    assert (f["T"], f["T_dp"], f["T_mul"], f["T_lam"]) == (600, 100, 150, 75)
    assert (f["alpha"], f["beta"], f["eta"]) == (0.99, 0.03, 0.01)
    assert f["lam_hi"] == math.log(60) and f["lam_large"] == math.log(40)
    assert (f["lr"], f["epochs"], f["hidden1"], f["hidden2"]) == (1e-4, 4000, 128, 32)
    assert paper.seeds == list(range(10)) and f["preset"] == "paper"
    assert paper.grid["n_points"] == [0, 17, 34, 51, 68, 85]
    cpu = get_figure("paper002-fig3-cpu").spec(False)
    assert cpu.fixed["preset"] == "cpu" and cpu.fixed["T"] < 600 and len(cpu.seeds) < 10
    assert cpu.fixed["hidden1"] == 128 and cpu.fixed["n_train"] == 512
    quick = get_figure("paper002-fig3-cpu").spec(True)
    assert quick.fixed["preset"] == "quick" and quick.name == "paper002-fig3-cpu-quick"


def _fake(err, lam, norms, seeds=(0, 1)):
    """Rows of a fig3 frame: err[setting][j], lam[layer][j] (lam_RMD), norms[setting][layer][j]."""
    rows = []
    for seed in seeds:
        for s in ("-8", "large", "rmd"):
            for j, n in enumerate((0, 17, 51, 85)):
                row = dict(dataset="mnist", setting=s, n_points=n, seed=seed, n_train=512,
                           fraction=n / 512, test_error=err[s][j] + 1e-3 * seed, fpr=0.1, fnr=0.1,
                           w_norm2=1.0, val_loss=0.5, attack_seconds=2.0, train_seconds=1.0,
                           n_features=784, hidden1=128, hidden2=32, preset="cpu", T=60, T_dp=4,
                           T_mul=6, T_lam=4, eta=0.05, beta=10.0, lr=0.01, epochs=100)
                for l in range(3):
                    row[f"lam_{l + 1}"] = lam[l][j] if s == "rmd" else {"-8": -8.0,
                                                                        "large": 3.7}[s]
                    row[f"wnorm_{l + 1}"] = norms[s][l][j]
                rows.append(row)
    return pd.DataFrame(rows)


PAPER_LIKE = dict(
    err={"-8": [0.02, 0.06, 0.10, 0.12], "large": [0.05, 0.05, 0.06, 0.06],
         "rmd": [0.01, 0.03, 0.05, 0.055]},
    lam=[[1.6, 1.7, 1.8, 1.9], [1.6, 2.2, 2.8, 3.2], [1.6, 2.5, 3.1, 3.5]],
    norms={s: [[1e-3] * 4, [0.05, 0.04, 0.03, 0.02], [0.5, 0.4, 0.3, 0.2]]
           for s in ("-8", "large", "rmd")})


def test_fig3_summary_is_computed_from_the_numbers():
    summary = get_figure("paper002-fig3").summary
    good = summary(_fake(**PAPER_LIKE))
    assert good.count("- HOLDS") == 6 and "DOES NOT HOLD" not in good, good
    assert "growth per layer +0.30, +1.60, +1.90" in good
    assert "preset 'cpu'" in good and "were not found" in good
    flat = dict(PAPER_LIKE, lam=[[1.6, 2.5, 3.0, 3.5], [1.6, 1.7, 1.8, 1.9], [1.6] * 4])
    flat["err"] = dict(PAPER_LIKE["err"], rmd=[0.01, 0.05, 0.10, 0.20])
    bad = summary(_fake(**flat))
    assert "DOES NOT HOLD: under lam_RMD the test error rises moderately" in bad
    assert "DOES NOT HOLD: the later layers' lam grows" in bad
    assert "DOES NOT HOLD: lam = -8 is the most vulnerable" in bad  # lam_RMD rose more
