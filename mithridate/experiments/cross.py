"""Issue 11: paper 002's optimal attack against paper 000's Wasserstein-robust defence
(``cross-mnist``, ``cross-fmnist``).

Paper 002's splits and Table 2-3 settings as ``paper002-fig2`` uses them (512 training and
171 validation points per seed, 0..85 poisoning points in cumulative batches of 17, i.e.
0..16.6%), the attack run against five defences (``SETTINGS``):

- ``none``: L2 with lam = -8 (no defence);
- ``l2``: L2 with lam learned (fig2's lam_RMD, warm start log 5);
- ``w-learned``: paper 000's Wasserstein term alone, rho learned (minimax, from
  attacks.Defence's rho_init);
- ``w-clean``: the Wasserstein term with rho fixed by clean validation: :func:`rho_clean`,
  5-fold cross-validation on the clean training set over ``RHO_GRID`` (10^-5 .. 10^-1 in
  half decades), each fold trained by the attack's inner trainer (T full-batch GD steps of
  size eta on the same Robust model), the lowest mean held-out error, ties by loss;
- ``both``: L2 and Wasserstein terms, lam and rho learned.

The victim after the attack is fig2's: mini-batch SGD (batch 64, Table 3's step and
epochs) with the hyperparameters in force, for the L2 settings by attacks.train_sgd, for
the Wasserstein settings by mithridate.models.training.sgd on the very Robust model the
attacker assumed (attacks.Defence.model, its coefficients from the clean training set).
The settings of one seed run in lockstep where attacks.run_lockstep allows (equal
``defence``: none and l2 together, each Wasserstein setting alone). Rows: test error,
rates, ||w||^2, lam and rho in force (nan where the setting has none).
"""
import math
import time

import numpy as np

from .. import attacks
from .paper002 import LAM_SMALL, QUICK, TABLES, _split
from .registry import Figure, experiment, register_figure
from .runner import inner_progress
from .spec import SweepSpec

SETTINGS = ("none", "l2", "w-learned", "w-clean", "both")
LABELS = {"none": "no defence (lam = -8)", "l2": "L2, lam learned",
          "w-learned": "Wasserstein, rho learned", "w-clean": "Wasserstein, rho clean",
          "both": "L2 + Wasserstein, learned"}
WASSERSTEIN = ("w-learned", "w-clean", "both")
RHO_GRID = tuple(10.0 ** np.arange(-5.0, -0.9, 0.5))
POINTS = (0, 17, 34, 51, 68, 85)  # fig2's grid: up to 85 / 512 = 16.6%


def _base():
    from ..models import LinearModel
    return LinearModel("logistic")


def rho_clean(X, y, *, grid=RHO_GRID, n_splits=5, T=150, eta=0.1, random_state=None):
    """The rho of ``grid`` with the lowest mean held-out error over ``n_splits``-fold
    cross-validation of the clean set (sklearn KFold, shuffled), ties by the held-out
    logistic loss, as attacks.lam_clean does for lam. Each fold trains the defence's
    Robust model (coefficients from all of X, y: the attack's) by T steps of full-batch GD
    of size eta from zeros, every rho at once. Returns (rho, table of (rho, error, loss))."""
    from sklearn.model_selection import KFold
    from ..models.training import gradient_descent
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    model = attacks.Defence("wasserstein").model(X, y, _base())
    log_rho = np.log(np.asarray(grid, np.float64))
    err, loss = np.zeros(log_rho.size), np.zeros(log_rho.size)
    for tr, te in KFold(n_splits, shuffle=True, random_state=random_state).split(X):
        th = gradient_descent(model, X[tr], y[tr], log_rho, T=T, alpha=eta)
        err += [attacks.evaluate(t, X[te], y[te])["error"] / n_splits for t in th]
        loss += model.loss_grad_batch(th, X[te], y[te])[0] / n_splits
    best = np.lexsort((loss, err))[0]
    return float(grid[best]), np.column_stack([grid, err, loss])


def _attack(c, n_points, train):
    """The attack of one (setting, seed) and the seconds rho_clean's selection took."""
    s, t0 = c["setting"], time.perf_counter()
    defence = {"w-learned": attacks.Defence("wasserstein"), "both": attacks.Defence("both"),
               "w-clean": None}.get(s)
    if s == "w-clean":
        rho = rho_clean(*train, T=c["T"], eta=c["eta"], random_state=c["seed"])[0]
        defence = attacks.Defence("wasserstein", rho=rho)
    atk = attacks.OptimalPoisoning(
        lam=LAM_SMALL if s == "none" else "learned", n_points=n_points,
        batch_size=c["batch_size"], T=c["T"], T_outer=c["T_outer"], T_lam=c["T_lam"],
        alpha=c["alpha"], beta=c["beta"], eta=c["eta"], box=(0.0, 1.0),
        lam_range=(LAM_SMALL, c["lam_large"]), random_state=c["seed"], defence=defence)
    return atk, time.perf_counter() - t0


