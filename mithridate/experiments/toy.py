"""A cheap, deterministic experiment and figure for testing the sweep machinery.

``toy`` computes its metrics from a formula of the config (vectorised over the
seeds of a batch, as real experiments batch their kernels). Optional
parameters: ``beta``, ``scale``, ``model`` ("robust" halves the effect of beta),
``sleep`` (seconds per config, so a test can kill a run midway) and ``fail``
(true: raise, to test error handling).
"""
import time

import numpy as np

from .registry import Figure, experiment, register_figure
from .spec import SweepSpec


@experiment("toy", batch_keys=("seed",), params=("model", "beta", "scale", "sleep", "fail"))
def toy(configs):
    first = configs[0]
    if first.get("fail"):
        raise RuntimeError(f"toy experiment asked to fail (fail={first['fail']!r})")
    time.sleep(float(first.get("sleep", 0.0)) * len(configs))
    beta, scale = float(first.get("beta", 0.0)), float(first.get("scale", 1.0))
    seeds = np.array([c["seed"] for c in configs])
    noise = np.sin(12.9898 * seeds + 78.233 * beta) * 0.05
    score = 1.0 - beta * scale * (0.5 if first.get("model") == "robust" else 1.0) + noise
    return [{"score": float(s), "batch_size": len(configs)} for s in score]


def _spec(quick):
    return SweepSpec(name="toy-quick" if quick else "toy", experiment="toy",
                     grid={"model": ["plain", "robust"], "beta": [0.0, 0.1, 0.2]},
                     seeds=[0, 1] if quick else [0, 1, 2, 3], fixed={"scale": 1.0})


def _plot(frame, out_dir):
    from .plots import plot_metric_vs_fraction
    return [plot_metric_vs_fraction(frame, "score", out_dir / "toy.png", x="beta", hue="model",
                                    title="toy")]


def _summary(frame):
    return frame.groupby(["model", "beta"])["score"].agg(["mean", "std"]).to_string()


register_figure(Figure("toy", "score vs beta of the toy experiment (tests the machinery)",
                       _spec, _plot, _summary))
