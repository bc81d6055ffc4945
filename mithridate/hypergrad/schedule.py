"""Checkpoint schedules of the reverse sweep: which inner states to store and
which steps to recompute, as a flat action list any executor (numba, C++,
the generic Python engine) walks in order.

Actions: int64 array (m, 2) of rows (op, arg). An executor keeps one
*cursor* state (theta_t, v_t), starting at (theta_0, v_0 = 0), t = 0, and
``n_slots`` stored states:

- ``ADVANCE k``: k heavy-ball steps from the cursor, t -> t + k (reads and
  writes the cursor only).
- ``SAVE s``: slot s <- the cursor (theta_t, v_t) (and its t).
- ``RESTORE s``: the cursor <- slot s (the slot keeps its copy).
- ``VALUE 0``: the outer value and its gradient at theta_T initialise the
  adjoints (tb = dA/dtheta_T, vb = 0). It happens exactly once, when the
  cursor first reaches t = T.
- ``REVERSE t``: one adjoint step t + 1 -> t at theta_t (the HVP, the mixed
  rows and the lam term of step t); the cursor must be at t and stays there.

Guarantees (tests/test_schedule.py proves them for every plan): the actions
before VALUE are SAVE and ADVANCE only, so that forward sweep is the
cursor's one pass 0 -> T and every later ADVANCE is a recomputation (a
divergence watch need only look before VALUE); after VALUE the REVERSEs come
in the order T-1, T-2, ..., 0, each once, each with the cursor at its t;
a RESTORE reads only a slot saved earlier; slots are 0..n_slots-1. A slot
whose restored copy is never advanced (``theta_only[s]``) is only ever read
for its theta: an executor may store theta alone there (``state_bytes``).

Plans (``plan``):

- ``"sqrt"`` or an int c: fixed segments: c = ceil(sqrt(T)) (or the given c, at
  most T) checkpoints (theta, v) at t = 0, seg, 2 seg, ... with seg = ceil(T / c),
  and each segment's thetas recomputed from its checkpoint into seg - 2 buffer
  slots (theta only). seg = 1 (c >= T) stores theta_0..theta_{T-1}: the
  trajectory mode, nothing recomputed. Recomputed steps: T - c' (c' = ceil(T / seg)
  segments): a segment's last theta is never recomputed, since its REVERSE
  step needs theta_t alone (the same bits as trajectory).
- ``"binomial"``: Griewank and Walther's revolve (binomial checkpointing,
  ACM TOMS 26, 2000): the fewest steps for n_slots = max_states. The outer
  value is the last "step" (VALUE at T), so this is revolve on T + 1 steps:
  T + recomputed = t(T + 1, s), where t(l, s) = r l - C(s + r, s + 1) and r is
  the least integer with l <= C(s + r, s). Without max_states: the fewest
  slots whose schedule takes at most 2 T steps (at most T recomputed; about
  sqrt(2 T) slots).
"""
from dataclasses import dataclass
import math

import numpy as np

ADVANCE, SAVE, RESTORE, REVERSE, VALUE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Schedule:
    """actions (m, 2) int64 (module docstring); n_slots stored states;
    recomputed: ADVANCE steps beyond the first T; theta_only (n_slots,) bool."""
    T: int
    actions: np.ndarray
    n_slots: int
    recomputed: int
    theta_only: np.ndarray

    @property
    def forward_steps(self):
        """Heavy-ball steps in all: T + recomputed."""
        return self.T + self.recomputed

    def state_bytes(self, p):
        """float64 bytes of the slots for p-vectors (theta and v, or theta alone)."""
        full = self.n_slots - int(self.theta_only.sum())
        return 8 * p * (2 * full + (self.n_slots - full))


