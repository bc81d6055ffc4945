"""Paper 000 figures: the batched logistic solver, the experiment, and `mithridate reproduce`."""
import numpy as np
import pandas as pd
import pytest

from mithridate import attacks, cli
from mithridate.defenses import WassersteinRobustClassifier
from mithridate.experiments import paper000 as P
from mithridate.experiments.paper000_fit import fit_logistic
from mithridate.experiments.registry import EXPERIMENTS, FIGURES


def _logistic_data(seed, n=300, d=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X @ np.linspace(-1, 2, d) + rng.logistic(size=n) > 0).astype(float)
    return X, y


def test_fit_logistic_matches_the_estimator():
    # paper form with c1/c2 (all of theta under the norm), the exact form (w only),
    # a column whose optimum is theta = 0, and row weights (a hold-out)
    X, y = _logistic_data(0)
    y2 = 1 - y
    y2[:50] = y[:50]
    keep = np.arange(len(y)) % 4 != 0
    Xa = np.hstack([X, np.ones((len(X), 1))])
    Y = np.stack([y, y2, y], 1)
    W = np.stack([np.full(len(y), 1 / len(y)), np.full(len(y), 1 / len(y)),
                  keep / keep.sum()], 1)
    settings = [dict(c1=0.05, c2=0.02), dict(c1=0.0, c2=50.0), dict(c1=0.0, c2=0.1)]
    sel = np.ones(5, bool)
    (fit,), _ = fit_logistic([(Xa, Y, W)], [np.array([s["c1"] for s in settings])],
                             [np.array([s["c2"] for s in settings])], sel)
    T, val, gn = fit
    for g, (s, yy, rows) in enumerate(zip(settings, [y, y2, y], [slice(None)] * 2 + [keep])):
        est = WassersteinRobustClassifier(**s, tol=1e-10).fit(X[rows], yy[rows])
        assert val[g] == pytest.approx(est.objective_, rel=1e-6)
        np.testing.assert_allclose(T[g], np.r_[est.coef_, est.intercept_], atol=1e-4)
    assert np.all(T[1] == 0)  # found at zero by the optimality condition
    # exact form, labels fixed: mean loss + rho ||w||_2, intercept free
    sel_w = np.r_[np.ones(4, bool), False]
    (fit,), _ = fit_logistic([(Xa, Y[:, :1], W[:, :1])], [np.zeros(1)], [np.array([0.05])], sel_w)
    est = WassersteinRobustClassifier(regularizer="exact", rho=0.05, tol=1e-10).fit(X, y)
    assert fit[1][0] == pytest.approx(est.objective_, rel=1e-6)
    np.testing.assert_allclose(fit[0][0], np.r_[est.coef_, est.intercept_], atol=1e-4)


def test_parse_model():
    assert P.parse_model("c1=0.1,c2=0") == ("paper", {"c1": 0.1, "c2": 0.0})
    assert P.parse_model("exact-val") == ("exact", None)
    assert P.parse_model("tight:rho=0.01") == ("tight", {"rho": 0.01})
    for bad in ("c1=0.1", "c1=a,c2=0", "c1=0,c2=0,c3=1", "ridge-val", "ridge:rho=1",
                "paper:rho=-1", "paper:c1=0,c2=0"):
        with pytest.raises(ValueError, match="model"):
            P.parse_model(bad)


def _configs(name, model, betas=(0.0, 0.3), seeds=(0, 1)):
    dataset, attack, fixed, _ = P.FIGS[name]
    return [{"dataset": dataset, "attack": attack, **fixed, "model": model, "beta": b, "seed": s}
            for b in betas for s in seeds]


@pytest.mark.parametrize("name,model", [("paper000-wine-labels", "c1=0.1,c2=0"),
                                        ("paper000-boston-features", "paper-val"),
                                        ("paper000-wine-features", "paper-theorem"),
                                        ("paper000-adult-labels", "c1=0.01,c2=0")])