def _lam_rho(setting, hyper):
    """(lam, rho) in force from an attack's hyperparameter entry (nan where absent)."""
    h = np.atleast_1d(np.asarray(hyper, np.float64))
    if setting in ("none", "l2"):
        return float(h[0]), math.nan
    if setting == "both":
        return float(h[0]), float(np.exp(h[1]))
    return math.nan, float(np.exp(h[0]))


def _victim(c, X, y, train, setting, hyper, seed):
    """theta of fig2's SGD victim on (X, y): L2 by attacks.train_sgd, the Wasserstein
    settings on the defence's Robust model (lam on the engine's scale: L2 entry - log n)."""
    from ..models.training import sgd
    lam, rho = _lam_rho(setting, hyper)
    opts = dict(lr=c["lr"], batch_size=64, epochs=c["epochs"], random_state=seed)
    if setting in ("none", "l2"):
        return attacks.train_sgd(X, y, lam, **opts)
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    defence = attacks.Defence("both" if setting == "both" else "wasserstein")
    model = defence.model(*(np.asarray(a, np.float64) for a in train), _base())
    h = [math.log(rho)] if setting != "both" else [lam - math.log(len(X)), math.log(rho)]
    return np.asarray(sgd(model, X, y, np.array(h), **opts), np.float64)


def _check_settings(configs):
    for c in configs:
        if c["setting"] not in SETTINGS:
            raise ValueError(f"setting={c['setting']!r} is not a defence of cross-*; use one "
                             f"of {list(SETTINGS)} in the spec's grid.")
        if c["n_points"] % c["batch_size"]:
            raise ValueError(f"n_points={c['n_points']} must be a multiple of "
                             f"batch_size={c['batch_size']}")


@experiment("cross", batch_keys=("setting", "n_points"), params=(
    "dataset", "setting", "n_points", "n_train", "n_val", "batch_size", *TABLES["mnist"]))
def cross(configs):
    """Per seed, the attacks of its defence settings, those with equal defence in lockstep,
    cumulative up to the largest n_points asked and evaluated after each batch; one metrics
    row per config. A call gets one seed (resumable per seed). attack_seconds: the
    lockstep's time shared equally by its settings, plus rho_clean's selection."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm
    _check_settings(configs)  # every config before any work
    out = {}
    seeds = sorted({c["seed"] for c in configs})
    with threadpool_limits(1, user_api="blas"):  # BLAS threads fight numba's on few cores
        for seed in tqdm(seeds, desc=configs[0]["dataset"], unit="seed", leave=False,
                         disable=not inner_progress()):
            mine = [c for c in configs if c["seed"] == seed]
            top = max(c["n_points"] for c in mine)
            settings = list(dict.fromkeys(c["setting"] for c in mine))
            first = {s: next(c for c in mine if c["setting"] == s) for s in settings}
            sp, train, val = _split(mine[0])
            built = {s: _attack(first[s], top, train) for s in settings}
            groups = {}
            for s in settings:  # run_lockstep needs equal defences
                groups.setdefault(built[s][0].defence, []).append(s)
            results, seconds = {}, {}
            for group in groups.values():
                t0 = time.perf_counter()
                res = attacks.run_lockstep([built[s][0] for s in group], train, val)
                share = (time.perf_counter() - t0) / len(group)
                for s, r in zip(group, res):
                    results[s], seconds[s] = r, share + built[s][1]
            for c in mine:
                s, res = c["setting"], results[c["setting"]]
                j = c["n_points"] // c["batch_size"]
                X, y = res.training_set(j)
                theta = _victim(c, X, y, train, s, res.lam_batches[j], seed)
                m = attacks.evaluate(theta, sp.X_test, sp.y_test)
                lam, rho = _lam_rho(s, res.lam_batches[j])
                out[id(c)] = {"fraction": c["n_points"] / c["n_train"], "test_error": m["error"],
                              "fpr": m["fpr"], "fnr": m["fnr"], "w_norm2": m["w_norm2"],
                              "lam": lam, "rho": rho, "val_loss": float(res.values[j]),
                              "attack_seconds": seconds[s]}
    return [out[id(c)] for c in configs]


def _spec(dataset, quick):
    t = dict(TABLES[dataset], batch_size=17, n_train=512, n_val=171)
    points, seeds = list(POINTS), list(range(10))
    if quick:
        t.update(QUICK)
        points, seeds = [0, 4, 8], [0, 1]
    tag = {"mnist": "mnist", "fashion-mnist": "fmnist"}[dataset]
    return SweepSpec(name=f"cross-{tag}{'-quick' if quick else ''}", experiment="cross",
                     grid={"dataset": [dataset], "setting": list(SETTINGS), "n_points": points},
                     seeds=seeds, fixed=t)


def _summary(df):
    from .cross_plots import summary
    return summary(df)


def _plot(df, out):
    from .cross_plots import plot
    return plot(df, out)


for _ds, _tag in (("mnist", "mnist"), ("fashion-mnist", "fmnist")):
    register_figure(Figure(
        f"cross-{_tag}", f"issue 11 on {_ds}: paper 002's optimal attack against no defence, "
        "L2 (lam learned), Wasserstein (rho learned / by clean validation) and both learned "
        "(10 seeds, 0..16.6% poisoning points)", lambda quick, _ds=_ds: _spec(_ds, quick),
        _plot, _summary))
