"""The quickstart experiment, its fit, plot and summary, and `mithridate reproduce quickstart`."""
import math

import numpy as np
import pandas as pd
import pytest

from mithridate import attacks, cli
from mithridate.experiments import quickstart as q
from mithridate.experiments.plots import plot_metric_vs_fraction
from mithridate.experiments.registry import EXPERIMENTS, FIGURES


def configs(dataset, attack, model, betas=(0.0, 0.2), seeds=(0, 1)):
    return [{"dataset": dataset, "attack": attack, "model": model, "beta": b, "seed": s, **q.FIXED}
            for b in betas for s in seeds]


@pytest.mark.parametrize("dataset,attack,model", [("breast-cancer", "label", "l2"),
                                                  ("diabetes", "noise", "plain"),
                                                  ("diabetes", "label", "l2")])
def test_metrics_finite_counts_and_determinism(dataset, attack, model):
    cfgs = configs(dataset, attack, model)
    out = q.run(cfgs)
    assert len(out) == len(cfgs)
    for c, m in zip(cfgs, out):
        assert np.isfinite([m["test_metric"], m["train_metric"]]).all()
        assert m["n_poisoned"] == attacks.n_poisoned(m["n_train"], c["beta"])
        assert m["grad_norm"] < 1e-6
    assert out == q.run(cfgs)


def test_registered():
    assert EXPERIMENTS["quickstart"] is not None and "quickstart" in FIGURES
    full, quick = q.spec(False).configs(), q.spec(True).configs()
    assert len(quick) < len(full) == 2 * 2 * 2 * 5 * 5


@pytest.mark.parametrize("attack", ["label", "noise"])
def test_beta_zero_is_clean_training(attack):
    c = configs("breast-cancer", attack, "l2", betas=(0.0,), seeds=(3,))[0]
    Xtr, ytr, Xte, yte = q.clean_split("breast-cancer", 3)
    p = q.poison(c)
    assert not p.mask.any() and np.array_equal(p.X, Xtr) and np.array_equal(p.y, ytr)
    theta, _ = q.fit(Xtr[None], ytr[None], "logistic", math.log(c["l2"]))
    assert q.run([c])[0]["test_metric"] == q.score(theta[0], Xte, yte, "error")


def test_features_standardised_on_clean_train():
    Xtr, ytr, Xte, _ = q.clean_split("diabetes", 0)
    np.testing.assert_allclose(Xtr.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Xtr.std(0), 1, atol=1e-12)
    assert abs(ytr.mean()) < 1e-12 and abs(ytr.std() - 1) < 1e-12
    assert not np.allclose(Xte.mean(0), 0, atol=1e-3)  # the test split is not refitted


def test_fit_matches_scikit_learn():
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    Xb, yb, _, _ = q.clean_split("breast-cancer", 0)
    Xd, yd, _, _ = q.clean_split("diabetes", 0)
    l2 = 0.1
    theta, info = q.fit(np.stack([Xb, q.poison(configs("breast-cancer", "label", "l2")[3]).X]),
                        np.stack([yb, q.poison(configs("breast-cancer", "label", "l2")[3]).y]),
                        "logistic", math.log(l2))
    assert info["grad_norm"].max() < 1e-6
    # 1/n sum loss + l2/2 |w|^2  <=>  sklearn's C = 1 / (n l2) (intercept unpenalised)
    sk = LogisticRegression(C=1 / (len(yb) * l2), tol=1e-12, max_iter=10000).fit(Xb, yb)
    np.testing.assert_allclose(theta[0], np.r_[sk.coef_[0], sk.intercept_], atol=1e-5)
    # 1/(2n) sum (z - y)^2 + l2/2 |w|^2  <=>  Ridge alpha = n l2
    theta, _ = q.fit(Xd[None], yd[None], "squared", math.log(l2))
    sk = Ridge(alpha=len(yd) * l2).fit(Xd, yd)
    np.testing.assert_allclose(theta[0], np.r_[sk.coef_, sk.intercept_], atol=1e-6)
    theta, _ = q.fit(Xd[None], yd[None], "squared", None)
    sk = LinearRegression().fit(Xd, yd)
    np.testing.assert_allclose(theta[0], np.r_[sk.coef_, sk.intercept_], atol=1e-6)


def frame(seeds=(0, 1)):
    cfgs = [c for d in q.TASKS for a in ("label", "noise") for m in ("plain", "l2")
            for c in configs(d, a, m, betas=(0.0, 0.3), seeds=seeds)]
    groups = {}
    for c in cfgs:
        groups.setdefault((c["dataset"], c["attack"], c["model"]), []).append(c)
    return pd.DataFrame([{**c, **m} for g in groups.values() for c, m in zip(g, q.run(g))])


def test_plot_and_summary(tmp_path):
    df = frame()
    path = plot_metric_vs_fraction(df, "test_metric", tmp_path / "sub" / "a.png", hue="model", col="attack")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    paths = q.plot(df, tmp_path)
    assert len(paths) == 2 and all(p.stat().st_size > 1000 for p in paths)
    text = q.summary(df)
    mean = df[(df.dataset == "diabetes") & (df.attack == "label") & (df.model == "plain")
              & (df.beta == 0.3)].test_metric.mean()
    assert f"{mean:.3f}" in text and "beta=0.3" in text and "of 4 data set/attack pairs" in text


def test_reproduce_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert cli.main(["reproduce", "quickstart", "--quick", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(q.spec(True).configs()) and np.isfinite(df.test_metric).all()
    assert (out / "quickstart_breast-cancer.png").stat().st_size > 1000
    assert "L2 beats the plain model" in (out / "summary.md").read_text()
    assert "L2 beats the plain model" in capsys.readouterr().out
