"""Plots of sweep results (matplotlib, Agg: no display needed).

Every curve-vs-fraction figure of the package goes through
:func:`plot_metric_vs_fraction`, so they share one look and one rule for curves
that coincide: each setting has its own colour, hollow marker and line style;
curves whose means agree at every x (within ``NEAR`` of the panel's y range) are
dodged sideways so none hides another; and the legend and caption say which
settings coincide, computed from the numbers.
"""
from pathlib import Path

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":")
NEAR = 0.01   # curves closer than this fraction of the y range everywhere overlap on screen
DODGE = 0.012  # sideways shift between overlapping curves, as a fraction of the x range
LOG_SPAN = 30.0  # means spanning more than this ratio get a log y axis


def coinciding(means, near):
    """Groups (lists, in order) of the keys of ``means`` (key -> pandas Series over x)
    whose curves share their x values and differ by at most ``near`` at each; a
    group is marked exact when its curves are equal to rounding (1e-12 relative)."""
    import numpy as np
    keys, groups = list(means), []
    parent = {k: k for k in keys}

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k

    def gap(a, b):
        ma, mb = means[a], means[b]
        if len(ma) < 2 or not ma.index.equals(mb.index):
            return np.inf
        return float(np.max(np.abs(ma.to_numpy() - mb.to_numpy())))

    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if gap(a, b) <= near:
                parent[root(b)] = root(a)
    for k in keys:
        members = [m for m in keys if root(m) == k]
        if len(members) > 1:
            scale = max(float(np.max(np.abs(means[m].to_numpy()))) for m in members)
            exact = all(gap(members[0], m) <= 1e-12 * max(scale, 1.0) for m in members[1:])
            groups.append((members, exact))
    return groups


def _describe(members, exact):
    names = ", ".join(map(str, members[:-1])) + f" and {members[-1]}"
    return f"{names} {'coincide' if exact else 'overlap (within 1% of the axis)'}"


def _overlaps(panels, log):
    """Per panel, the coinciding groups of its mean curves as drawn (log10 on a log axis)."""
    import numpy as np
    out = []
    for means in panels:
        seen = {h: np.log10(m) if log else m for h, m in means.items()}
        v = np.concatenate([m.to_numpy() for m in seen.values()]) if seen else np.zeros(0)
        span = float(np.nanmax(v) - np.nanmin(v)) if np.isfinite(v).any() else 0.0
        out.append(coinciding(seen, NEAR * (span or 1.0)))
    return out


def _log_axis(panels):
    """A log y axis where every mean is positive, they span more than LOG_SPAN, and the
    log axis separates curves that a linear one would merge (one curve far above the
    others flattens them)."""
    import numpy as np
    v = np.concatenate([m.to_numpy(dtype=float) for means in panels for m in means.values()])
    v = v[np.isfinite(v)]
    if not (v.size > 1 and (v > 0).all() and v.max() / v.min() > LOG_SPAN):
        return False
    merged = [sum(len(g) for g, _ in groups) for groups in (
        [grp for p in _overlaps(panels, log) for grp in p] for log in (False, True))]
    return merged[1] < merged[0]


