"""cross-mnist (issue 11, experiment 1) through `mithridate reproduce --quick`; its summary."""
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mithridate import attacks, cli
from mithridate.experiments import cross, get_figure
from mithridate.experiments.runner import run_sweep
from mithridate.experiments.spec import SweepSpec

DATA = Path(os.environ.get("MITHRIDATE_DATA", "/nonexistent"))
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(),
                                reason="MITHRIDATE_DATA does not hold ../shared/data")


@needs_data
def test_quick_through_cli_and_resume(tmp_path, monkeypatch):
    assert cli.main(["reproduce", "cross-mnist", "--quick", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    frame = pd.read_csv(tmp_path / "results.csv")
    assert set(frame["setting"]) == set(cross.SETTINGS)
    assert sorted(frame["n_points"].unique()) == [0, 4, 8]
    assert frame["test_error"].between(0, 1).all()
    by = {s: g for s, g in frame.groupby("setting")}
    assert (by["none"]["lam"] == -8).all() and by["none"]["rho"].isna().all()
    assert by["l2"]["rho"].isna().all() and by["w-learned"]["lam"].isna().all()
    for s in ("w-learned", "w-clean", "both"):
        assert (by[s]["rho"] > 0).all()
    # rho by clean validation: one grid value per seed, fixed during the attack
    clean = by["w-clean"].groupby("seed")["rho"]
    assert (clean.nunique() == 1).all()
    assert all(np.isclose(cross.RHO_GRID, r).any() for r in by["w-clean"]["rho"])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "mnist_cross_learned.png", "mnist_cross_test_error.png"]
    summary = (tmp_path / "summary.md").read_text()
    assert "mitigates the optimal attack as well as L2" in summary
    assert f"{by['l2'].groupby('n_points')['test_error'].mean().iloc[-1]:.4f}" in summary

    def no_work(*a, **k):
        raise AssertionError("a resumed run attacked again")
    monkeypatch.setattr(attacks, "run_lockstep", no_work)
    assert cli.main(["reproduce", "cross-mnist", "--quick", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(frame)


def _frame(w_extra, rho_step):
    """Hand-made rows: 4 seeds, every setting; the Wasserstein settings' error is L2's
    plus w_extra * j (+ seed noise), the learned rho grows by rho_step per batch."""
    rows = []
    for seed in range(4):
        for s in cross.SETTINGS:
            for j, n in enumerate((0, 17, 34)):
                base = 0.01 + 0.02 * j + 0.001 * seed
                err = {"none": base + 0.05 * j, "l2": base}.get(s, base + w_extra * j
                                                                + 0.0005 * ((seed + j) % 2))
                rows.append(dict(dataset="mnist", setting=s, n_points=n, seed=seed, n_train=512,
                                 fraction=n / 512, test_error=err, fpr=err, fnr=err, w_norm2=1.0,
                                 lam=1.6 + 0.1 * j if s in ("l2", "both") else
                                 (-8.0 if s == "none" else math.nan),
                                 rho=(1e-3 * (1 + rho_step * j) if s in ("w-learned", "both")
                                      else 1e-4 if s == "w-clean" else math.nan),
                                 val_loss=0.1, attack_seconds=1.0))
    return pd.DataFrame(rows)


def test_summary_follows_the_numbers():
    summary = get_figure("cross-mnist").summary
    good = summary(_frame(0.0, 0.5))
    assert "- HOLDS: Wasserstein, rho learned mitigates the optimal attack as well as L2" in good
    assert "- HOLDS: the learned rho under Wasserstein, rho learned grows" in good
    bad = summary(_frame(0.03, -0.4))
    assert "DOES NOT HOLD: Wasserstein, rho learned mitigates the optimal attack as well" in bad
    assert "worse at 3.3%, 6.6%" in bad
    assert "DOES NOT HOLD: the learned rho under Wasserstein, rho learned grows" in bad
    assert "0.001 at 0% to 0.0002 at 6.6%" in bad


def test_unknown_defence_refused_before_work(tmp_path, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("work started")
    monkeypatch.setattr(cross, "_split", no_work)
    spec = cross._spec("mnist", True)
    bad = SweepSpec(name="cross-bad", experiment="cross",
                    grid={**spec.grid, "setting": ["l2", "wasserstien"]}, seeds=[0],
                    fixed=spec.fixed)
    with pytest.raises(ValueError, match="setting='wasserstien' is not a defence"):
        run_sweep(bad, tmp_path, progress=False)
