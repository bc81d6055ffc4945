"""PNGs of the paper-002 figures (matplotlib, Agg) and the claim lines of their summaries."""
from pathlib import Path

import numpy as np

from .plots import plot_metric_vs_fraction

LABELS = {"-8": "lam = -8", "large": "lam large", "clean": "lam_CLEAN", "rmd": "lam_RMD"}


def claim(holds, text):
    """One summary line: whether a claim of the paper holds in this run, and why."""
    return f"- {'HOLDS' if holds else 'DOES NOT HOLD'}: {text}."


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_fig1(df, out):
    """Three panels: error maps (plain, L2) with boundaries and the point; lam map."""
    from ..datasets import gaussian_2d_paper002
    plt = _plt()
    out = Path(out)
    r = {p: df[df["panel"] == p].iloc[0] for p in ("plain", "l2", "lam")}
    box, grid = float(r["plain"]["box"]), int(r["plain"]["grid"])
    tr, _ = gaussian_2d_paper002(int(r["plain"]["seed"]))
    ext = (-box, box, -box, box)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    xs = np.linspace(-box, box, 2)
    for ax, p in zip(axes, ("plain", "l2", "lam")):
        m = np.asarray(r[p]["map"]).reshape(grid, grid)
        im = ax.imshow(m, origin="lower", extent=ext, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, label="learned lam" if p == "lam" else "validation error")
        ax.scatter(*tr.X[tr.y == 0].T, c="tab:blue", s=14, edgecolor="w", linewidth=0.4,
                   label="training, class 0")
        ax.scatter(*tr.X[tr.y == 1].T, c="tab:green", s=14, edgecolor="w", linewidth=0.4,
                   label="training, class 1")
        ax.add_patch(plt.Rectangle((-box, -box), 2 * box, 2 * box, fill=False, ls="-.", ec="grey"))
        if p != "lam":
            for key, style in (("theta_clean", dict(color="w", ls="--", label="boundary, clean")),
                               ("theta_poisoned", dict(color="r", ls="-",
                                                       label="boundary, with the point"))):
                w1, w2, b = r[p][key]
                if abs(w2) > 1e-12:
                    ax.plot(xs, -(w1 * xs + b) / w2, **style)
            ax.scatter(*r[p]["xp_init"], s=60, marker="o", facecolor="none", edgecolor="r",
                       linewidth=1.5, label="poisoning point, start (class 1)")
            ax.scatter(*r[p]["xp"], c="r", s=60, marker="o", edgecolor="k",
                       label="poisoning point, optimised")
            ax.set_title(f"{'no regularisation' if p == 'plain' else 'L2'} "
                         f"(lam = {r[p]['lam']:.3g}): error vs the point's position", fontsize=9)
        else:
            ax.set_title("lam minimising the validation error vs the point's position", fontsize=9)
        ax.set_xlim(-box, box)
        ax.set_ylim(-box, box)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, markerscale=1.5,
               facecolor="0.7", bbox_to_anchor=(0.5, -0.07))  # grey: the white line shows
    return [_save(fig, out / "paper002_fig1.png")]


def plot_fig2(df, out):
    """Figure 2 (test error; lam and ||w||^2), 4 (rates), 6 (histograms), 8/9 (images)."""
    out = Path(out)
    tag = df["dataset"].iloc[0]
    d = df.assign(**{"lam setting": df["setting"].map(LABELS)})
    paths = [plot_metric_vs_fraction(d.rename(columns={"test_error": "test error"}), "test error",
                                     out / f"{tag}_fig2_test_error.png", x="fraction",
                                     hue="lam setting", title=f"{tag}: optimal poisoning")]
    rates = d.melt(id_vars=["lam setting", "fraction", "seed"], value_vars=["fpr", "fnr"],
                   var_name="rate", value_name="test rate")
    rates["rate"] = rates["rate"].map({"fpr": "false positive rate", "fnr": "false negative rate"})
    paths.append(plot_metric_vs_fraction(rates, "test rate", out / f"{tag}_fig4_rates.png",
                                         x="fraction", hue="lam setting", col="rate",
                                         title=f"{tag}: test false positive / negative rates"))
    quantities = d.melt(id_vars=["lam setting", "fraction", "seed"], value_vars=["lam", "w_norm2"],
                        var_name="quantity", value_name="value")
    quantities["quantity"] = quantities["quantity"].map(
        {"lam": "lam in force (learned for lam_RMD)", "w_norm2": "||w||^2"})
    paths.append(plot_metric_vs_fraction(quantities, "value", out / f"{tag}_fig2_lam_wnorm.png",
                                         x="fraction", hue="lam setting", col="quantity",
                                         sharey=False, title=f"{tag}: lam and ||w||^2"))
    if "weights" in d:
        paths += _histograms(d, out / f"{tag}_fig6_histograms.png", tag)
    if "images_init" in d:
        paths += _images(d, out / f"{tag}_fig8_9_points.png", tag)
    return paths


