"""Sensitivity of paper 000's Boston claim (Figure 3) to the choices the paper leaves open.

The paper: "The regularized models beat the non-regularized one in terms of
performance in the presence of poisoning attacks" (Boston, features of a beta
fraction replaced by N(0, 100), linear regression (11)). ``paper000-boston-features``
does not reproduce it. This figure reruns the comparison over the factorial of the
open choices (grid keys, one setup = one value of each):

- ``scale``: ``raw`` features, or ``std``: standardised on the clean training half
  (the attack's N(0, variance) is then in feature-std units);
- ``intercept``: ``in-norm`` (theta = [w; b] under the norm, as printed in (11)),
  ``in-norm-centred-y`` (the same, on targets centred on the training mean, added
  back at prediction), or ``free`` (b unpenalised; centring y then changes nothing);
- ``variance`` of the attack's noise: 1, 10, 100 (the paper's), 1000;
- ``labels``: ``keep`` (the paper: features only) or ``noise`` (the whole row is
  noise: labels of the poisoned rows replaced by N(0, variance) too, in $1000s).

Every setup fits, on the same 10 splits and poisons (beta 0..0.4), the plain model
and paper-form models, squared loss 0.5 r^2, 2-norm:

- ``PAPER_MODELS``: the paper's (c1, c2) grid, mean loss + c1 t^2 + c2 t,
  t = ||theta|| (||w|| for ``free``);
- ``WIDE_MODELS``: c1 alone over 1e-6..10, c2 alone over 1e-4..100, c1 = c2 over
  1e-3..1 (it contains the paper's grid);
- ``val-poisoned`` / ``val-clean``: (11) with rho on ``RHOS`` (decades 1e-8..1 and 0,
  the weights rho (X + 1), rho Y of the poisoned training half), rho chosen on the
  25% hold-out of paper000 (a model fitted on the other 75%) as it is (poisoned) or
  on the same rows before the attack (a trusted clean hold-out), then refitted on
  the whole training half.

Data: the 506-row UCI ``housing.data``, the file the paper's count (506 records)
matches; the loader pins its sha256 and the summary prints it. The other copy in the
shared data, R mlbench's ``BostonHousing.csv``, holds the same values, so the variant
is fixed, not varied.

Fits: ``defenses.barrier.solve``, the interior point behind ``fit_batch``, called
directly because it takes the entries under the norm (``sel``) and so fits the free
intercept without centring tricks; one call per setup for every (beta, seed, model).

Summary: per setup, at the largest beta, the paired gain over seeds (plain MSE minus
model MSE, same split and poison) with a one-sided Wilcoxon signed-rank test (scipy),
Holm-corrected within each family (the paper's 5, the wide grid's 19), alpha = 0.05.
The paper's claim HOLDS in a setup when all five paper models are significantly
better than plain, PARTLY when some are, and FAILS when none is.
"""
import math
from pathlib import Path

import numpy as np

from .. import datasets
from . import paper000 as P
from .registry import Figure, experiment, register_figure
from .spec import SweepSpec

NAME = "paper000-boston-sensitivity"
DATASET = "boston-housing"
BASELINE = {"scale": "raw", "intercept": "in-norm", "variance": 100.0, "labels": "keep"}
FACTORS = {"scale": ["raw", "std"], "intercept": ["in-norm", "in-norm-centred-y", "free"],
           "variance": [1.0, 10.0, 100.0, 1000.0], "labels": ["keep", "noise"]}
FACTORS_QUICK = {"scale": ["raw", "std"], "intercept": ["in-norm", "free"],
                 "variance": [100.0], "labels": ["keep"]}
