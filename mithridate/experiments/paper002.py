"""Paper 002 (hyperparameter-aware optimal poisoning): Figures 1, 2, 4, 6, 8-9.

``paper002-fig1``: the 2-D example of Appendix D.2. One poisoning point
(a class-0 validation clone labelled 1, appended to the 32 training points) is
optimised by RMD (T = 500, eta = 0.2, alpha = 0.4, 50 hyperiterations, box
[-9.5, 9.5]^2) against logistic regression without regularisation (lam = -8) and
with lam = log(20); the colour maps give the validation error of the model
trained with the point at each grid position (full-batch GD, eta 0.2, 100
epochs), and the lam in [-8, 6] that minimises it (ties: validation loss).
Training for the lam map uses proximal gradient steps on the regulariser
(same minimiser, stable for every lam: explicit steps of 0.2 diverge above
lam ~ 5.7 on 33 points).

``paper002-fig2-mnist`` / ``paper002-fig2-fmnist``: Appendix D.3 with Tables
1-3: 512 training and 171 validation points per repetition (seed), the fixed
test set, 0..85 poisoning points in cumulative batches of 17 replacing training
points, for lam = -8, lam large (log 200 / log 400), lam_CLEAN (5-fold CV on
the clean training set over [-8, 1], inner GD trainer) and lam_RMD (learned,
warm start log 5, T_lam = 50 steps on the clean set first). The victim is
trained by mini-batch SGD (batch 64, step 0.01, 200 epochs) with the lam in
force; rows hold test error, false positive/negative rates, ||w||^2, lam.
Extra PNGs: Figure 4 (rates), Figure 6 (weight histograms) and Figures 8/9
(poisoning points as images) of the repetition ``figure_seed``. lam is on the scale of
:mod:`mithridate.attacks.optimal` (regulariser divided by n). The attack runs
in float32.
"""
import math
import time
from functools import lru_cache

import numpy as np

from .. import attacks, datasets
from .registry import Figure, experiment, register_figure
from .runner import inner_progress
from .spec import SweepSpec

# Tables 2-3 (alpha: Xp step, beta: lam step, eta: inner step; lr: victim SGD step).
TABLES = {
    "mnist": dict(T=150, T_outer=100, T_lam=50, alpha=0.99, beta=0.8, eta=0.1,
                  lam_large=math.log(200), lr=0.01, epochs=200),
    "fashion-mnist": dict(T=200, T_outer=100, T_lam=50, alpha=0.9, beta=0.3, eta=0.08,
                          lam_large=math.log(400), lr=0.01, epochs=200),
}
QUICK = dict(T=20, T_outer=3, T_lam=3, epochs=20, lr=0.1, n_train=96, n_val=48, batch_size=4)
SETTINGS = ("-8", "large", "clean", "rmd")
LAM_SMALL = -8.0
IMAGES = 6  # poisoning points shown per setting (Figures 8-9)


@lru_cache(maxsize=None)
def _pool(name):
    loader = {"mnist": datasets.load_mnist, "fashion-mnist": datasets.load_fashion_mnist}[name]
    return loader(), loader(subset="test")


def _split(c):
    sp = datasets.split_paper002(*_pool(c["dataset"]), c["seed"], c["n_train"], c["n_val"])
    f = np.float32
    return sp, (sp.X_train.astype(f), sp.y_train.astype(f)), (sp.X_val.astype(f), sp.y_val.astype(f))


def _attack(c, n_points, train):
    """The attack of one (setting, seed) and the seconds lam_CLEAN's cross-validation took."""
    lam, t0 = c["setting"], time.perf_counter()
    if lam == "clean":
        lam = attacks.lam_clean(*train, T=c["T"], eta=c["eta"], random_state=c["seed"])[0]
    fixed = {"-8": LAM_SMALL, "large": c["lam_large"]}.get(lam, lam)
    atk = attacks.OptimalPoisoning(
        lam="learned" if lam == "rmd" else float(fixed), n_points=n_points,
        batch_size=c["batch_size"], T=c["T"], T_outer=c["T_outer"], T_lam=c["T_lam"],
        alpha=c["alpha"], beta=c["beta"], eta=c["eta"], box=(0.0, 1.0),
        lam_range=(LAM_SMALL, c["lam_large"]), random_state=c["seed"])
    return atk, time.perf_counter() - t0


