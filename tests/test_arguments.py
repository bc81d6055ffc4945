"""Hostile arguments through every public entry (ops, hypergrad, the attack,
the defences): an unknown backend, a string where a bool goes, a tensor that
requires grad, non-native byte order, 0-d arrays and numpy scalars. Numbers
in any of those forms are accepted as numbers; everything else is refused
with a message that names the argument, before any work."""
import numpy as np
import pytest

from mithridate import ops
from mithridate.attacks import OptimalPoisoning
from mithridate.defenses import WassersteinRobustClassifier, WassersteinRobustRegressor
from mithridate.hypergrad import hypergrad
from mithridate.testing import bilevel_data

torch = pytest.importorskip("torch")

MODES = ["trajectory", "checkpoint", "forward", "implicit", "reversible"]
HG = dict(T=5, lam=0.0, alpha=0.1, gamma=0.5)


def linear(n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=d + 1), rng.normal(size=(n, d)), (rng.random(n) < 0.5) * 1.0


def op_calls(theta, X, y, **kw):
    """Every op on one problem, as zero-argument callables."""
    return {"loss_grad": lambda: ops.loss_grad(theta, X, y, **kw),
            "hvp": lambda: ops.hvp(theta, theta, X, y, **kw),
            "mixed": lambda: ops.mixed(theta, theta, X, y, np.array([0, 2]), **kw),
            "lipschitz_tight": lambda: ops.lipschitz(theta, X, y, loss="logistic", **kw),
            "lipschitz_paper": lambda: ops.lipschitz(theta, X, y, loss="logistic", bound="paper",
                                                     **kw)}


@pytest.mark.parametrize("op", list(op_calls(*linear())))
@pytest.mark.parametrize("name,value", [("backend", "gpu"), ("fit_intercept", "False"),
                                        ("fit_intercept", 1)])
def test_ops_refuse_bad_backend_and_bool(op, name, value):
    with pytest.raises((TypeError, ValueError), match=f"{name}={value!r}"):
        op_calls(*linear(), **{name: value})[op]()


@pytest.mark.parametrize("op", list(op_calls(*linear())))
@pytest.mark.parametrize("backend", ["cpp", "cuda"])
def test_ops_refuse_a_backend_without_their_hot_path(op, backend):
    path = "lipschitz" if op.startswith("lipschitz") else "linear"
    with pytest.raises(ValueError, match=f"backend='{backend}': {path} has no {backend} "
                                         "implementation; implemented: numba, triton, torch"):
        op_calls(*linear(), backend=backend)[op]()


@pytest.mark.parametrize("backend", ["gpu", "torch", "triton"])
def test_fixed_point_refuses_bad_backends(backend):
    from mithridate import fixed_point as fp
    q = np.zeros(3, np.int64)
    for call in (lambda: fp.encode(np.ones(3), 8, backend=backend),
                 lambda: fp.decode(q, 8, backend=backend),
                 lambda: fp.mul(q, 9, 10, fp.new_buffer(3, 1), backend=backend),
                 lambda: fp.unmul(q, 9, 10, fp.new_buffer(3, 1), backend=backend)):
        with pytest.raises(ValueError, match=f"backend='{backend}'"):
            call()


def test_ops_penalize_intercept_is_a_bool():
    with pytest.raises(TypeError, match="penalize_intercept='True'"):
        ops.loss_grad(*linear(), lam=0.0, penalize_intercept="True")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,value", [("backend", "gpu"), ("fit_intercept", "False"),
                                        ("on_divergence", "ignore")])
def test_hypergrad_refuses_bad_backend_and_bool_in_every_mode(mode, name, value):
    with pytest.raises((TypeError, ValueError), match=f"{name}={value!r}"):
        hypergrad(*bilevel_data(), mode=mode, **dict(HG, **{name: value}))


@pytest.mark.parametrize("reg", ["paper", "tight", "exact"])
@pytest.mark.parametrize("name,value", [("backend", "gpu"), ("fit_intercept", "False")])
def test_defences_refuse_bad_backend_and_bool_for_every_regulariser(reg, name, value):
    theta, X, y = linear(n=20)
    for est in (WassersteinRobustRegressor(regularizer=reg), WassersteinRobustClassifier(
            regularizer=reg)):
        with pytest.raises((TypeError, ValueError), match=f"{name}={value!r}"):
            est.set_params(**{name: value}).fit(X, y)