BETAS, BETAS_QUICK = P.BETAS, [0.0, 0.4]
SEEDS, SEEDS_QUICK = P.SEEDS, [0, 1, 2]
PLAIN = P.PLAIN
PAPER_MODELS = [m for m in P.PAPER_MODELS if m != PLAIN]
WIDE_GRID = sorted({*((10.0 ** k, 0.0) for k in range(-6, 2)),
                    *((0.0, 10.0 ** k) for k in range(-4, 3)),
                    *((10.0 ** k, 10.0 ** k) for k in range(-3, 1)), *P.PAPER_GRID[1:]})
WIDE_MODELS = [f"c1={a:g},c2={b:g}" for a, b in WIDE_GRID]
VAL_MODELS = ["val-poisoned", "val-clean"]
MODELS = [PLAIN, *WIDE_MODELS, *VAL_MODELS]
RHOS = [0.0] + [10.0 ** k for k in range(-8, 1)]
ALPHA = 0.05
TOL, MAX_ITER = 1e-8, 1000


def _weights(model):
    c1, c2 = (float(kv.split("=")[1]) for kv in model.split(","))
    return c1, c2


def _training(config):
    """(X, y, mask, X_clean, y_clean) of the attacked training half of one config."""
    X, y, _, _ = P.clean_split(DATASET, config["seed"], config["scale"] == "std")
    pois = P.poison({"dataset": DATASET, "attack": "noise", "seed": config["seed"],
                     "beta": config["beta"], "variance": config["variance"],
                     "standardize": config["scale"] == "std"})
    yp = pois.y.copy()
    if config["labels"] == "noise":  # drawn for every row, so nested in beta like the features
        rng = np.random.default_rng(np.random.SeedSequence([config["seed"], 3]))
        yp[pois.mask] = (rng.standard_normal(len(y)) * math.sqrt(config["variance"]))[pois.mask]
    elif config["labels"] != "keep":
        raise ValueError(f"labels={config['labels']!r}: use 'keep' or 'noise'")
    return pois.X, yp, pois.mask, X, y


def _solve(Xs, ys, a, b, free):
    """One barrier run: sets Xs (S, n, d), ys (S, n), weights a, b (S, G); intercept last."""
    from ..defenses import barrier
    S, n, d = Xs.shape
    Xa = np.concatenate([Xs, np.ones((S, n, 1))], axis=2)
    zero = np.zeros_like(a)
    theta, _, _, done = barrier.solve(Xa, ys, kind="squared", q=2.0,
                                      sel=np.arange(d if free else d + 1), c=zero, a=a, b=b,
                                      kappa=zero, tol=TOL, max_iter=MAX_ITER)
    return theta, done


def _mse(theta, X, y, offset):
    """MSE of every parameter vector theta (..., G, d + 1) on rows (X, y)."""
    z = theta[..., :-1] @ X.T + theta[..., -1:] + offset
    return np.mean((z - y) ** 2, axis=-1)


@experiment("paper000-sensitivity", batch_keys=("seed", "beta"),
            params=("dataset", "beta", *FACTORS))
