"""PNGs and the computed summary of ``cross-mnist`` / ``cross-fmnist`` (issue 11)."""
from pathlib import Path

import numpy as np

from .cross import LABELS, SETTINGS, WASSERSTEIN
from .paper002_plots import claim
from .plots import plot_metric_vs_fraction

P_WORSE = 0.05  # one-sided paired t-test level for "worse than L2"


def plot(df, out):
    """Test error vs fraction per defence (mean +- std over seeds); learned rho and lam."""
    out, tag = Path(out), df["dataset"].iloc[0]
    d = df.assign(defence=df["setting"].map(LABELS), fraction=100 * df["fraction"])
    paths = [plot_metric_vs_fraction(d.rename(columns={"test_error": "test error"}), "test error",
                                     out / f"{tag}_cross_test_error.png", x="fraction",
                                     hue="defence", xlabel="poisoning points (% of training)",
                                     title=f"{tag}: optimal attack vs defence")]
    learned = d[d["setting"].isin(["l2", "w-learned", "both"])].melt(
        id_vars=["defence", "fraction", "seed"], value_vars=["rho", "lam"],
        var_name="quantity", value_name="value").dropna(subset=["value"])
    learned["quantity"] = learned["quantity"].map({"rho": "learned rho", "lam": "learned lam"})
    paths.append(plot_metric_vs_fraction(learned, "value", out / f"{tag}_cross_learned.png",
                                         x="fraction", hue="defence", col="quantity",
                                         sharey=False, xlabel="poisoning points (% of training)",
                                         title=f"{tag}: learned hyperparameters"))
    return paths


def paired(df, a, b):
    """Per attacked n_points: mean test-error difference a - b over the seeds both have,
    and the one-sided paired t-test's p for "a worse than b" (nan with < 2 seeds or no
    spread). Returns {n_points: (mean diff, p, seeds)}."""
    from scipy.stats import ttest_rel
    e = df.pivot_table(index=["n_points", "seed"], columns="setting", values="test_error")
    out = {}
    for n, g in e[[a, b]].dropna().groupby(level="n_points"):
        if n == 0:
            continue
        diff = g[a] - g[b]
        p = float(ttest_rel(g[a], g[b], alternative="greater").pvalue) \
            if len(g) > 1 and diff.std() > 0 else float("nan")
        out[n] = (float(diff.mean()), p, len(g))
    return out


def _as_well(df, s, n_train):
    """HOLDS when at no attacked fraction defence s is worse than L2: mean difference <= 0,
    or not significant (p >= P_WORSE) with >= 2 seeds."""
    rows = paired(df, s, "l2")
    worse = [n for n, (m, p, k) in rows.items() if m > 0 and not (k > 1 and p >= P_WORSE)]
    text = "; ".join(f"{100 * n / n_train:.1f}%: {m:+.4f}" + ("" if np.isnan(p) else f" (p {p:.2g})")
                     for n, (m, p, k) in rows.items())
    return claim(bool(rows) and not worse,
                 f"{LABELS[s]} mitigates the optimal attack as well as L2 (lam learned): paired "
                 f"test-error difference vs L2 per fraction {text or 'none'}"
                 + (f"; worse at {', '.join(f'{100 * n / n_train:.1f}%' for n in worse)}" if worse
                    else ""))


def _trend(df, s, col, what):
    from scipy.stats import spearmanr
    m = df[df["setting"] == s].groupby("n_points")[col].mean()
    if len(m) < 2:
        return claim(False, f"{what} under {LABELS[s]} grows with the fraction: not testable")
    r = spearmanr(m.index, m)[0] if m.std() > 0 else float("nan")
    n_train = df["n_train"].iloc[0]
    return claim(bool(r > 0 and m.iloc[-1] > m.iloc[0]),
                 f"{what} under {LABELS[s]} grows with the fraction ({m.iloc[0]:.3g} at 0% to "
                 f"{m.iloc[-1]:.3g} at {100 * m.index[-1] / n_train:.1f}%; Spearman {r:.2f})")


def summary(df):
    g = df.groupby(["setting", "n_points"])["test_error"]
    mean, std = g.mean(), g.std().fillna(0.0)
    pts = sorted(df["n_points"].unique())
    n_train = df["n_train"].iloc[0]
    have = [s for s in SETTINGS if s in set(df["setting"])]
    lines = [f"{df['dataset'].iloc[0]}: test error, mean (std) over {df['seed'].nunique()} seeds, "
             f"vs the fraction of poisoning points (n_train = {int(n_train)}).", "",
             "| defence | " + " | ".join(f"{100 * p / n_train:.1f}%" for p in pts) + " |",
             "| --- " * (len(pts) + 1) + "|"]
    for s in have:
        lines.append(f"| {LABELS[s]} | " + " | ".join(
            f"{mean[s, p]:.4f} ({std[s, p]:.4f})" for p in pts) + " |")
    learned = df[df["setting"].isin(["w-learned", "both"])].groupby(["setting", "n_points"])["rho"]
    lines += ["", "Learned rho (mean over seeds): " + "; ".join(
        f"{LABELS[s]}: " + ", ".join(f"{v:.3g}" for v in learned.mean()[s])
        for s in ("w-learned", "both") if s in have)]
    clean = df[df["setting"] == "w-clean"]["rho"]
    if len(clean):
        lines.append(f"rho by clean validation: median {clean.median():.3g} "
                     f"(range {clean.min():.3g} .. {clean.max():.3g}).")
    lines.append("")
    if "l2" in have:
        lines += [_as_well(df, s, n_train) for s in WASSERSTEIN if s in have]
    hi = pts[-1]
    if "none" in have:
        lines += [claim(mean[s, hi] < mean["none", hi],
                        f"under the strongest attack ({100 * hi / n_train:.1f}%) {LABELS[s]} "
                        f"({mean[s, hi]:.4f}) beats no defence ({mean['none', hi]:.4f})")
                  for s in have if s != "none"]
    lines += [_trend(df, s, "rho", "the learned rho") for s in ("w-learned", "both") if s in have]
    lines += [_trend(df, s, "lam", "the learned lam") for s in ("l2", "both") if s in have]
    secs = df.groupby(["setting", "seed"])["attack_seconds"].first().groupby("seed").sum()
    lines += ["", f"Attack time per seed (equal defences in lockstep): median "
              f"{secs.median():.1f} s, total {secs.sum():.0f} s (rho_clean's selection included)."]
    return "\n".join(lines)
