"""Checkpoint schedules: a cursor simulator proves each plan reverses every
step once, in order, at the right state, within its slots; revolve takes the
binomial optimum of steps."""
from functools import lru_cache
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.hypergrad import schedule as S


def simulate(sched):
    """Walk the actions with states as integers t; returns the ADVANCE steps
    and the most slots holding a state at once. Asserts the contract."""
    T, cur, slots, seen, rev, steps, peak = sched.T, 0, {}, False, [], 0, 0
    for op, arg in sched.actions:
        if op == S.ADVANCE:
            assert arg >= 1 and cur + arg <= T
            cur += arg
            steps += arg
        elif op == S.SAVE:
            assert 0 <= arg < sched.n_slots
            slots[arg] = cur
            peak = max(peak, len(slots))
        elif op == S.RESTORE:
            assert seen, "a RESTORE before VALUE: the forward sweep must be one pass"
            cur = slots[arg]
        elif op == S.VALUE:
            assert cur == T and not seen and steps == T
            seen = True
        else:
            assert op == S.REVERSE and seen and cur == arg
            rev.append(arg)
    assert seen and rev == list(range(T - 1, -1, -1))
    assert steps == sched.forward_steps
    return steps, peak


def theta_only_reference(sched):
    """Slots whose restored copy is never stepped from, by walking the actions."""
    only = np.ones(sched.n_slots, dtype=bool)
    restored = None
    for op, arg in sched.actions:
        if op == S.RESTORE:
            restored = arg
        elif op == S.ADVANCE:
            if restored is not None:
                only[restored] = False
            restored = None
    return only


@lru_cache(None)
def fewest_steps(l, s):
    """Dynamic programme: the fewest steps reversing l steps from a stored start
    with s slots (a one-step range needs no slot)."""
    if l == 1:
        return 0
    if s == 0:
        return math.inf
    return min(j + fewest_steps(l - j, s - 1) + fewest_steps(j, s) for j in range(1, l))


@pytest.mark.parametrize("l", range(1, 45))
@pytest.mark.parametrize("s", range(1, 7))
def test_binomial_formula_is_the_optimum(l, s):
    assert S.binomial_steps(l, s) == fewest_steps(l, s)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 10, 31, 64, 100])
def test_revolve_grid(T):
    for s in range(1, T + 2):
        sched = S.plan(T, "binomial", max_states=s)
        steps, peak = simulate(sched)
        assert sched.n_slots <= min(s, T) and peak <= sched.n_slots
        assert steps == S.binomial_steps(T + 1, min(s, T)) == fewest_steps(T + 1, min(s, T))
        assert (sched.theta_only == theta_only_reference(sched)).all()


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 2000), s=st.integers(1, 80))
def test_revolve_any(T, s):
    sched = S.plan(T, "binomial", max_states=s)
    steps, peak = simulate(sched)
    assert peak <= sched.n_slots <= min(s, T)
    assert steps == S.binomial_steps(T + 1, min(s, T))
    assert (sched.theta_only == theta_only_reference(sched)).all()


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 2000), c=st.one_of(st.just("sqrt"), st.integers(1, 2100)))
def test_segments_any(T, c):
    """Today's segments: ceil(sqrt(T)) (or c) checkpoints, seg = ceil(T / c),
    theta-only buffers; one recomputed step per segment fewer than the loop."""
    sched = S.plan(T, c)
    steps, peak = simulate(sched)
    n = math.isqrt(T - 1) + 1 if c == "sqrt" else min(c, T)
    seg = 1 if n >= T else -(-T // n)
    n_seg = -(-T // seg)
    assert sched.recomputed == (0 if seg == 1 else T - n_seg)
    assert sched.n_slots == n_seg + max(seg - 2, 0) and peak <= sched.n_slots
    assert (sched.theta_only == theta_only_reference(sched)).all()
    # bytes: no more than the old segment loop stored (2 per checkpoint + seg)
    p = 3
    today = 8 * p * (n_seg * (1 if seg == 1 else 2) + (seg if seg > 1 else 0))
    assert sched.state_bytes(p) <= today


def test_trajectory_stores_every_theta():
    sched = S.plan(5, 5)
    assert sched.recomputed == 0 and sched.n_slots == 5 and sched.theta_only.all()
    assert sched.actions.tolist()[:2] == [[S.SAVE, 0], [S.ADVANCE, 1]]
    assert sched.actions.dtype == np.int64 and sched.actions.shape[1] == 2


@pytest.mark.parametrize("T", [1, 2, 5, 50, 333, 1000, 4096])
def test_binomial_default_budget(T):
    """No max_states: the fewest slots whose plan takes <= 2 T steps."""
    sched = S.plan(T, "binomial")
    assert sched.forward_steps <= 2 * T
    if sched.n_slots > 1:
        assert S.binomial_steps(T + 1, sched.n_slots - 1) > 2 * T
    assert sched.n_slots <= math.isqrt(2 * T) + 2


def test_binomial_beats_segments_at_equal_slots():
    seg = S.plan(1000, "sqrt")
    rev = S.plan(1000, "binomial", max_states=seg.n_slots)
    assert rev.recomputed < seg.recomputed


@pytest.mark.parametrize("kwargs, match", [
    (dict(T=0), "T=0 must be a positive integer"),
    (dict(T=2.0), "T=2.0"),
    (dict(T=10, checkpoints="log"), "checkpoints='log' must be 'sqrt', 'binomial'"),
    (dict(T=10, checkpoints=0), "checkpoints=0"),
    (dict(T=10, checkpoints=True), "checkpoints=True"),
    (dict(T=10, checkpoints="binomial", max_states=0), "max_states=0 .*minimum is 1"),
    (dict(T=100, checkpoints="sqrt", max_states=5), r"max_states=5 is too small .*need 18 "
                                                    r"stored states .*binomial"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.plan(**kwargs)


def test_readonly():
    sched = S.plan(20, "binomial", max_states=3)
    with pytest.raises(ValueError):
        sched.actions[0, 0] = 0