def run(configs):
    """Clean-test MSE of every model in MODELS (one column each) and the chosen rho of
    the val models; one setup per call, all its (beta, seed) fitted together."""
    from ..defenses.solvers import paper_coefficients
    c0 = configs[0]
    if c0["dataset"] != DATASET:
        raise ValueError(f"dataset={c0['dataset']!r}: this study is of {DATASET!r} only")
    for key, values in FACTORS.items():
        if c0[key] not in values:
            raise ValueError(f"{key}={c0[key]!r}: choose one of {values}")
    free = c0["intercept"] == "free"
    sets = [_training(c) for c in configs]
    offsets = np.array([s[1].mean() if c0["intercept"] == "in-norm-centred-y" else 0.0
                        for s in sets])
    Xs = np.stack([s[0] for s in sets])
    ys = np.stack([s[1] for s in sets]) - offsets[:, None]
    # weights (a, b): the (c1, c2) grid, then rho (X + 1), rho Y of each training set
    lips = np.array([paper_coefficients(X, y, "squared", 2.0, True,
                                        (float(np.linalg.norm(X, axis=1).max()),
                                         float(np.abs(y).max())), "auto")
                     for X, y in zip(Xs, ys)])
    grid = np.array([_weights(m) for m in [PLAIN, *WIDE_MODELS]])
    rhos = np.array(RHOS)
    a = np.hstack([np.tile(grid[:, 0], (len(sets), 1)), lips[:, :1] * rhos])
    b = np.hstack([np.tile(grid[:, 1], (len(sets), 1)), lips[:, 1:] * rhos])
    theta, done = _solve(Xs, ys, a, b, free)
    keep = [P._holdout(len(y), c) for c, y in zip(configs, ys)]
    theta_h, done_h = _solve(np.stack([X[k] for X, k in zip(Xs, keep)]),
                             np.stack([y[k] for y, k in zip(ys, keep)]),
                             a[:, len(grid):], b[:, len(grid):], free)
    out = []
    for i, (c, (Xp, yp, mask, Xc, yc)) in enumerate(zip(configs, sets)):
        _, _, Xte, yte = P.clean_split(DATASET, c["seed"], c["scale"] == "std")
        mse = _mse(theta[i], Xte, yte, offsets[i])
        m = {f"mse {name}": float(v) for name, v in zip([PLAIN, *WIDE_MODELS], mse)}
        held = ~keep[i]
        for name, (Xv, yv) in zip(VAL_MODELS, ((Xp[held], yp[held]), (Xc[held], yc[held]))):
            g = P._best(_mse(theta_h[i], Xv, yv, offsets[i]))
            m[f"mse {name}"] = float(mse[len(grid) + g])
            m[f"rho {name}"] = RHOS[g]
        m.update(n_poisoned=int(mask.sum()), n_train=len(yp),
                 converged=bool(done[i].all() and done_h[i].all()))
        out.append(m)
    return out


# --- statistics ----------------------------------------------------------------------------

def _wilcoxon_greater(d):
    """One-sided Wilcoxon signed-rank p-value of 'd > 0', exact null distribution, zero
    differences dropped (Wilcoxon's convention; 1 when every d is 0). scipy's default for
    samples with zeros is a permutation test, 500x slower; the exact null assumes distinct
    nonzero |d|, which differences of float MSEs are."""
    from scipy.stats import wilcoxon
    d = np.asarray(d, float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="greater", method="exact").pvalue)