def _histograms(d, path, tag):
    plt = _plt()
    rows = d[d["weights"].apply(lambda v: isinstance(v, list))]
    settings = [s for s in ("-8", "rmd") if s in set(rows["setting"])]
    if not settings:
        return []
    fig, axes = plt.subplots(1, len(settings), figsize=(4.8 * len(settings), 3.4), squeeze=False)
    for ax, s in zip(axes[0], settings):
        sub = rows[rows["setting"] == s].sort_values("n_points")
        ws = [np.asarray(w) for w in sub["weights"]]
        bins = np.linspace(min(w.min() for w in ws), max(w.max() for w in ws), 60)
        top = 0.0
        for w, n, f in zip(ws, sub["n_points"], sub["fraction"]):
            # clean filled, poisoned as an outline on top: both stay readable where they overlap
            h, _, _ = ax.hist(w, bins=bins, weights=np.full(w.size, 1 / w.size),
                              **(dict(alpha=0.5, label="clean") if n == 0 else dict(
                                  histtype="step", linewidth=1.4, color="C3",
                                  label=f"{100 * f:.1f}% poisoned")))
            # pixels that are never lit keep weight 0: like the paper, cut that spike off
            h[np.searchsorted(bins, 0.0, side="right") - 1 if bins[0] <= 0 <= bins[-1] else 0] = 0
            top = max(top, h.max())
        if top > 0:
            ax.set_ylim(0, 1.15 * top)
        ax.locator_params(axis="x", nbins=5)
        ax.set_title(f"{LABELS[s]} (seed {int(sub['seed'].iloc[0])}; spike at 0 cut)")
        ax.set_xlabel("weight value")
        ax.set_ylabel("relative frequency")
        ax.legend()
    fig.suptitle(f"{tag}: histograms of the logistic-regression weights", fontsize=10)
    return [_save(fig, path)]


def _images(d, path, tag):
    plt = _plt()
    rows = d[d["images_init"].apply(lambda v: isinstance(v, list))].set_index("setting")
    settings = [s for s in ("-8", "rmd") if s in rows.index]
    if not settings:
        return []
    side = 28  # MNIST and Fashion-MNIST images
    panels = [("initial: validation clones, labels flipped", rows["images_init"].iloc[0])] + [
        (f"optimised, {LABELS[s]}", rows.loc[s, "images_opt"]) for s in settings]
    k = len(panels[0][1]) // (side * side)
    fig, axes = plt.subplots(len(panels), k, figsize=(1.4 * k, 1.5 * len(panels)), squeeze=False)
    for r, (name, px) in enumerate(panels):
        imgs = np.asarray(px).reshape(k, side, side)
        for c in range(k):
            axes[r, c].imshow(imgs[c], cmap="gray", vmin=0, vmax=255)
            axes[r, c].axis("off")
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"{tag}: poisoning points (sampled across batches)", fontsize=10)
    return [_save(fig, path)]


FIG3_LABELS = {"-8": "lam = -8", "large": "lam = log 40", "rmd": "lam_RMD"}


