"""Quickstart, the README's main command: what the package is for, on embedded data.

Two results, one sweep (grid: ``case`` x ``fraction`` x seeds; every setting is
in the spec's ``fixed`` so it lands in results.csv):

1. ``optimal:<lam>`` (paper 002 on scikit-learn's 8x8 digits, 0 vs 8): the
   hyperparameter-aware optimal attack (:class:`~mithridate.attacks.OptimalPoisoning`)
   against logistic regression whose L2 hyperparameter lam is ``rmd`` (learned on
   the validation set while the attack runs, lam_RMD), fixed at ``-8`` (no
   regularisation) or ``clean`` (lam_CLEAN: 5-fold cross-validation on the clean
   training set, :func:`~mithridate.attacks.lam_clean`). Each seed draws a 50/50
   train/test split (``split_paper000``) and ``n_val`` validation rows out of the
   training half, of which ``n_train`` are kept. Poisoning points replace
   training rows in cumulative batches of ``batch_size`` (a fraction of
   ``n_train``); after each batch the victim is trained by mini-batch SGD with the
   lam in force (:func:`~mithridate.attacks.train_sgd`) and scored on the test half.
2. ``<attack>:<model>`` (paper 000 on breast cancer, features standardised on the
   clean training half): the random attacks ``label`` (a fraction of the labels
   flipped) and ``noise`` (the features of a fraction of the rows replaced by
   N(0, ``variance``)) against logistic regression, ``plain`` (unregularised:
   :class:`~mithridate.defenses.WassersteinRobustClassifier` with rho = 0) or
   ``wdro`` (the Wasserstein-robust regulariser (15), rho chosen on ``RHOS`` by a
   25% hold-out of the poisoned training set, :func:`~mithridate.defenses.select_rho`).
   Plain logistic regression on separable data (clean breast cancer nearly is)
   has no finite minimiser; the solver stops at its tolerance and ``converged``
   records whether it met it.

One experiment call gets one (case, seed): one cumulative attack evaluated at
every fraction, or one seed's defences, so a killed run resumes per call.
"""
import math
import warnings
from functools import lru_cache

import numpy as np

from .. import attacks, datasets
from .registry import Figure, experiment, register_figure
from .runner import inner_progress
from .spec import SweepSpec

LAMS = ("rmd", "-8", "clean")
CASES = [f"optimal:{lam}" for lam in LAMS] + [f"{a}:{m}" for a in ("label", "noise")
                                              for m in ("plain", "wdro")]
FRACTIONS, FRACTIONS_QUICK = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25], [0.0, 0.1]
SEEDS, SEEDS_QUICK = list(range(10)), [0]
# From 0.1 up, the regulariser (15) (intercept penalised too) drives theta to exactly 0 on
# these standardised features: a constant model whose predictions are the sign of rounding
# noise, which a poisoned validation loss (log 2) can still prefer.
RHOS = [0.0, 1e-3, 3e-3, 1e-2, 3e-2]
LAM_SMALL = -8.0
FIXED = dict(digits="0-8", n_train=120, n_val=56, batch_size=6, T=100, T_outer=30, T_lam=20,
             alpha=0.5, beta=0.5, eta=0.5, lam_large=math.log(200), lr=0.1, epochs=100,
             robust_data="breast-cancer", variance=4.0)
QUICK = dict(T=20, T_outer=3, T_lam=3, epochs=10)
NAMES = {"rmd": "lam_RMD (learned)", "-8": "lam = -8", "clean": "lam_CLEAN (5-fold CV)",
         "plain": "plain logistic", "wdro": "Wasserstein-robust (rho by validation)",
         "label": "label flip", "noise": "feature noise", "optimal": "optimal"}


def parse_case(case):
    """(attack, defender) of a case name: ('optimal', lam setting) or (attack, model)."""
    attack, _, defender = case.partition(":")
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; use one of {CASES}")
    return attack, defender


