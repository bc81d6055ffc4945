"""paper000-*-optimal: random vs optimal attack, and Theorem 2's certificate table."""
import numpy as np
import pandas as pd
import pytest

from mithridate import cli
from mithridate.defenses.rho import wasserstein_distance
from mithridate.experiments import certificate, paper000_optimal as O
from mithridate.experiments.runner import ConfigError, run_sweep


def test_w_from_pot_equals_a_hand_transport():
    # Q = {0, 3}, P = {1, 2, 10} on a line, each point of Q mass 1/2, of P 1/3: the optimal
    # plan sends 0 -> 1 (1/3), 0 -> 2 (1/6), 3 -> 2 (1/6), 3 -> 10 (1/3).
    Q, P = np.array([[0.0], [3.0]]), np.array([[1.0], [2.0], [10.0]])
    hand = (1 * 1 + 2 * 0.5 + 1 * 0.5 + 7 * 1) / 3
    assert wasserstein_distance(Q, P, 2) == pytest.approx(hand, rel=1e-12)


def test_certificate_counts_equal_a_direct_recount():
    rng = np.random.default_rng(0)
    rows = [dict(attack=a, model=m, beta=b, seed=s, certificate=True, J_n=rng.random(),
                 test_loss=rng.random(), rho=rng.random())
            for a in ("noise", "optimal") for m in ("paper-val", "paper-theorem")
            for b in (0.0, 0.2) for s in range(3)]
    rows.append(dict(rows[0], model="c1=0,c2=0", certificate=False))  # not certified: left out
    df = pd.DataFrame(rows)
    df["holds"] = df["test_loss"] <= df["J_n"]
    tab = certificate.table(df)
    for r in tab.itertuples():
        sub = df[(df["attack"] == r.attack) & (df["model"] == r.model) & df["certificate"]]
        sub = sub if r.beta == "all" else sub[sub["beta"] == r.beta]
        assert (r.fits, r.holds) == (len(sub), int((sub["test_loss"] <= sub["J_n"]).sum()))
    assert len(tab) == 2 * 2 * 3 and "c1=0,c2=0" not in set(tab["model"])


def test_bad_model_refused_before_any_attack(tmp_path):
    spec = O._spec("paper000-wine-labels-optimal", True)
    bad = type(spec)(name="bad", experiment=spec.experiment, grid={**spec.grid,
                     "model": ["tight:rho=0.1"], "attack": ["optimal"], "beta": [0.3]},
                     seeds=[0], fixed=spec.fixed)
    with pytest.raises(ConfigError, match="paper form"):
        run_sweep(bad, tmp_path / "bad", progress=False)


@pytest.mark.parametrize("name", sorted(O.FIGS))
def test_quick_reproduce_then_resume(name, tmp_path, capsys, monkeypatch):
    out = tmp_path / name
    assert cli.main(["reproduce", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    for f in ("results.csv", f"{name}.png", f"{name}-certificate.png",
              f"{name}-certificate.csv", "summary.md"):
        assert (out / f).stat().st_size > 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["attack"]) == {O.P.FIGS[O.FIGS[name]][1], O.OPTIMAL}
    assert "Theorem 2 under attack" in (out / "summary.md").read_text()
    capsys.readouterr()

    def boom(*a):
        raise AssertionError("resume ran an attack or a fit")
    monkeypatch.setattr(O, "optimal_poison", boom)
    monkeypatch.setattr(O.P, "run", boom)
    frame = run_sweep(O._spec(name, True), out, progress=False)  # resume: nothing new runs
    assert len(frame) == len(df)