@pytest.mark.parametrize("name,value", [("backend", "gpu"), ("mode", "bogus"),
                                        ("replace", "False"), ("progress", "yes"),
                                        ("on_divergence", "ignore")])
def test_attack_checks_its_engine_arguments_up_front(name, value):
    rng = np.random.default_rng(0)
    train = rng.random((20, 3)), np.arange(20) % 2 * 1.0
    val = rng.random((10, 3)), np.arange(10) % 2 * 1.0
    with pytest.raises((TypeError, ValueError), match=f"{name}={value!r}"):
        OptimalPoisoning(n_points=2, batch_size=2, T=3, T_outer=1, T_lam=0, lam=0.0,
                         **{name: value}).run(train, val)


SCALARS = [np.array(0.5), np.float32(0.5), np.array(0.5, dtype=">f8"), np.float16(0.5),
           torch.tensor(0.5)]


@pytest.mark.parametrize("lam", SCALARS, ids=lambda v: f"{type(v).__name__}-{v.dtype}")
def test_numbers_in_any_form_are_numbers(lam):
    want = hypergrad(*bilevel_data(), **dict(HG, lam=0.5))
    got = hypergrad(*bilevel_data(), **dict(HG, lam=lam, T=np.array(5, dtype=">i4"),
                                            alpha=np.array(0.1, dtype=">f8"), gamma=np.float32(0.5)))
    assert got.value == want.value and got.grad_lam == want.grad_lam
    theta, X, y = linear()
    np.testing.assert_array_equal(ops.loss_grad(theta, X, y, lam=lam)[1],
                                  ops.loss_grad(theta, X, y, lam=0.5)[1])


@pytest.mark.parametrize("name,value", [("lam", "0.5"), ("lam", True), ("lam", 1j),
                                        ("alpha", np.array([0.1])), ("T", 5.0), ("T", True),
                                        ("gamma", None)])
def test_non_numbers_are_refused_naming_them(name, value):
    with pytest.raises(TypeError, match=f"{name}=.*must be a real number|{name}=.*integer"):
        hypergrad(*bilevel_data(), **dict(HG, **{name: value}))


def test_non_native_byte_order_is_named_or_converted():
    Xc, yc, Xp, yp, Xv, yv = bilevel_data()
    big = lambda a: a.astype(a.dtype.newbyteorder(">"))
    with pytest.raises(TypeError, match="Xv has non-native byte order"):
        hypergrad(Xc, yc, Xp, yp, big(Xv), yv, **HG)
    theta, X, y = linear()
    for call in op_calls(theta, big(X), y).values():
        with pytest.raises(TypeError, match="X has non-native byte order .>f8"):
            call()
    # the attack copies its data anyway: it converts, with the same result
    rng = np.random.default_rng(0)
    train = rng.random((20, 3)), np.arange(20) % 2 * 1.0
    val = rng.random((10, 3)), np.arange(10) % 2 * 1.0
    attack = dict(n_points=2, batch_size=2, T=3, T_outer=2, T_lam=0, lam=0.0, random_state=0)
    a = OptimalPoisoning(**attack).run(train, val)
    b = OptimalPoisoning(**attack).run(tuple(map(big, train)), tuple(map(big, val)))
    np.testing.assert_array_equal(a.Xp, b.Xp)


def test_tensors_that_require_grad_are_never_silently_detached():
    theta, X, y = (torch.from_numpy(a) for a in linear())
    theta.requires_grad_(True)
    for op, call in op_calls(theta, X, y).items():
        with pytest.raises(TypeError, match="theta requires grad.*mithridate.torch"):
            call()
    with torch.no_grad():  # no graph is asked for: plain values
        assert torch.isfinite(ops.loss_grad(theta, X, y)[0])
    data = list(bilevel_data())
    data[2] = torch.from_numpy(data[2]).requires_grad_(True)
    with pytest.raises(TypeError, match="Xp is a torch tensor that requires grad.*mithridate.torch"):
        hypergrad(*data, **HG)
