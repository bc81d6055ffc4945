"""Quickstart: simple attacks against plain and L2-regularised linear models on
embedded data (no download), the README's main command.

Choices (all in the spec's ``fixed`` so they land in results.csv):

- Data: each seed draws its own 50/50 train/test split (``split_paper000``);
  features are standardised with the *clean* training split's mean/std, so the
  noise variance means the same on both data sets. Diabetes' target is
  standardised the same way: its RMSE is in units of the target's std (a
  constant predictor scores about 1).
- Models: breast cancer uses the logistic loss (metric: error rate), diabetes the
  squared loss (metric: RMSE). "plain" has no regulariser, "l2" the fixed
  strength ``l2`` (``lam = log(l2)``; intercept unpenalised).
- Attacks: ``label`` flips labels (breast cancer: y -> 1 - y) or sets them to
  ``label_value`` target stds above the mean (diabetes: a regression target
  cannot be flipped, and a far-off value is the paper-000 Wine attack);
  ``noise`` replaces the features of the poisoned rows by N(0, ``variance``).
  The attack's rows are drawn from a seed derived from, but independent of, the
  split's.
- Fit: L-BFGS-B on ``ops.loss_grad`` (numba). The configs of one call share
  data set, attack and model; their problems are separable, so one L-BFGS runs
  over the concatenated parameters with a single batched kernel call per step.
  Plain logistic regression on separable data (clean breast cancer nearly is)
  has no finite minimiser; there L-BFGS stops at ``MAXITER`` and reports a
  small but nonzero ``grad_norm``. Converged solutions do not depend on which
  configs share a call (to the gradient tolerance); those cut off at MAXITER do.
"""
import math
from functools import lru_cache

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from .. import attacks, datasets, ops
from .registry import Figure, experiment, register_figure
from .spec import SweepSpec

TASKS = {"breast-cancer": ("logistic", "error"), "diabetes": ("squared", "rmse")}
BETAS, BETAS_QUICK = [0.0, 0.05, 0.1, 0.2, 0.3], [0.0, 0.1, 0.3]
FIXED = {"variance": 4.0, "l2": 0.1, "label_value": 5.0}
GTOL, MAXITER = 1e-7, 5000


@lru_cache(maxsize=None)
def _dataset(name):
    return datasets.load(name)


@lru_cache(maxsize=None)
def clean_split(name, seed):
    """Standardised (X_tr, y_tr, X_te, y_te) of one seed; y standardised for regression."""
    sp = datasets.split_paper000(_dataset(name), seed)
    mu, sd = sp.X_train.mean(0), sp.X_train.std(0)
    sd[sd == 0] = 1.0
    Xtr, Xte = (sp.X_train - mu) / sd, (sp.X_test - mu) / sd
    ytr, yte = sp.y_train, sp.y_test
    if TASKS[name][0] == "squared":
        m, s = ytr.mean(), ytr.std()
        ytr, yte = (ytr - m) / s, (yte - m) / s
    return tuple(np.ascontiguousarray(a) for a in (Xtr, ytr, Xte, yte))


def poison(config):
    """The attacked training set of one config: (X, y, mask)."""
    X, y, _, _ = clean_split(config["dataset"], config["seed"])
    beta, seed = config["beta"], int(np.random.SeedSequence([config["seed"], 1]).generate_state(1)[0])
    if config["attack"] == "noise":
        return attacks.data_modification(X, y, beta, variance=config["variance"], seed=seed)
    if config["attack"] != "label":
        raise ValueError(f"unknown attack {config['attack']!r}; use 'label' or 'noise'")
    if TASKS[config["dataset"]][0] == "logistic":
        return attacks.label_flip(X, y, beta, seed=seed, labels="01")
    return attacks.label_set(X, y, beta, config["label_value"], seed=seed)


def fit(X, y, loss, lam):
    """Minimise B separable objectives at once: X (B, n, d), y (B, n) -> theta (B, d + 1), info."""
    B, _, d = X.shape

    def fun(t):
        v, g = ops.loss_grad(t.reshape(B, d + 1), X, y, loss=loss, lam=lam, backend="numba")
        return float(v.sum()), g.ravel()

    # One BLAS thread: OpenBLAS's spinning threads fight numba's for the cores
    # (200x slower on 2 cores), and the tiny vector ops L-BFGS does gain nothing.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(fun, np.zeros(B * (d + 1)), jac=True, method="L-BFGS-B",
                       options={"maxiter": MAXITER, "maxcor": 20, "gtol": GTOL, "ftol": 0.0})
    theta = res.x.reshape(B, d + 1)
    grad = fun(res.x)[1].reshape(B, d + 1)
    return theta, {"iterations": res.nit, "grad_norm": np.abs(grad).max(1)}


