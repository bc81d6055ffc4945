"""Plots of sweep results (matplotlib, Agg: no display needed)."""
from pathlib import Path


def plot_metric_vs_fraction(df, metric, out_path, *, x="beta", hue=None, col=None, title=None):
    """Mean of `metric` over seeds vs `x`, with a mean ± 1 std band over seeds.

    One line per value of `hue`, one panel per value of `col` (shared y axis);
    rows that share (col, hue, x) are the repetitions. Writes `out_path`, returns it.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    cols = list(df[col].unique()) if col else [None]
    hues = list(df[hue].unique()) if hue else [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.6), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cols):
        panel = df if c is None else df[df[col] == c]
        for h in hues:
            sub = panel if h is None else panel[panel[hue] == h]
            if sub.empty:
                continue
            stats = sub.groupby(x)[metric].agg(["mean", "std", "count"]).sort_index()
            std = stats["std"].fillna(0.0)
            line, = ax.plot(stats.index, stats["mean"], marker="o", label=metric if h is None else str(h))
            ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std,
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(f"poisoning fraction ({x})" if x == "beta" else x)
        ax.set_title(f"{col} = {c}" if c is not None else "")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(metric)
    axes[0, -1].legend(title=hue)
    n = df.groupby([k for k in (col, hue, x) if k]).size().max()
    fig.suptitle(f"{title + ': ' if title else ''}mean ± 1 std over seeds (n = {n})", fontsize=10)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