def _pixels(X):
    return np.rint(np.clip(X, 0, 1) * 255).astype(int).ravel().tolist()


@experiment("paper002-fig2", batch_keys=("setting", "n_points"), params=(
    "dataset", "setting", "n_points", "n_train", "n_val", "batch_size", "figure_seed",
    *TABLES["mnist"]))
def fig2(configs):
    """Per seed, the attacks of its lam settings in lockstep (attacks.run_lockstep:
    one engine call over the settings per hyperiteration, the clean rows read once
    for all), cumulative up to the largest n_points asked and evaluated after each
    batch; one metrics row per config. A call gets one seed, so a killed run
    resumes per seed. attack_seconds: the lockstep's time shared equally by its
    settings, plus the setting's own lam_CLEAN cross-validation."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm
    out = {}
    seeds = sorted({c["seed"] for c in configs})
    with threadpool_limits(1, user_api="blas"):  # BLAS threads fight numba's on few cores
        for seed in tqdm(seeds, desc=configs[0]["dataset"], unit="seed", leave=False,
                         disable=not inner_progress()):
            mine = [c for c in configs if c["seed"] == seed]
            for c in mine:
                if c["n_points"] % c["batch_size"]:
                    raise ValueError(f"n_points={c['n_points']} must be a multiple of "
                                     f"batch_size={c['batch_size']}")
            top = max(c["n_points"] for c in mine)  # every setting's attack goes this far
            settings = list(dict.fromkeys(c["setting"] for c in mine))
            first = {s: next(c for c in mine if c["setting"] == s) for s in settings}
            sp, train, val = _split(mine[0])
            atks, t_clean = zip(*(_attack(first[s], top, train) for s in settings))
            t0 = time.perf_counter()
            results = dict(zip(settings, attacks.run_lockstep(list(atks), train, val)))
            share = (time.perf_counter() - t0) / len(settings)
            seconds = {s: share + t for s, t in zip(settings, t_clean)}
            for c in mine:
                res = results[c["setting"]]
                j = c["n_points"] // c["batch_size"]
                X, y = res.training_set(j)
                theta = attacks.train_sgd(X, y, res.lam_batches[j], lr=c["lr"], batch_size=64,
                                          epochs=c["epochs"], random_state=seed)
                m = attacks.evaluate(theta, sp.X_test, sp.y_test)
                row = {"fraction": c["n_points"] / c["n_train"], "test_error": m["error"],
                       "fpr": m["fpr"], "fnr": m["fnr"], "w_norm2": m["w_norm2"],
                       "lam": float(res.lam_batches[j]), "val_loss": float(res.values[j]),
                       "attack_seconds": seconds[c["setting"]]}
                if seed == c["figure_seed"] and c["n_points"] in (0, top):  # Figure 6 histograms
                    row["weights"] = np.round(theta[:-1], 5).tolist()
                if seed == c["figure_seed"] and c["n_points"] == top and top:  # Figures 8-9
                    pick = np.linspace(0, top - 1, min(IMAGES, top)).astype(int)
                    row["images_init"] = _pixels(res.Xp_init[pick])
                    row["images_opt"] = _pixels(res.Xp[pick])
                out[id(c)] = row
    return [out[id(c)] for c in configs]


def _fig2_spec(dataset, quick):
    t = dict(TABLES[dataset], batch_size=17, n_train=512, n_val=171, figure_seed=0)
    points = [0, 17, 34, 51, 68, 85]
    seeds = list(range(10))
    if quick:
        t.update(QUICK)
        points, seeds = [0, 4, 8], [0]
    tag = {"mnist": "mnist", "fashion-mnist": "fmnist"}[dataset]
    return SweepSpec(name=f"paper002-fig2-{tag}{'-quick' if quick else ''}",
                     experiment="paper002-fig2",
                     grid={"dataset": [dataset], "setting": list(SETTINGS), "n_points": points},
                     seeds=seeds, fixed=t)


# ---- Figure 1: the 2-D example -------------------------------------------------------

FIG1 = dict(T=500, T_outer=50, alpha=0.4, eta=0.2, epochs=100, box=9.5, grid=41,
            lam_l2=math.log(20), lam_lo=-8.0, lam_hi=6.0, lam_step=0.5)
FIG1_QUICK = dict(T=100, T_outer=5, grid=9, lam_step=2.0)
PANELS = ("plain", "l2", "lam")


def _gd_batch(X, y, lam, *, eta, epochs, prox=False):
    """Full-batch GD from zeros for P problems at once (mithridate.models.training):
    X (P, n, d), y (n,) shared, lam (P,). Regulariser exp(lam)/(2n) ||w||^2;
    ``prox`` takes its step implicitly. Returns (w (P, d), b (P,))."""
    from ..models import LinearModel
    from ..models.training import gradient_descent
    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)
    theta = gradient_descent(LinearModel(), f64(X), f64(y), f64(lam) - math.log(X.shape[1]),
                             T=epochs, alpha=eta, prox=prox)
    return theta[:, :-1], theta[:, -1]


def _val_scores(w, b, Xv, yv):
    z = w @ Xv.T + b[:, None]
    err = np.mean((z > 0) != (yv > 0.5), axis=1)
    loss = np.mean(np.logaddexp(0, z) - yv * z, axis=1)
    return err, loss


def _fig1_grid(c):
    g = np.linspace(-c["box"], c["box"], c["grid"])
    gx, gy = np.meshgrid(g, g)
    return np.column_stack([gx.ravel(), gy.ravel()])


@experiment("paper002-fig1", batch_keys=("panel",), params=("panel", *FIG1))
def fig1(configs):
    """Per panel: the optimised point, clean/poisoned boundaries and a colour map
    (validation error for plain/l2, the best lam for lam)."""
    c0 = configs[0]
    tr, va = datasets.gaussian_2d_paper002(c0["seed"])
    Xv, yv = va.X, va.y
    pos = _fig1_grid(c0)
    P = len(pos)
    # The poisoning point: a clone of a class-0 validation point, labelled 1, appended.
    Xmap = np.concatenate([np.broadcast_to(tr.X, (P,) + tr.X.shape), pos[:, None, :]], axis=1)
    ymap = np.append(tr.y, 1.0)
    gd = dict(eta=c0["eta"], epochs=c0["epochs"])
    out = []
    for c in configs:
        if c["panel"] == "lam":
            lams = np.arange(c["lam_lo"], c["lam_hi"] + 1e-9, c["lam_step"])
            w, b = _gd_batch(np.repeat(Xmap, len(lams), 0), ymap, np.tile(lams, P), prox=True, **gd)
            err, loss = (s.reshape(P, len(lams)) for s in _val_scores(w, b, Xv, yv))
            best = np.lexsort((loss, err), axis=1)[:, 0]
            w0, b0 = _gd_batch(np.repeat(tr.X[None], len(lams), 0), tr.y, lams, prox=True, **gd)
            e0, l0 = _val_scores(w0, b0, Xv, yv)
            out.append({"map": lams[best].tolist(), "lam_no_poison": float(lams[np.lexsort((l0, e0))[0]])})
            continue
        lam = LAM_SMALL if c["panel"] == "plain" else c["lam_l2"]
        res = attacks.OptimalPoisoning(
            lam=lam, n_points=1, batch_size=1, T=c["T"], T_outer=c["T_outer"], alpha=c["alpha"],
            eta=c["eta"], box=(-c["box"], c["box"]), replace=False, clone_class=0,
            random_state=c["seed"]).run((tr.X, tr.y), (Xv, yv))
        w, b = _gd_batch(Xmap, ymap, np.full(P, lam), **gd)
        err, _ = _val_scores(w, b, Xv, yv)
        (wc, bc), (wp, bp) = (_gd_batch(X[None], y, np.array([lam]), **gd) for X, y in (
            (tr.X, tr.y), res.training_set()))
        out.append({"map": err.tolist(), "xp": res.Xp[0].tolist(),
                    "xp_init": res.Xp_init[0].tolist(), "theta_clean": [*wc[0], bc[0]],
                    "theta_poisoned": [*wp[0], bp[0]],
                    "val_error_clean": float(_val_scores(wc, bc, Xv, yv)[0][0]),
                    "val_error_poisoned": float(_val_scores(wp, bp, Xv, yv)[0][0]), "lam": lam})
    return out


def _fig1_spec(quick):
    return SweepSpec(name=f"paper002-fig1{'-quick' if quick else ''}", experiment="paper002-fig1",
                     grid={"panel": list(PANELS)}, seeds=[0],
                     fixed={**FIG1, **(FIG1_QUICK if quick else {})})


def _fig1_summary(df):
    from .paper002_plots import claim
    r = {p: df[df["panel"] == p].iloc[0] for p in PANELS}
    plain, l2 = (np.asarray(r[p]["map"]) for p in ("plain", "l2"))
    lam_map = np.asarray(r["lam"]["map"])
    from scipy.stats import spearmanr
    rho = spearmanr(lam_map, plain)[0] if lam_map.std() > 0 and plain.std() > 0 else float("nan")
    d = {p: r[p]["val_error_poisoned"] - r[p]["val_error_clean"] for p in ("plain", "l2")}
    lines = [f"Figure 1 (2-D example, seed {int(df['seed'].iloc[0])}, "
             f"{int(round(len(plain) ** 0.5))}^2 grid positions).", "",
             "| model | val. error clean | with optimal point | map min | map mean | map max |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p, m in (("plain", plain), ("l2", l2)):
        lines.append(f"| {p} (lam = {r[p]['lam']:.3g}) | {r[p]['val_error_clean']:.3f} | "
                     f"{r[p]['val_error_poisoned']:.3f} | {m.min():.3f} | {m.mean():.3f} | {m.max():.3f} |")
    lines += ["", f"Learned lam over the grid: {lam_map.min():g} to {lam_map.max():g} "
              f"(mean {lam_map.mean():.2f}; {r['lam']['lam_no_poison']:g} without poisoning point).", "",
              claim(d["plain"] > d["l2"],
                    f"one optimal point raises the validation error more without regularisation "
                    f"(+{d['plain']:.3f}) than with lam = log 20 (+{d['l2']:.3f})"),
              claim(plain.max() - plain.min() > l2.max() - l2.min(),
                    f"the error map is more uniform with L2 (range {l2.max() - l2.min():.3f}) "
                    f"than without (range {plain.max() - plain.min():.3f})"),
              claim(rho > 0, f"the learned lam is larger where the point hurts the unregularised "
                    f"model more (Spearman correlation of the two maps {rho:.2f})")]
    return "\n".join(lines)


def _fig2_summary(df):
    from .paper002_plots import claim
    g = df.groupby(["setting", "n_points"])
    mean, std = g["test_error"].mean(), g["test_error"].std().fillna(0.0)
    pts = sorted(df["n_points"].unique())
    lo, hi = pts[0], pts[-1]
    table = mean.unstack("n_points").reindex([s for s in SETTINGS if s in set(df["setting"])])
    lines = [f"{df['dataset'].iloc[0]}: mean test error over {df['seed'].nunique()} seeds vs "
             "number of poisoning points (n_train = "
             f"{int(df['n_train'].iloc[0])}).", "",
             "| lam | " + " | ".join(f"{p} ({100 * p / df['n_train'].iloc[0]:.1f}%)" for p in pts) + " |",
             "| --- " * (len(pts) + 1) + "|"]
    for s, row in table.iterrows():
        lines.append(f"| {s} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    rmd = df[df["setting"] == "rmd"].groupby("n_points")[["lam", "w_norm2"]].mean()
    lines += ["", "lam_RMD and ||w||^2 (mean over seeds): " + ", ".join(
        f"{p}: lam {rmd.loc[p, 'lam']:.2f}, ||w||^2 {rmd.loc[p, 'w_norm2']:.2f}" for p in rmd.index), ""]
    from scipy.stats import spearmanr
    rho = spearmanr(rmd.index, rmd["lam"])[0] if rmd["lam"].std() > 0 else float("nan")
    secs = df.groupby(["setting", "seed"])["attack_seconds"].first().groupby("seed").sum()
    lines += [
        claim(rho > 0 and rmd["lam"].iloc[-1] > rmd["lam"].iloc[0],
              f"the learned lam grows with the fraction of poisoning points ({rmd['lam'].iloc[0]:.2f} "
              f"at {lo} points to {rmd['lam'].iloc[-1]:.2f} at {hi}; Spearman {rho:.2f})"),
        claim(rmd["w_norm2"].iloc[-1] < rmd["w_norm2"].iloc[0],
              f"||w||^2 under lam_RMD shrinks ({rmd['w_norm2'].iloc[0]:.2f} to "
              f"{rmd['w_norm2'].iloc[-1]:.2f})"),
        claim(mean["rmd", hi] < mean["-8", hi] and mean["rmd", hi] < mean["clean", hi],
              f"under the strongest attack ({hi} points) lam_RMD's test error "
              f"({mean['rmd', hi]:.4f}) stays below lam = -8 ({mean['-8', hi]:.4f}) and "
              f"lam_CLEAN ({mean['clean', hi]:.4f})"),
        claim(abs(mean["rmd", lo] - mean["clean", lo]) <= max(std["rmd", lo], std["clean", lo], 1e-3),
              f"without attack lam_RMD matches lam_CLEAN ({mean['rmd', lo]:.4f} vs "
              f"{mean['clean', lo]:.4f}, within one std over seeds)"),
        claim(mean["large", lo] > mean["clean", lo],
              f"the large lam underfits without attack ({mean['large', lo]:.4f} vs lam_CLEAN "
              f"{mean['clean', lo]:.4f})"),
        "", f"Attack time per seed (its lam settings in lockstep): median {secs.median():.1f} s, "
        f"total {secs.sum():.0f} s (lam_CLEAN's cross-validation included)."]
    return "\n".join(lines)


def _fig2_plot(df, out):
    from .paper002_plots import plot_fig2
    return plot_fig2(df, out)


def _fig1_plot(df, out):
    from .paper002_plots import plot_fig1
    return plot_fig1(df, out)


register_figure(Figure("paper002-fig1", "paper 002 Figure 1: one optimal poisoning point against "
                       "plain and L2 logistic regression on the 2-D example; error and learned-lam maps",
                       _fig1_spec, _fig1_plot, _fig1_summary))
for _ds, _tag in (("mnist", "mnist"), ("fashion-mnist", "fmnist")):
    register_figure(Figure(
        f"paper002-fig2-{_tag}", f"paper 002 Figures 2, 4, 6, 8-9 on {_ds}: optimal poisoning for "
        "lam = -8, large, lam_CLEAN and learned lam_RMD (10 seeds, 0..85 points)",
        lambda quick, _ds=_ds: _fig2_spec(_ds, quick), _fig2_plot, _fig2_summary))