def holm(p):
    """Holm's step-down adjusted p-values (family-wise error rate)."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1.0)
    return out


def _compare(sub, models):
    """Per model: mean paired gain (plain - model MSE), its % of plain, Holm p-value."""
    plain = sub[f"mse {PLAIN}"].to_numpy()
    gains = [plain - sub[f"mse {m}"].to_numpy() for m in models]
    p = holm([_wilcoxon_greater(g) for g in gains])
    return [(m, float(g.mean()), float(np.mean(g / plain)) * 100, float(pv))
            for m, g, pv in zip(models, gains, p)]


def setup_table(df):
    """One row per setup, at the largest beta: plain MSE, the paper grid (significant
    count, best model's gain), the wide grid, the val models, and the verdict."""
    import pandas as pd
    bmax = df["beta"].max()
    rows = []
    for key, sub in df[df["beta"] == bmax].groupby(list(FACTORS), sort=False):
        sub = sub.sort_values("seed")
        row = dict(zip(FACTORS, key), seeds=len(sub), plain=sub[f"mse {PLAIN}"].mean())
        for fam, models in (("paper", PAPER_MODELS), ("wide", WIDE_MODELS)):
            res = _compare(sub, models)
            best = max(res, key=lambda r: r[1])
            row.update({f"{fam} sig": sum(r[3] < ALPHA for r in res), f"{fam} of": len(res),
                        f"{fam} best": best[0], f"{fam} gain %": best[2], f"{fam} p": best[3]})
        for m in VAL_MODELS:
            (_, _, rel, pv), = _compare(sub, [m])
            row.update({f"{m} gain %": rel, f"{m} p": pv,
                        f"{m} rho": float(sub[f"rho {m}"].median())})
        k = row["paper sig"]
        row["claim"] = "HOLDS" if k == len(PAPER_MODELS) else "PARTLY" if k else "FAILS"
        rows.append(row)
    return pd.DataFrame(rows)


def _label(row, ref=BASELINE):
    """A setup named by its departures from the baseline (the paper as printed)."""
    diff = [f"{k}={row[k]:g}" if k == "variance" else f"{k}={row[k]}"
            for k in FACTORS if row[k] != ref[k]]
    return ", ".join(diff) or "baseline"


def _data_file():
    """(file name, sha256, where it was read from) of the Boston data: the loader reads
    only bytes whose sha256 equals the pinned one."""
    spec, = datasets.SOURCES[DATASET].files
    return spec.name, spec.sha256, P._dataset(DATASET).meta["origin"]


def _order(table):
    """Setups by number of departures from the baseline, then in factor order."""
    n = [sum(r[k] != BASELINE[k] for k in FACTORS) for _, r in table.iterrows()]
    return table.assign(_n=n).sort_values("_n", kind="stable").drop(columns="_n")


def _one_at_a_time(table):
    """Rows of the baseline and of each single departure from it."""
    n = np.array([sum(r[k] != BASELINE[k] for k in FACTORS) for _, r in table.iterrows()])
    return table[n == 0], table[n == 1]


def choice_effects(table, col="paper gain %"):
    """Per choice (a factor moved off its baseline level): over every pair of setups that
    differ in that factor alone, the mean and largest change of ``col`` and how many
    pairs change verdict."""
    import pandas as pd
    rows = []
    for f, levels in FACTORS.items():
        others = [k for k in FACTORS if k != f]
        base = table[table[f] == BASELINE[f]]
        for v in levels:
            if v == BASELINE[f]:
                continue
            pair = table[table[f] == v].merge(base, on=others, suffixes=("", " base"))
            if pair.empty:
                continue
            shift = pair[col] - pair[f"{col} base"]
            top = pair.loc[shift.abs().idxmax()]
            rows.append({"choice": f"{f}: {BASELINE[f]:g} -> {v:g}" if f == "variance"
                         else f"{f}: {BASELINE[f]} -> {v}", "pairs": len(pair),
                         "mean shift": float(shift.mean()),
                         "largest shift": float(shift.loc[shift.abs().idxmax()]),
                         "largest at": _label(top),
                         "verdict changes": int((pair["claim"] != pair["claim base"]).sum())})
    return pd.DataFrame(rows)


def _fmt(k, v):
    return f"{v:g}" if k == "variance" else str(v)


def _describe(rows, table):
    """The setups ``rows`` as factor levels ('scale=raw, variance in {10, 100}', factors at
    every level left out) when they are exactly that product within ``table``, else listed."""
    levels = {k: [v for v in FACTORS[k] if v in set(table[k])] for k in FACTORS}
    parts, product = [], table
    for k in FACTORS:
        vals = [v for v in levels[k] if v in set(rows[k])]
        product = product[product[k].isin(vals)]
        if len(vals) < len(levels[k]):
            parts.append(f"{k}={_fmt(k, vals[0])}" if len(vals) == 1 else
                         f"{k} in {{{', '.join(_fmt(k, v) for v in vals)}}}")
    if len(product) == len(rows):
        return ", ".join(parts) or "every setup"
    return "; ".join(_label(r) for _, r in rows.iterrows())


def conclusion(table):
    """The sentence the README and Figure 3's summary cite, from the verdicts."""
    n = len(table)
    for verdict, what in (("HOLDS", "holds (all five paper (c1, c2) models significantly better "
                                    "than plain)"),
                          ("PARTLY", "holds partly (some paper (c1, c2) models significantly "
                                     "better than plain)")):
        rows = table[table["claim"] == verdict]
        if len(rows):
            gains = rows["paper gain %"]
            never = [f"{k}={_fmt(k, v)} ({int((table[k] == v).sum())})" for k in FACTORS
                     for v in FACTORS[k] if (table[k] == v).any() and not (rows[k] == v).any()]
            return (f"the Boston claim {what} only when {_describe(rows, table)} ({len(rows)} "
                    f"of {n} setups; best paper-model gain {gains.min():+.1f}% to "
                    f"{gains.max():+.1f}% of plain MSE); it fails in the other {n - len(rows)}"
                    + (f", among them every setup with {', '.join(never)}" if never else ""))
    return (f"the Boston claim fails under every setup tried ({n} setups of scale x intercept "
            f"x noise variance x labels: no paper (c1, c2) model significantly better than "
            f"plain at the largest beta)")


def summary(df):
    """Markdown: data file, the per-setup table, the one-at-a-time effects, the conclusion."""
    table = _order(setup_table(df))
    bmax = df["beta"].max()
    name, sha, origin = _data_file()
    n_rows = P._dataset(DATASET).n_samples
    show = table.assign(setup=[_label(r) for _, r in table.iterrows()])
    cols = ["setup", "claim", "plain", "paper sig", "paper best", "paper gain %", "paper p",
            "wide sig", "wide best", "wide gain %", "wide p", "val-poisoned gain %",
            "val-poisoned p", "val-clean gain %", "val-clean p"]
    betas = ", ".join(f"{b:g}" for b in sorted(df["beta"].unique()))
    lines = [f"Sensitivity of Figure 3 (Boston, {n_rows} rows: {name}, sha256 {sha}, read from "
             f"{origin}); {df['seed'].nunique()} seeds, betas {betas}.",
             "Baseline = the paper as printed: "
             + ", ".join(f"{k}={_fmt(k, v)}" for k, v in BASELINE.items())
             + " (the setup of paper000-boston-features).",
             f"At beta={bmax:g}: gain = mean over seeds of (plain - model) test MSE, as % of "
             f"plain; p = one-sided Wilcoxon signed-rank, paired over seeds, Holm-corrected "
             f"within the paper's {len(PAPER_MODELS)} / the wide grid's {len(WIDE_MODELS)} "
             f"models; sig = count with p < {ALPHA}. claim: HOLDS = all paper models "
             f"significantly better than plain, PARTLY = some, FAILS = none.", "",
             P._markdown(show[cols]), ""]
    base, single = _one_at_a_time(table)
    if len(base) == 1:
        b = base.iloc[0]
        lines += [f"One choice at a time from the baseline (paper best gain "
                  f"{b['paper gain %']:+.2f}%, {b['claim']}): " + "; ".join(
                      f"{_label(r)}: {r['paper gain %']:+.2f}% ({r['claim']})"
                      for _, r in single.iterrows()) + ".", ""]
    effects = choice_effects(table)
    if len(effects):
        top = effects.loc[effects["mean shift"].abs().idxmax()]
        lines += ["Each choice over every pair of setups that differ in it alone (shift of "
                  "the paper best gain %, points):", "", P._markdown(effects), "",
                  f"The single choice that moves the result most: {top['choice']} (mean "
                  f"shift {top['mean shift']:+.2f} points over {top['pairs']} pairs, largest "
                  f"{top['largest shift']:+.2f} at {top['largest at']}).", ""]
    for fam in ("wide", "val-clean", "val-poisoned"):
        col = f"{fam} sig" if fam == "wide" else f"{fam} p"
        ok = table[table[col] > 0] if fam == "wide" else table[
            (table[col] < ALPHA) & (table[f"{fam} gain %"] > 0)]
        rho = "" if fam == "wide" else \
            f"; median chosen rho {df[f'rho {fam}'][df['beta'] == bmax].median():g}"
        lines.append(f"{fam}: significantly better than plain in {len(ok)} of {len(table)} setups"
                     + (f" ({'; '.join(_label(r) for _, r in ok.iterrows())})" if len(ok) else "")
                     + rho + ".")
    n_bad = int((~df["converged"].astype(bool)).sum())
    lines += ["", f"Solver: {len(df) - n_bad} of {len(df)} configs with every fit converged.",
              "", f"Conclusion: {conclusion(table)}."]
    return "\n".join(lines)


# --- figure --------------------------------------------------------------------------------

def _spec(quick):
    return SweepSpec(name=f"{NAME}-quick" if quick else NAME, experiment="paper000-sensitivity",
                     grid={**(FACTORS_QUICK if quick else FACTORS),
                           "beta": BETAS_QUICK if quick else BETAS},
                     seeds=SEEDS_QUICK if quick else SEEDS, fixed={"dataset": DATASET})


MARKERS = {"paper": ("o", "-"), "wide": ("s", "--"), "val-poisoned": ("^", "-."),
           "val-clean": ("v", ":")}


def plot(df, out_dir):
    """Two PNGs: the gain of each model family per setup at the largest beta (dots,
    filled where significant), and MSE vs beta for the baseline, its single departures
    and the setups where the claim holds (distinct markers and line styles, so
    coinciding curves stay visible)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _order(setup_table(df))
    labels = [_label(r) for _, r in table.iterrows()]
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(table) + 1.6))
    ypos = np.arange(len(table))
    for j, (fam, (mk, _)) in enumerate(MARKERS.items()):
        gain, p = table[f"{fam} gain %"], table[f"{fam} p"]
        sig = (p < ALPHA).to_numpy()
        off = ypos + (j - 1.5) * 0.17  # side by side: equal gains do not hide each other
        ax.scatter(gain[sig], off[sig], marker=mk, color=f"C{j}", label=f"{fam} (p < {ALPHA})")
        ax.scatter(gain[~sig], off[~sig], marker=mk, facecolors="none", edgecolors=f"C{j}",
                   label=f"{fam} (n.s.)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"gain over plain at beta={df['beta'].max():g}, % of plain MSE\n"
                  "(best model of each family; > 0: regularised better)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    gains = out_dir / f"{NAME}.png"
    fig.savefig(gains, dpi=120)
    plt.close(fig)

    base, single = _one_at_a_time(table)
    holds = table[(table["claim"] != "FAILS") & ~table.index.isin([*base.index, *single.index])]
    panels = [*base.iterrows(), *single.iterrows(), *holds.iterrows()] or list(table.iterrows())
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, (_, row) in zip(axes.flat, panels):
        sub = df[(df[list(FACTORS)] == [row[k] for k in FACTORS]).all(axis=1)]
        mean = sub.groupby("beta").mean(numeric_only=True)
        ax.plot(mean.index, mean[f"mse {PLAIN}"], "k-", marker="x", label=PLAIN)
        for j, (fam, (mk, ls)) in enumerate(MARKERS.items()):
            m = row[f"{fam} best"] if fam in ("paper", "wide") else fam
            ax.plot(mean.index, mean[f"mse {m}"], ls, marker=mk, color=f"C{j}", mfc="none",
                    label=f"{fam}: {m}" if fam in ("paper", "wide") else fam)
        ax.set_title(_label(row), fontsize=8)
        ax.set_xlabel("beta", fontsize=8)
        ax.set_ylabel("test MSE", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{NAME}: mean test MSE over {df['seed'].nunique()} seeds", fontsize=10)
    fig.tight_layout()
    curves = out_dir / f"{NAME}-curves.png"
    fig.savefig(curves, dpi=120)
    plt.close(fig)
    return [gains, curves]


register_figure(Figure(NAME, "Fig. 3 sensitivity: Boston claim over scaling, intercept, "
                             "noise variance, labels, wide (c1, c2) grid, clean/poisoned rho",
                       _spec, plot, summary))