@lru_cache(maxsize=None)
def digits_split(classes, seed, n_train, n_val):
    """(train, val, test) pairs (X, y) of digits ``classes`` ('0-8') for one seed."""
    lo, hi = (int(v) for v in classes.split("-"))
    sp = datasets.split_paper000(datasets.load_digits(classes=(lo, hi)), seed)
    if n_train + n_val > len(sp.y_train):
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {len(sp.y_train)} rows "
                         "of the training half; lower them")
    rows = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(sp.y_train))
    tr, va = rows[:n_train], rows[n_train:n_train + n_val]
    f = np.float64
    return ((sp.X_train[tr].astype(f), sp.y_train[tr].astype(f)),
            (sp.X_train[va].astype(f), sp.y_train[va].astype(f)),
            (sp.X_test.astype(f), sp.y_test.astype(f)))


@lru_cache(maxsize=None)
def clean_split(name, seed):
    """Standardised (X_tr, y_tr, X_te, y_te) of one seed (mean/std of the clean training half)."""
    sp = datasets.split_paper000(datasets.load(name), seed)
    mu, sd = sp.X_train.mean(0), sp.X_train.std(0)
    sd[sd == 0] = 1.0
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in
                 ((sp.X_train - mu) / sd, sp.y_train, (sp.X_test - mu) / sd, sp.y_test))


def poison(config):
    """The randomly attacked training set of one robust-part config: (X, y, mask)."""
    attack, _ = parse_case(config["case"])
    X, y, _, _ = clean_split(config["robust_data"], config["seed"])
    seed = int(np.random.SeedSequence([config["seed"], 1]).generate_state(1)[0])
    if attack == "noise":
        return attacks.data_modification(X, y, config["fraction"], variance=config["variance"],
                                         seed=seed)
    if attack == "label":
        return attacks.label_flip(X, y, config["fraction"], seed=seed, labels="01")
    raise ValueError(f"poison() draws the random attacks 'label' and 'noise', not {attack!r}")


@experiment("quickstart", batch_keys=("fraction",), params=("case", "fraction", *FIXED))
def run(configs):
    """Metrics of every config of one (case, seed); parameters a spec leaves out take
    their ``FIXED`` values."""
    configs = [{**FIXED, **c} for c in configs]
    attack, _ = parse_case(configs[0]["case"])
    return (_optimal if attack == "optimal" else _robust)(configs)


def _n_points(c):
    k = c["fraction"] * c["n_train"]
    if abs(k - round(k)) > 1e-9 or round(k) % c["batch_size"]:
        raise ValueError(f"fraction={c['fraction']} of n_train={c['n_train']} is {k:g} points, "
                         f"not a multiple of batch_size={c['batch_size']}; choose fractions on "
                         f"that grid")
    return int(round(k))


def _optimal(configs):
    """One cumulative attack up to the largest fraction, the victim trained after each batch."""
    from threadpoolctl import threadpool_limits
    c = configs[0]
    setting = parse_case(c["case"])[1]
    train, val, test = digits_split(c["digits"], c["seed"], c["n_train"], c["n_val"])
    top = max(_n_points(k) for k in configs)
    with threadpool_limits(1, user_api="blas"):  # BLAS threads fight numba's on few cores
        lam = {"rmd": "learned", "-8": LAM_SMALL}.get(setting)
        if setting == "clean":
            lam = attacks.lam_clean(*train, T=c["T"], eta=c["eta"], random_state=c["seed"])[0]
        res = attacks.OptimalPoisoning(
            lam=lam, n_points=top, batch_size=c["batch_size"], T=c["T"], T_outer=c["T_outer"],
            T_lam=c["T_lam"], alpha=c["alpha"], beta=c["beta"], eta=c["eta"], box=(0.0, 1.0),
            lam_range=(LAM_SMALL, c["lam_large"]), random_state=c["seed"],
            progress=inner_progress()).run(train, val)
        out = []
        for k in configs:
            j = _n_points(k) // c["batch_size"]
            X, y = res.training_set(j)
            theta = attacks.train_sgd(X, y, res.lam_batches[j], lr=c["lr"], batch_size=64,
                                      epochs=c["epochs"], random_state=c["seed"])
            m = attacks.evaluate(theta, *test)
            out.append({"test_error": m["error"], "fpr": m["fpr"], "fnr": m["fnr"],
                        "w_norm2": m["w_norm2"], "lam": float(res.lam_batches[j]),
                        "val_loss": float(res.values[j]), "n_poisoned": j * c["batch_size"]})
    return out


