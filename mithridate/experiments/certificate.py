"""Theorem 2's certificate under attack: does the clean test loss stay below J_n?

Reads paper 000 result rows (``paper000.evaluate``'s metrics: ``J_n``, ``test_loss``,
``holds``, ``rho``, ``certificate``); the radius is either learned (``*-val``: rho by a
hold-out of the poisoned training half) or Theorem 2's ``beta W(Q, P)`` with W from POT
between the poisoned and the clean training rows (``paper-theorem``, paper000._w_qp).
"""
import numpy as np
import pandas as pd

RADIUS = {"paper-val": "learned (hold-out)", "exact-val": "learned (hold-out)",
          "paper-theorem": "beta W(Q, P) (POT)"}
KEYS = ["attack", "model", "radius", "beta"]


def table(df):
    """One row per (attack, certified model, beta) and an 'all' beta row per (attack,
    model): fits, fits with clean test loss <= J_n, their share, median rho."""
    cert = df[df["certificate"].astype(bool) & df["model"].isin(list(RADIUS))]
    cert = cert.assign(radius=cert["model"].map(RADIUS), holds=cert["holds"].astype(bool))
    parts = [cert, cert.assign(beta="all")]
    rows = [(*key, len(g), int(g["holds"].sum()), float(g["rho"].median()))
            for part in parts for key, g in part.groupby(KEYS, sort=False)]
    out = pd.DataFrame(rows, columns=KEYS + ["fits", "holds", "median_rho"])
    out["share"] = out["holds"] / out["fits"]
    return out.sort_values(["model", "attack"], kind="stable").reset_index(drop=True)


def sentences(tab, optimal):
    """One sentence per certified model: share of fits certified under the random
    attack(s) vs the optimal one (``optimal`` names the latter)."""
    lines = []
    total = tab[tab["beta"] == "all"]
    for model, g in total.groupby("model", sort=False):
        by = {a: r for a, r in zip(g["attack"], g.itertuples())}
        if optimal not in by or len(by) < 2:
            continue
        o = by.pop(optimal)
        rand = ", ".join(f"{a}: {r.holds} of {r.fits} ({r.share:.0%})" for a, r in by.items())
        worse = any(r.share > o.share for r in by.values())
        lines.append(f"- {model} (rho {RADIUS[model]}): clean test loss <= J_n under the random "
                     f"attack in {rand}; under the optimal attack in {o.holds} of {o.fits} "
                     f"({o.share:.0%}): the guarantee "
                     + ("holds less often under the optimal attack." if worse
                        else "holds at least as often under the optimal attack."))
    return lines


def plot(df, out_path, title):
    """J_n against the clean test loss of every certified fit, one colour per attack,
    the diagonal (the certificate's boundary) drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cert = df[df["certificate"].astype(bool) & df["model"].isin(list(RADIUS))]
    models = list(dict.fromkeys(cert["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4 * max(len(models), 1), 3.6),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = cert[cert["model"] == model]
        for i, (attack, g) in enumerate(sub.groupby("attack", sort=False)):
            ax.scatter(g["test_loss"], g["J_n"], s=14, color=f"C{i}", label=attack, alpha=0.8)
        lo = float(np.nanmin(sub[["test_loss", "J_n"]].to_numpy()))
        hi = float(np.nanmax(sub[["test_loss", "J_n"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="J_n = test loss")
        ax.set(xlabel="clean test loss", ylabel="J_n", title=f"{model}: rho {RADIUS[model]}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: certificate holds above the diagonal", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
