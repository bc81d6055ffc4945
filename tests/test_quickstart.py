"""The quickstart (the README's main job): its two experiments, figures, summary and CLI run."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mithridate import attacks, cli
from mithridate.defenses import WassersteinRobustClassifier
from mithridate.experiments import quickstart as q
from mithridate.experiments.registry import EXPERIMENTS, FIGURES


def configs(case, fractions=(0.0, 0.1), seed=0):
    return [{"case": case, "fraction": f, "seed": seed, **q.FIXED, **q.QUICK} for f in fractions]


def test_registered_grid():
    assert EXPERIMENTS["quickstart"].fn is q.run and "quickstart" in FIGURES
    full, quick = q.spec(False).configs(), q.spec(True).configs()
    assert len(full) == len(q.CASES) * len(q.FRACTIONS) * len(q.SEEDS)
    assert len(quick) == len(q.CASES) * 2
    for c in full:  # every fraction of the grid is a whole number of attack batches
        assert q._n_points(c) % c["batch_size"] == 0


def test_digits_split():
    train, val, test = q.digits_split("0-8", 0, 120, 56)
    assert train[0].shape == (120, 64) and val[0].shape == (56, 64) and test[0].shape == (176, 64)
    rows = {tuple(r) for r in np.vstack([train[0], val[0]])}
    assert len(rows) == 176 and not rows & {tuple(r) for r in test[0]}  # disjoint, no repeats
    assert set(np.unique(train[1])) == {0.0, 1.0} and 0 <= train[0].min() <= train[0].max() <= 1
    with pytest.raises(ValueError, match="n_train \\+ n_val = 200 exceeds the 176"):
        q.digits_split("0-8", 0, 150, 50)


@pytest.mark.parametrize("setting", ["-8", "rmd"])
def test_optimal_cases(setting):
    cfgs = configs(f"optimal:{setting}")
    out = q.run(cfgs)
    assert [m["n_poisoned"] for m in out] == [0, 12]
    assert all(np.isfinite([m["test_error"], m["lam"], m["w_norm2"]]).all() for m in out)
    if setting == "-8":
        assert [m["lam"] for m in out] == [q.LAM_SMALL] * 2
    else:
        assert all(q.LAM_SMALL <= m["lam"] <= q.FIXED["lam_large"] for m in out)
    # fraction 0 is the victim trained on the clean training set with the lam in force
    c = cfgs[0]
    train, _, test = q.digits_split(c["digits"], 0, c["n_train"], c["n_val"])
    theta = attacks.train_sgd(*train, out[0]["lam"], lr=c["lr"], batch_size=64, epochs=c["epochs"],
                              random_state=0)
    assert out[0]["test_error"] == attacks.evaluate(theta, *test)["error"]
    assert q.run(cfgs) == out  # deterministic


def test_lam_clean_case_is_the_cross_validated_lam():
    c = configs("optimal:clean", (0.0,))[0]
    train = q.digits_split(c["digits"], 0, c["n_train"], c["n_val"])[0]
    lam = attacks.lam_clean(*train, T=c["T"], eta=c["eta"], random_state=0)[0]
    out = q.run([c])[0]
    assert out["lam"] == lam
    if lam == q.LAM_SMALL:  # then the whole attack is the lam = -8 one
        assert out == q.run(configs("optimal:-8", (0.0,)))[0]


def test_fraction_off_the_batch_grid_is_refused():
    with pytest.raises(ValueError, match="not a multiple of batch_size=6"):
        q.run(configs("optimal:-8", (0.0, 0.03)))
    with pytest.raises(ValueError, match="unknown case 'optimal:large'"):
        q.run(configs("optimal:large"))


@pytest.mark.parametrize("attack", ["label", "noise"])
def test_poison(attack):
    X, y, _, _ = q.clean_split("breast-cancer", 1)
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    p0 = q.poison(configs(f"{attack}:plain", (0.0,), seed=1)[0])
    assert not p0.mask.any() and np.array_equal(p0.X, X) and np.array_equal(p0.y, y)
    p = q.poison(configs(f"{attack}:plain", (0.2,), seed=1)[0])
    assert p.mask.sum() == attacks.n_poisoned(len(y), 0.2)
    changed = (p.y != y) if attack == "label" else (p.X != X).any(1)
    assert np.array_equal(changed, p.mask)


def test_robust_cases():
    plain, wdro = q.run(configs("label:plain")), q.run(configs("label:wdro"))
    for m in plain + wdro:
        assert 0 <= m["test_error"] <= 1 and m["converged"]
    assert [m["rho"] for m in plain] == [0.0, 0.0] and all(m["rho"] in q.RHOS for m in wdro)
    n = len(q.clean_split("breast-cancer", 0)[1])
    assert [m["n_poisoned"] for m in wdro] == [0, attacks.n_poisoned(n, 0.1)]
    # no attack: both random attacks leave the same clean training set
    assert q.run(configs("noise:wdro", (0.0,)))[0] == wdro[0]
    # plain is the unregularised fit itself
    X, y, mask = q.poison(configs("label:plain", (0.1,))[0])
    _, _, Xte, yte = q.clean_split("breast-cancer", 0)
    est = WassersteinRobustClassifier(rho=0.0).fit(X, y)
    assert plain[1]["test_error"] == np.mean(est.predict(Xte) != yte)


def synthetic(rmd_gain, wdro_gain, seeds=range(4)):
    """A results frame with known numbers: lam_RMD lower than lam = -8 / lam_CLEAN by
    ``rmd_gain`` at the largest fraction (seed-dependent noise on top), the robust model
    lower than plain by ``wdro_gain``."""
    rows = []
    for s in seeds:
        noise = 0.002 * (s - 1.5)
        for f in (0.0, 0.2):
            base = 0.01 + 0.5 * f + noise
            for lam, gain in (("rmd", rmd_gain), ("-8", 0.0), ("clean", 0.0)):
                rows.append({"case": f"optimal:{lam}", "fraction": f, "seed": s, "n_train": 120,
                             "test_error": base - gain * (f > 0) + (s % 2) * 0.0002 * (lam == "rmd"),
                             "lam": 1.0 + f if lam == "rmd" else -8.0})
            for a in ("label", "noise"):
                for m, gain in (("plain", 0.0), ("wdro", wdro_gain)):
                    rows.append({"case": f"{a}:{m}", "fraction": f, "seed": s,
                                 "test_error": base + 0.03 - gain, "rho": 0.01 * (m == "wdro"),
                                 "converged": True})
    return pd.DataFrame(rows)


def test_summary_sentences_follow_the_numbers():
    text = q.summary(synthetic(0.05, 0.02))
    assert "the learned lam reduces the test error relative to lam = -8 by 0.050" in text
    assert "lower on 4 of 4" in text and "5-fold CV picks lam_CLEAN = -8 on 4 of 4 seeds" in text
    assert ("the Wasserstein-robust model reduces the test error relative to the plain one "
            "by 0.020") in text
    assert "| optimal | lam = -8 | 0.010 ± 0.003 | 0.110 ± 0.003 |" in text
    text = q.summary(synthetic(-0.05, 0.0))
    assert "the learned lam increases the test error relative to lam = -8 by 0.050" in text
    assert "the test error is the same under the Wasserstein-robust model and the plain one" in text
    some = synthetic(0.05, 0.02)
    some.loc[(some["case"] == "optimal:clean") & (some["seed"] == 0), "lam"] = -3.0
    assert "lam_CLEAN = -8 on 3 of 4 seeds (median lam_CLEAN -8); on those seeds" in q.summary(some)
    weak = synthetic(0.0, 0.0)  # only the per-seed jitter of lam_RMD: mean 0.0001, not significant
    assert "(not significant: within 2 s.e.)" in q.summary(weak)


def test_plots_name_the_coinciding_settings(tmp_path):
    paths = q.plot(synthetic(0.05, 0.02), tmp_path)
    assert [p.name for p in paths] == ["quickstart_optimal.png", "quickstart_robust.png"]
    note = Image.open(paths[0]).text["Description"]
    assert "test error: lam = -8 and lam_CLEAN (5-fold CV) coincide" in note
    assert "lam_RMD" not in note
    assert Image.open(paths[1]).text["Description"] == ""


def test_reproduce_quick_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "qs"
    assert cli.main(["reproduce", "quickstart", "--quick", "--out", str(out), "--no-progress"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(q.spec(True).configs()) and df["test_error"].between(0, 1).all()
    assert {p.name for p in out.glob("*.png")} == {"quickstart_optimal.png", "quickstart_robust.png"}
    summary = (out / "summary.md").read_text()
    assert "Optimal attack on digits 0 vs 8" in summary and "Breast cancer, label flip" in summary
    captured = capsys.readouterr()
    assert summary.strip() in captured.out
    assert "optimal poisoning" not in captured.err  # --no-progress silences the inner bars too
    before = (out / "results.csv").read_bytes()

    def refuse(configs):
        raise AssertionError(f"recomputed {configs[0]}")
    monkeypatch.setattr(q, "_optimal", refuse)
    monkeypatch.setattr(q, "_robust", refuse)
    assert cli.main(["reproduce", "quickstart", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "results.csv").read_bytes() == before