def _robust(configs):
    """Plain (rho = 0) or rho-by-validation Wasserstein-robust fits, one per fraction."""
    from sklearn.exceptions import ConvergenceWarning
    from ..defenses import WassersteinRobustClassifier, select_rho
    model = parse_case(configs[0]["case"])[1]
    out = []
    for c in configs:
        X, y, mask = poison(c)
        _, _, Xte, yte = clean_split(c["robust_data"], c["seed"])
        with warnings.catch_warnings():  # non-convergence is a column of the results
            warnings.simplefilter("ignore", ConvergenceWarning)
            if model == "plain":
                est = WassersteinRobustClassifier(rho=0.0).fit(X, y)
            else:
                est = select_rho(WassersteinRobustClassifier(), X, y, RHOS,
                                 seed=c["seed"]).estimator
        out.append({"test_error": float(np.mean(est.predict(Xte) != yte)), "rho": est.rho,
                    "converged": bool(est.converged_), "n_poisoned": int(mask.sum())})
    return out


def spec(quick=False):
    """Every case x fraction, 10 seeds (quick: two fractions, one seed, short attacks)."""
    return SweepSpec(name="quickstart-quick" if quick else "quickstart", experiment="quickstart",
                     grid={"case": list(CASES),
                           "fraction": FRACTIONS_QUICK if quick else FRACTIONS},
                     seeds=SEEDS_QUICK if quick else SEEDS,
                     fixed={**FIXED, **(QUICK if quick else {})})


def _split_cases(df):
    parts = df["case"].str.partition(":")
    return df.assign(attack=parts[0], defender=parts[2])


def plot(df, out_dir):
    """quickstart_optimal.png (test error and lam in force vs fraction, one curve per lam)
    and quickstart_robust.png (test error vs fraction, one panel per random attack)."""
    from .plots import plot_metric_vs_fraction
    d = _split_cases(df)
    opt, rob = d[d["attack"] == "optimal"], d[d["attack"] != "optimal"]
    long = opt.melt(id_vars=["defender", "fraction", "seed"], value_vars=["test_error", "lam"],
                    var_name="quantity", value_name="value")
    long["quantity"] = long["quantity"].map({"test_error": "test error", "lam": "lam in force"})
    return [
        plot_metric_vs_fraction(long, "value", out_dir / "quickstart_optimal.png", x="fraction",
                                hue="defender", col="quantity", sharey=False, labels=NAMES,
                                title="digits 0 vs 8: optimal poisoning of logistic regression"),
        plot_metric_vs_fraction(rob.assign(attack=rob["attack"].map(NAMES)).rename(
                                    columns={"test_error": "test error"}), "test error",
                                out_dir / "quickstart_robust.png", x="fraction", hue="defender",
                                col="attack", labels=NAMES,
                                title="breast cancer: random attacks, plain vs Wasserstein-robust")]


def _paired(df, a, b, fraction):
    """Per-seed test error of defender ``a`` minus ``b`` at ``fraction`` (same split and
    attack draw): (mean, standard error, seeds where a is lower, seeds)."""
    sub = df[df["fraction"] == fraction].pivot_table(index="seed", columns="defender",
                                                     values="test_error")
    diff = (sub[a] - sub[b]).dropna()
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return float(diff.mean()), se, int((diff < 0).sum()), len(diff)


def _verdict(name_a, name_b, mean, se, lower, n, what):
    """A sentence comparing a and b from their paired difference (significant: beyond
    2 standard errors, or the same nonzero difference on every seed)."""
    if mean == 0 and not se > 0:
        return f"{what} is the same under {name_a} and {name_b} on every seed"
    if abs(mean) > 2 * se or se == 0:
        verb, strength = ("reduces" if mean < 0 else "increases"), ""
    else:
        verb, strength = ("lowers" if mean < 0 else "raises"), " (not significant: within 2 s.e.)"
    return (f"{name_a} {verb} {what} relative to {name_b} by {abs(mean):.3f}{strength}; "
            f"paired over {n} seeds (difference {mean:+.3f} ± {se:.3f} s.e.), lower on "
            f"{lower} of {n}")