def test_run_metrics(name, model):
    cfgs = _configs(name, model)
    out = P.run(cfgs)
    assert len(out) == len(cfgs)
    for c, m in zip(cfgs, out):
        assert np.isfinite([m["test_metric"], m["test_loss"], m["J_n"]]).all()
        assert m["n_poisoned"] == attacks.n_poisoned(m["n_train"], c["beta"])
        assert m["holds"] == (m["test_loss"] <= m["J_n"]) and m["converged"]
        assert m["certificate"] == (not model.startswith("c1="))
        if model.endswith("-val"):
            assert m["rho"] in P.RHOS
    if model.startswith("paper-"):  # beta W = 0 without poison, > 0 with it
        assert [m["beta_W"] > 0 for m in out] == [c["beta"] > 0 for c in cfgs]
    if model == "paper-theorem":  # rho is Theorem 2's radius with zeta = 0
        assert all(m["rho"] == m["beta_W"] and m["rho_covers"] for m in out)


def test_beta_zero_is_clean_and_poison_is_nested():
    c = _configs("paper000-wine-features", "c1=0,c2=0", betas=(0.0,), seeds=(3,))[0]
    X, y, _, _ = P.clean_split("wine-quality", 3, False)
    p0 = P.poison(c)
    assert not p0.mask.any() and np.array_equal(p0.X, X)
    Xs, _, _, _ = P.clean_split("wine-quality", 3, True)  # standardised on the clean half
    np.testing.assert_allclose(Xs.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose((X - X.mean(0)) / X.std(0), Xs, atol=1e-12)
    p1, p2 = P.poison({**c, "beta": 0.1}), P.poison({**c, "beta": 0.3})
    assert (p1.mask <= p2.mask).all() and np.array_equal(p1.X[p1.mask], p2.X[p1.mask])


def test_registered_specs():
    assert "paper000" in EXPERIMENTS
    for name in P.FIGS:
        fig = FIGURES[name]
        full, quick = fig.spec(False), fig.spec(True)
        assert len(full.seeds) >= 10 and 0.0 in full.grid["beta"]
        assert "c1=0,c2=0" in full.grid["model"] and len(quick.configs()) < len(full.configs())


def test_summary_states_claims_from_the_numbers():
    # a constructed frame where regularisation wins at large beta and loses at 0
    rows = []
    for seed in range(3):
        for beta, plain, reg in ((0.0, 1.0, 1.2), (0.4, 3.0, 2.0)):
            for model, v in (("c1=0,c2=0", plain), ("c1=0.1,c2=0", reg)):
                rows.append({"model": model, "beta": beta, "seed": seed, "metric": "mse",
                             "test_metric": v + 0.01 * seed, "holds": v < 2.5,
                             "certificate": False, "rho": np.nan, "converged": True})
    text = P.summary(pd.DataFrame(rows))
    assert "better at large beta: HOLDS" in text and "worse at beta=0: HOLDS" in text
    assert "| c1=0.1,c2=0 | False | 1.000 | 1.000 | 1.000 |" in text
    flipped = pd.DataFrame(rows).assign(test_metric=lambda d: 4 - d["test_metric"])
    assert "better at large beta: DOES NOT HOLD" in P.summary(flipped)


@pytest.mark.parametrize("name", list(P.FIGS) + list(P.COMPANIONS))
def test_reproduce_quick_through_the_cli(name, tmp_path, capsys):
    out = tmp_path / name
    assert cli.main(["reproduce", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(FIGURES[name].spec(True).configs())
    assert (out / f"{name}.png").stat().st_size > 0
    text = (out / "summary.md").read_text()
    assert "Theorem 2: share of fits" in text and "fits converged" in text
    if name in P.FIGS:
        assert (out / f"{name}-rho-val.png").exists()
        assert "Paper's claims" in text and "HOLD" in text and "| paper-val | True |" in text
    else:
        assert "J_n(tight) <= J_n(paper)" in text and "| tight:rho=0.1 | True |" in text
    assert text.strip() in capsys.readouterr().out