def plot_metric_vs_fraction(df, metric, out_path, *, x="beta", hue=None, col=None, title=None,
                            labels=None, sharey=True, xlabel=None, ylabel=None):
    """Mean of `metric` over seeds vs `x`, with a mean ± 1 std band over seeds (clipped
    to the range of the values, so an error rate's band stays >= 0).

    One curve per value of `hue` (legend text ``labels[value]`` if given), one
    panel per value of `col` (shared y axis unless ``sharey=False``, then each
    panel's title and, unless ``ylabel`` is given, y label name it); rows that share
    (col, hue, x) are the repetitions. Coinciding curves are dodged and named (module docstring); the
    y axis is logarithmic where that separates curves a linear axis would merge.
    Writes `out_path` (the coincidences also in its PNG "Description"), returns it.
    """
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_path = Path(out_path)
    keys = [k for k in (col, hue) if k]
    cols = list(df[col].unique()) if col else [None]
    hues = list(df[hue].unique()) if hue else [None]
    name = {h: (labels or {}).get(h, metric if h is None else str(h)) for h in hues}
    style = {h: dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)],
                     linestyle=LINESTYLES[i % len(LINESTYLES)]) for i, h in enumerate(hues)}
    band = min(0.15, 0.45 / len(hues))  # many overlapping bands turn to mud
    xspan = float(np.ptp(df[x].to_numpy(dtype=float))) or 1.0
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols) + 2.2, 3.8), sharey=sharey,
                             squeeze=False)
    stats = []  # per panel: hue -> mean, std, min, max over seeds at each x
    for c in cols:
        panel = df if c is None else df[df[col] == c]
        st = {h: (panel if h is None else panel[panel[hue] == h]).groupby(x)[metric]
              .agg(["mean", "std", "min", "max"]).sort_index() for h in hues}
        stats.append({h: v for h, v in st.items() if not v.empty})
    means = [{h: v["mean"] for h, v in st.items()} for st in stats]
    logs = [_log_axis(means)] * len(cols) if sharey else [_log_axis([m]) for m in means]
    notes, shared, handle = [], None, {}
    for ax, c, st, m, log in zip(axes[0], cols, stats, means, logs):
        groups = _overlaps([m], log)[0]
        shift, pairs = {}, {}
        for members, exact in groups:
            notes.append(("" if c is None else f"{c}: ") + _describe([name[h] for h in members],
                                                                     exact))
            for j, h in enumerate(members):
                shift[h] = (j - (len(members) - 1) / 2) * DODGE * xspan
                pairs.update({(h, o): exact for o in members if o != h})
        shared = pairs if shared is None else {p: e and pairs[p] for p, e in shared.items()
                                               if p in pairs}
        for h, v in st.items():
            xs = v.index.to_numpy(dtype=float) + shift.get(h, 0.0)
            # the band never leaves the values seen (an error rate stays >= 0)
            std = v["std"].fillna(0.0)
            lo, hi = np.maximum(v["mean"] - std, v["min"]), np.minimum(v["mean"] + std, v["max"])
            handle[h], = ax.plot(xs, v["mean"], markerfacecolor="none", markersize=6,
                                 linewidth=1.4, **style[h])
            ax.fill_between(xs, lo, hi, color=style[h]["color"], alpha=band, linewidth=0)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel or {"beta": "poisoning fraction (beta)",
                                 "fraction": "poisoning fraction"}.get(x, x))
        ax.set_title("" if c is None else f"{col} = {c}" if sharey else str(c), fontsize=10)
        ax.grid(alpha=0.3)
        if not sharey or ax is axes[0, 0]:
            ax.set_ylabel(ylabel or (str(c) if not sharey and c is not None else metric))
    texts = []
    for h in handle:
        same = [(name[o], e) for (a, o), e in (shared or {}).items() if a == h]
        texts.append(name[h] + "".join(f" [{'=' if e else '≈'} {o}]" for o, e in same))
    fig.legend(list(handle.values()), texts, title=hue, loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, title_fontsize=9, frameon=False)
    n = df.groupby(keys + [x]).size().max()
    fig.suptitle(f"{title + ': ' if title else ''}mean ± 1 std over seeds, within their range "
                 f"(n = {n})", fontsize=10)
    fig.tight_layout()
    if notes:
        caption = textwrap.fill("; ".join(notes) + " (drawn side by side to stay visible).",
                                width=int(fig.get_figwidth() * 16))
        fig.text(0.01, 0, caption, fontsize=7.5, ha="left", va="top")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120, bbox_inches="tight",  # the caption, machine-readable too
                metadata={"Description": "; ".join(notes)})
    plt.close(fig)
    return out_path