def summary(df):
    """Markdown: tables of mean ± std test error, then sentences computed from them."""
    d = _split_cases(df)
    fr = sorted(d["fraction"].unique())
    f0, fmax = fr[0], fr[-1]
    stats = d.groupby(["attack", "defender", "fraction"], sort=False)["test_error"].agg(
        ["mean", "std"])
    cell = stats["mean"].map("{:.3f}".format) + " ± " + stats["std"].fillna(0).map("{:.3f}".format)
    table = cell.unstack("fraction")
    table.columns = [f"{f:g}" for f in table.columns]
    order = [tuple(c.split(":")) for c in CASES if tuple(c.split(":")) in table.index]
    table = table.loc[order]
    n = d["seed"].nunique()
    lines = [f"Mean ± std over {n} seeds of the test error vs poisoning fraction (columns).", "",
             "| attack | defender | " + " | ".join(table.columns) + " |",
             "| --- " * (len(table.columns) + 2) + "|"]
    lines += [f"| {NAMES[a]} | {NAMES[m]} | " + " | ".join(row) + " |"
              for (a, m), row in table.iterrows()]
    lines.append("")
    opt = d[d["attack"] == "optimal"]
    if not opt.empty:
        mean = opt.groupby(["defender", "fraction"])["test_error"].mean()
        lam_cv = opt[(opt["defender"] == "clean") & (opt["fraction"] == f0)]["lam"]
        lines.append(f"Optimal attack on digits 0 vs 8 (paper 002), at the largest fraction "
                     f"({fmax:g}, {round(fmax * opt['n_train'].iloc[0])} points), mean test error "
                     + ", ".join(f"{NAMES[s]} {mean[s, fmax]:.3f} ({mean[s, f0]:.3f} at {f0:g})"
                                 for s in LAMS) + ".")
        for other in ("-8", "clean"):
            m, se, lower, k = _paired(opt, "rmd", other, fmax)
            lines.append(f"- At fraction {fmax:g}, " + _verdict(
                "the learned lam", NAMES[other], m, se, lower, k, "the test error") + ".")
        lam_rmd = opt[opt["defender"] == "rmd"].groupby("fraction")["lam"].mean()
        lines.append(f"- The learned lam moves from {lam_rmd[f0]:.2f} (clean) to "
                     f"{lam_rmd[fmax]:.2f} at fraction {fmax:g} (mean over seeds).")
        picks = int((lam_cv == LAM_SMALL).sum())
        lines.append(f"- 5-fold CV picks lam_CLEAN = {LAM_SMALL:g} on {picks} of {len(lam_cv)} "
                     f"seeds (median lam_CLEAN {lam_cv.median():g})"
                     + ("; its attack and victim are then those of lam = -8, and the two "
                        "curves coincide." if picks == len(lam_cv) else
                        "; on those seeds its attack and victim are those of lam = -8."
                        if picks else "."))
        lines.append("")
    rob = d[d["attack"] != "optimal"]
    for attack in [a for a in ("label", "noise") if a in set(rob["attack"])]:
        sub = rob[rob["attack"] == attack]
        mean = sub.groupby(["defender", "fraction"])["test_error"].mean()
        rho = sub[sub["defender"] == "wdro"]["rho"]
        m, se, lower, k = _paired(sub, "wdro", "plain", fmax)
        m0, se0, lower0, _ = _paired(sub, "wdro", "plain", f0)
        lines.append(f"Breast cancer, {NAMES[attack]} (paper 000): at fraction {fmax:g} "
                     + _verdict("the Wasserstein-robust model", "the plain one", m, se, lower, k,
                                "the test error")
                     + f" ({mean['wdro', fmax]:.3f} vs {mean['plain', fmax]:.3f}); without "
                     f"attack {mean['wdro', f0]:.3f} vs {mean['plain', f0]:.3f} "
                     f"(difference {m0:+.3f} ± {se0:.3f}). Validation picks a median rho of "
                     f"{rho.median():g} (range {rho.min():g} to {rho.max():g}).")
    bad = int((~rob["converged"].astype(bool)).sum()) if "converged" in rob else 0
    if not rob.empty:
        lines.append(f"Solver: {len(rob) - bad} of {len(rob)} defence fits met their tolerance.")
    return "\n".join(lines)


register_figure(Figure(
    "quickstart", "the hyperparameter-aware optimal attack (lam learned vs -8 vs lam_CLEAN) on "
    "digits 0 vs 8 and the Wasserstein-robust model vs plain under label flip and feature "
    "noise on breast cancer (embedded data)", spec, plot, summary))