def score(theta, X, y, kind):
    """RMSE, or the error rate of sign(z) against labels {0, 1}."""
    z = X @ theta[:-1] + theta[-1]
    return float(np.sqrt(np.mean((z - y) ** 2))) if kind == "rmse" else float(np.mean((z > 0) != (y > 0.5)))


@experiment("quickstart", batch_keys=("seed", "beta"))
def run(configs):
    """Train/test metric of every config; one batched fit per call."""
    c0 = configs[0]
    if c0["dataset"] not in TASKS:
        raise ValueError(f"quickstart supports the data sets {list(TASKS)}, got {c0['dataset']!r}")
    loss, kind = TASKS[c0["dataset"]]
    lam = {"plain": None, "l2": math.log(c0["l2"])}[c0["model"]]
    pois = [poison(c) for c in configs]
    theta, info = fit(np.stack([p.X for p in pois]), np.stack([p.y for p in pois]), loss, lam)
    out = []
    for i, (c, p) in enumerate(zip(configs, pois)):
        _, _, Xte, yte = clean_split(c["dataset"], c["seed"])
        out.append({"metric": kind, "test_metric": score(theta[i], Xte, yte, kind),
                    "train_metric": score(theta[i], p.X, p.y, kind),
                    "n_poisoned": int(p.mask.sum()), "n_train": len(p.y),
                    "grad_norm": float(info["grad_norm"][i]), "iterations": int(info["iterations"])})
    return out


def spec(quick=False):
    """Grid dataset x attack x model x beta; 5 seeds (quick: fewer betas, 2 seeds)."""
    return SweepSpec(name="quickstart-quick" if quick else "quickstart", experiment="quickstart",
                     grid={"dataset": list(TASKS), "attack": ["label", "noise"],
                           "model": ["plain", "l2"], "beta": BETAS_QUICK if quick else BETAS},
                     seeds=[0, 1] if quick else [0, 1, 2, 3, 4], fixed=dict(FIXED))


def plot(df, out_dir):
    """One PNG per data set: test metric vs beta, one panel per attack, models as hue."""
    from .plots import plot_metric_vs_fraction
    names = {"rmse": "test RMSE (target std units)", "error": "test error rate"}
    paths = []
    for name, sub in df.groupby("dataset", sort=False):
        sub = sub.rename(columns={"test_metric": names[sub["metric"].iloc[0]]})
        paths.append(plot_metric_vs_fraction(
            sub, names[sub["metric"].iloc[0]], out_dir / f"quickstart_{name}.png",
            hue="model", col="attack", title=f"quickstart: {name}"))
    return paths


def summary(df):
    """Markdown: mean test metric per (data set, attack, model) and beta, then findings."""
    g = df.groupby(["dataset", "attack", "model", "beta"], sort=False)["test_metric"].mean()
    table = g.unstack("beta")
    table.columns = [f"beta={b:g}" for b in table.columns]
    lines = ["Mean test metric over seeds (breast-cancer: error rate, diabetes: RMSE in target "
             f"std units); {df['seed'].nunique()} seeds.", "", _markdown(table.reset_index()), ""]
    bmax, b0 = df["beta"].max(), df["beta"].min()
    pairs = [(d, a) for d, a in table.index.droplevel("model").unique()]
    better = [f"{d}/{a}" for d, a in pairs if g[d, a, "l2", bmax] < g[d, a, "plain", bmax]]
    lines.append(f"At beta={bmax:g}, L2 beats the plain model on {len(better)} of {len(pairs)} "
                 f"data set/attack pairs{': ' + ', '.join(better) if better else ''}.")
    worst = max(pairs, key=lambda p: g[p[0], p[1], "plain", bmax] / max(g[p[0], p[1], "plain", b0], 1e-12))
    d, a = worst
    lines.append(f"The plain model suffers most from {a} on {d}: its test metric goes from "
                 f"{g[d, a, 'plain', b0]:.3f} at beta={b0:g} to {g[d, a, 'plain', bmax]:.3f} at beta={bmax:g} "
                 f"(L2: {g[d, a, 'l2', b0]:.3f} to {g[d, a, 'l2', bmax]:.3f}).")
    return "\n".join(lines)


def _markdown(df):
    """A pipe table without the optional `tabulate` dependency."""
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    rows = [list(df.columns), ["---"] * df.shape[1], *fmt]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


register_figure(Figure("quickstart", "label-flip and data-modification sweeps against plain and "
                       "L2 linear models on diabetes and breast cancer (embedded data)",
                       spec, plot, summary))