def plan(T, checkpoints="sqrt", max_states=None):
    """The Schedule of T inner steps: checkpoints "sqrt", an int (stored
    checkpoints; >= T: the trajectory) or "binomial"; max_states bounds
    n_slots (the binomial plan uses exactly min(max_states, T))."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T={T!r} must be a positive integer (the number of inner steps).")
    T = int(T)
    if max_states is not None and (isinstance(max_states, bool)
                                   or not isinstance(max_states, (int, np.integer))
                                   or max_states < 1):
        raise ValueError(f"max_states={max_states!r} must be None or a positive integer (the "
                         "stored states); the minimum is 1 with checkpoints='binomial'.")
    if checkpoints == "binomial":
        s = min(int(max_states), T) if max_states is not None else _default_slots(T)
        return _finish(T, _revolve(T, s))
    if checkpoints == "sqrt":
        c = math.isqrt(T - 1) + 1  # ceil(sqrt(T))
    elif isinstance(checkpoints, bool) or not isinstance(checkpoints, (int, np.integer)) \
            or checkpoints < 1:
        raise ValueError(f"checkpoints={checkpoints!r} must be 'sqrt', 'binomial' or a positive "
                         "integer (the number of stored checkpoints).")
    else:
        c = min(int(checkpoints), T)
    sched = _finish(T, _segments(T, c))
    if max_states is not None and sched.n_slots > max_states:
        raise ValueError(f"max_states={max_states} is too small for checkpoints={checkpoints!r} "
                         f"at T={T}: its segments need {sched.n_slots} stored states (the "
                         f"minimum). Raise max_states to {sched.n_slots}, or use "
                         "checkpoints='binomial', which fits any max_states >= 1.")
    return sched


def binomial_steps(l, s):
    """t(l, s): the fewest forward steps that reverse l steps with s >= 1
    stored states, the first holding the start (Griewank 1992); 0 for l = 1."""
    r, top = _reps(l, s)
    return r * l - top * r // (s + 1)  # C(s + r, s + 1) = C(s + r, s) r / (s + 1)


def _reps(l, s):
    """(r, C(s + r, s)) with r the least integer such that l <= C(s + r, s)."""
    r, b = 0, 1
    while b < l:
        r += 1
        b = b * (s + r) // r
    return r, b


def _default_slots(T):
    """The fewest slots whose binomial plan takes at most 2 T steps."""
    lo, hi = 1, T
    while lo < hi:
        mid = (lo + hi) // 2
        if binomial_steps(T + 1, mid) <= 2 * T:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _split(l, s):
    """An optimal first advance j in [1, l - 1] for l steps from a stored start
    with s >= 2 slots: it minimises j + t(l - j, s - 1) + t(j, s), a convex
    function of j whose slope at j is 1 + r(j + 1, s) - r(l - j, s - 1)."""
    lo, hi = 1, l - 1
    while lo < hi:
        j = (lo + hi) // 2
        if 1 + _reps(j + 1, s)[0] >= _reps(l - j, s - 1)[0]:
            hi = j
        else:
            lo = j + 1
    return lo


def _revolve(T, s):
    """Actions of revolve on the T + 1 "steps" 0..T (the last one is VALUE) with
    s slots. A frame (a, l, slot, free): the cursor at a, stored in `slot`,
    `free` slots above it, reverse steps a + l - 1 .. a."""
    out = [(SAVE, 0)]
    leaf = lambda a: out.append((VALUE, 0) if a == T else (REVERSE, a))
    stack = [(0, T + 1, 0, s - 1)]
    while stack:
        item = stack.pop()
        if len(item) == 1:  # (slot,): restore it
            out.append((RESTORE, item[0]))
            continue
        a, l, slot, free = item
        if l == 1:
            leaf(a)
            continue
        j = l - 1 if free == 0 else _split(l, free + 1)
        out.append((ADVANCE, j))
        stack.append((a, j, slot, free))
        stack.append((slot,))
        if l - j == 1:  # a single step: reversed at the cursor, no slot
            stack.append((a + j, 1, slot, free))
        else:
            out.append((SAVE, slot + 1))
            stack.append((a + j, l - j, slot + 1, free - 1))
    return out


def _segments(T, c):
    """Actions of c checkpoints with fixed segments (module docstring)."""
    seg = 1 if c >= T else -(-T // c)
    starts = list(range(0, T, seg))
    out = []
    for i, t0 in enumerate(starts):
        out += [(SAVE, i), (ADVANCE, min(seg, T - t0))]
    out.append((VALUE, 0))
    buf = len(starts)  # buffer slot of state t0 + i: buf + i - 1
    for i in range(len(starts) - 1, -1, -1):
        t0 = starts[i]
        steps = min(seg, T - t0)
        out.append((RESTORE, i))
        for k in range(1, steps):
            out.append((ADVANCE, 1))
            if k < steps - 1:
                out.append((SAVE, buf + k - 1))
        out.append((REVERSE, t0 + steps - 1))
        for k in range(steps - 2, -1, -1):
            out.append((RESTORE, buf + k - 1 if k else i))
            out.append((REVERSE, t0 + k))
    return out


def _finish(T, actions):
    """The Schedule of an action list: slot count, recomputation, theta_only."""
    a = np.array(actions, dtype=np.int64).reshape(-1, 2)
    slots = a[a[:, 0] == SAVE, 1]
    n_slots = int(slots.max()) + 1
    theta_only = np.ones(n_slots, dtype=bool)
    moves = np.flatnonzero((a[:, 0] == ADVANCE) | (a[:, 0] == RESTORE))  # cursor changes
    advanced = (a[moves[:-1], 0] == RESTORE) & (a[moves[1:], 0] == ADVANCE)
    theta_only[a[moves[:-1][advanced], 1]] = False  # restored, then stepped from
    steps = int(a[a[:, 0] == ADVANCE, 1].sum())
    a.setflags(write=False)
    theta_only.setflags(write=False)
    return Schedule(T, a, n_slots, steps - T, theta_only)