def plot_fig3(df, out):
    """Per data set: Figure 3 (test error; lam_RMD per layer; ||W_l||^2 / d_l per
    layer), Figure 5 (rates) and Figure 7 (per-layer parameter histograms)."""
    out = Path(out)
    paths = []
    layers = sorted(int(c[4:]) for c in df.columns if c[:4] == "lam_" and c[4:].isdigit())
    for tag, d in df.groupby("dataset", sort=False):
        d = d.assign(**{"lam setting": d["setting"].map(FIG3_LABELS)})
        paths.append(plot_metric_vs_fraction(
            d.rename(columns={"test_error": "test error"}), "test error",
            out / f"{tag}_fig3_test_error.png", x="fraction", hue="lam setting",
            title=f"{tag}: optimal poisoning of the network"))
        per_layer = lambda frame, prefix, name: frame.melt(
            id_vars=["lam setting", "fraction", "seed"],
            value_vars=[f"{prefix}_{l}" for l in layers], var_name="layer", value_name=name
        ).assign(layer=lambda m: m["layer"].str.split("_").str[1].map(lambda l: f"layer {l}"))
        rmd = d[d["setting"] == "rmd"]
        if len(rmd):
            paths.append(plot_metric_vs_fraction(
                per_layer(rmd, "lam", "learned lam"), "learned lam", out / f"{tag}_fig3_lam.png",
                x="fraction", hue="layer", title=f"{tag}: lam_RMD per layer"))
        paths.append(plot_metric_vs_fraction(
            per_layer(d, "wnorm", "||W||^2 / d_layer"), "||W||^2 / d_layer",
            out / f"{tag}_fig3_layer_norms.png", x="fraction", hue="lam setting", col="layer",
            sharey=False, ylabel="||W||^2 / d_layer", title=f"{tag}: ||W_layer||^2 / d_layer"))
        rates = d.melt(id_vars=["lam setting", "fraction", "seed"], value_vars=["fpr", "fnr"],
                       var_name="rate", value_name="test rate")
        rates["rate"] = rates["rate"].map({"fpr": "false positive rate",
                                           "fnr": "false negative rate"})
        paths.append(plot_metric_vs_fraction(rates, "test rate", out / f"{tag}_fig5_rates.png",
                                             x="fraction", hue="lam setting", col="rate",
                                             title=f"{tag}: test false positive / negative rates"))
        paths += _layer_histograms(d, layers, out / f"{tag}_fig7_histograms.png", tag)
    return paths


def _layer_histograms(d, layers, path, tag):
    """Rows lam = -8 and lam_RMD, one column per layer: clean filled, poisoned outlined."""
    key = f"weights_{layers[0]}"
    if key not in d:
        return []
    rows = d[d[key].apply(lambda v: isinstance(v, list))]
    settings = [s for s in ("-8", "rmd") if s in set(rows["setting"])]
    if not settings:
        return []
    plt = _plt()
    fig, axes = plt.subplots(len(settings), len(layers), squeeze=False,
                             figsize=(4.2 * len(layers), 3.2 * len(settings)))
    for r, s in enumerate(settings):
        sub = rows[rows["setting"] == s].sort_values("n_points")
        for c, l in enumerate(layers):
            ax = axes[r, c]
            ws = [np.asarray(w) for w in sub[f"weights_{l}"]]
            bins = np.linspace(min(w.min() for w in ws), max(w.max() for w in ws), 50)
            for w, n, f in zip(ws, sub["n_points"], sub["fraction"]):
                ax.hist(w, bins=bins, weights=np.full(w.size, 1 / w.size),
                        **(dict(alpha=0.5, label="clean") if n == 0 else dict(
                            histtype="step", linewidth=1.4, color="C3",
                            label=f"{100 * f:.1f}% poisoned")))
            ax.locator_params(axis="x", nbins=5)
            ax.set_title(f"{FIG3_LABELS[s]}, layer {l} (seed {int(sub['seed'].iloc[0])})",
                         fontsize=9)
            ax.set_xlabel("parameter value")
            ax.set_ylabel("relative frequency")
            ax.legend(fontsize=7)
    fig.suptitle(f"{tag}: histograms of the network's parameters per layer", fontsize=10)
    return [_save(fig, path)]
