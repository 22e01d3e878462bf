"""jaxsr's own batched L-BFGS: one batched evaluation per step, no lock-stepped line search.

Library solvers (jaxopt, optax) run a line search inside every iteration; vmapped over
candidates, that inner loop runs until the slowest candidate's search ends, so every
iteration costs as many batched evaluations as the worst candidate needs. Here the line
search is flattened into the outer loop: at every step each candidate evaluates one trial
point ``x + t d``; a candidate whose trial satisfies the Armijo condition moves there and
computes a new L-BFGS direction, and one whose trial fails shrinks ``t`` (safeguarded
quadratic interpolation) and tries again at the next step. Every batched evaluation thus
serves every candidate, whatever the others are doing.

Per candidate the algorithm is textbook L-BFGS with backtracking (two-loop recursion,
memory ``history``, pairs kept only when s.y > 0, first step 1/|g|). All state carries a
leading candidate axis and is updated with masks, so candidates never interact.

The state is a dict of arrays that lives on the host between *rounds*: ``run_round`` steps
a batch until few of its lanes remain active, and the caller (``api._refine_in_rounds``)
moves the survivors into a smaller batch for the next round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsr.expr.interpreter import pairwise_sum
from jaxsr.refine.solvers import Outcome, Settings, _finished, norm

ARMIJO = 1e-4
MIN_SHRINK, MAX_SHRINK = 0.1, 0.5  # a rejected step becomes t * [0.1, 0.5]
GROW = 4.0


def _dot(a, b):
    return pairwise_sum(a * b)  # independent of the batch and of the constants' padding


def _direction(g, S, Y, rho, count):
    """-H g by the two-loop recursion; S, Y (B, m, K) ring buffers, ``count`` pairs stored.

    Loops rather than unrolled Python: unrolled, the m small steps took XLA several
    seconds to compile for every batch size.
    """
    m = S.shape[1]
    stored = jnp.minimum(count, m)
    pick = lambda a, slot: jnp.take_along_axis(
        a, slot.reshape(-1, *([1] * (a.ndim - 1))), axis=1)[:, 0]

    def newest_first(i, carry):
        q, alphas = carry
        slot = (count - 1 - i) % m
        alpha = jnp.where(i < stored, pick(rho, slot) * _dot(pick(S, slot), q), 0.0)
        return q - alpha[:, None] * pick(Y, slot), alphas.at[:, i].set(alpha)

    q, alphas = lax.fori_loop(0, m, newest_first, (g, jnp.zeros(rho.shape, g.dtype)))
    newest = (count - 1) % m
    s, y = pick(S, newest), pick(Y, newest)
    gamma = jnp.where(count > 0, _dot(s, y) / jnp.maximum(_dot(y, y), 1e-300), 1.0)

    def oldest_first(j, r):
        i = m - 1 - j
        slot = (count - 1 - i) % m
        beta = jnp.where(i < stored, pick(rho, slot) * _dot(pick(Y, slot), r), 0.0)
        return r + (alphas[:, i] - beta)[:, None] * pick(S, slot)

    return -lax.fori_loop(0, m, oldest_first, gamma[:, None] * q)


def initial_state(params0: np.ndarray, optimise: np.ndarray, history: int,
                  max_iter: int) -> dict:
    """The host-side state before any evaluation: every lane is ``fresh`` (its first step
    evaluates ``params0`` and sets its loss, gradient and first direction), and only lanes
    in ``optimise`` go on to take L-BFGS steps, ``max_iter`` at most.

    The iteration budget is data, not a compile-time setting: callers that alternate
    budgets (a search refines seeds longer than its offspring) share one compiled solver.
    """
    B, K = params0.shape
    dtype = params0.dtype
    zeros = lambda *shape, dt=dtype: np.zeros(shape, dt)
    flags = lambda: np.zeros(B, bool)
    return dict(
        x=params0, f=zeros(B), g=zeros(B, K), d=zeros(B, K), t=zeros(B),
        S=zeros(B, history, K), Y=zeros(B, history, K), rho=zeros(B, history),
        count=zeros(B, dt=np.int32), initial=zeros(B), optimise=np.asarray(optimise, bool),
        fresh=np.ones(B, bool), started=flags(), active=np.ones(B, bool),
        converged=flags(), non_finite=flags(), iterations=zeros(B, dt=np.int32),
        rejections=zeros(B, dt=np.int32), steps=zeros(B, dt=np.int32),
        max_iter=np.full(B, max_iter, np.int32))


def run_round(problem, state: dict, max_active, settings: Settings) -> dict:
    """Steps every active lane until at most ``max_active`` lanes remain active.

    The caller then moves the remaining lanes into a smaller batch (see ``api``), so that
    the long tail of slow candidates does not pay for the whole batch at every step.
    """
    # Each lane takes at most max_iter accepted steps and max_linesearch rejections in a row
    # (``settings.max_iter`` is unused: the budget is per lane, in the state).

    def cond(c):
        n_active = jnp.sum(c["active"])
        return (n_active > 0) & (n_active > max_active)

    def body(c):
        c = _step(problem, c, settings)
        c["active"] = c["active"] & (c["steps"] < c["max_iter"] * (settings.max_linesearch + 1))
        return c

    return lax.while_loop(cond, body, state)


def outcome(state) -> Outcome:
    """The solver's answer: the last accepted point of each lane is its best."""
    best = np.where(state["started"], state["f"], np.inf)
    return Outcome(state["x"], best, state["iterations"], state["converged"],
                   state["non_finite"])


def _start(c: dict, f, g, settings: Settings) -> dict:
    """Fresh lanes after their first evaluation (loss f, gradient g at x)."""
    finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g), axis=1)
    started = c["optimise"] & finite
    done = _finished(f, g, settings)
    first = jnp.minimum(1.0, 1.0 / jnp.maximum(norm(g), 1e-30)).astype(c["t"].dtype)
    return dict(c, f=f, g=g, d=-g, t=first, initial=f, fresh=jnp.zeros_like(c["fresh"]),
                started=started, active=started & ~done, converged=started & done,
                non_finite=c["optimise"] & ~finite)


def _step(problem, c: dict, settings: Settings) -> dict:
    """One evaluation per active lane. A fresh lane evaluates its start point; any other
    tries one point: it accepts it (Armijo) and takes a new L-BFGS direction, or shrinks
    the step for the next trial."""
    m, dtype = settings.history, c["x"].dtype
    lanes = jnp.arange(c["x"].shape[0])
    fresh = c["fresh"]
    active = c["active"] & ~fresh
    slope = _dot(c["g"], c["d"])
    trial = c["x"] + c["t"][:, None] * c["d"]
    f_t, g_t = problem.losses_and_grads(jnp.where(active[:, None], trial, c["x"]))
    started = _start(c, f_t, g_t, settings)
    accept = active & jnp.isfinite(f_t) & (f_t <= c["f"] + ARMIJO * c["t"] * slope)
    bad_gradient = accept & ~jnp.all(jnp.isfinite(g_t), axis=1)
    accept = accept & ~bad_gradient

    # Memory update for accepted lanes (only pairs with positive curvature).
    s, y = trial - c["x"], g_t - c["g"]
    sy = _dot(s, y)
    store = accept & (sy > 1e-10 * jnp.sqrt(_dot(s, s) * _dot(y, y)))
    slot = c["count"] % m
    S = c["S"].at[lanes, slot].set(jnp.where(store[:, None], s, c["S"][lanes, slot]))
    Y = c["Y"].at[lanes, slot].set(jnp.where(store[:, None], y, c["Y"][lanes, slot]))
    rho = c["rho"].at[lanes, slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0),
                                                   c["rho"][lanes, slot]))
    count = c["count"] + store

    x = jnp.where(accept[:, None], trial, c["x"])
    f = jnp.where(accept, f_t, c["f"])
    g = jnp.where(accept[:, None], g_t, c["g"])
    new_d = _direction(g, S, Y, rho, count)
    # Not a descent direction (rounding, stale memory): fall back to steepest descent.
    new_d = jnp.where((_dot(g, new_d) < 0)[:, None], new_d, -g)
    d = jnp.where(accept[:, None], new_d, c["d"])
    first = jnp.minimum(1.0, 1.0 / jnp.maximum(norm(g), 1e-30))
    # A lane that needed a short step is likely to need one again: start the next search
    # from GROW times the accepted step (capped at the quasi-Newton step 1) instead of 1.
    t_accept = jnp.where(count > 0, jnp.minimum(1.0, GROW * c["t"]), first)
    t_reject = _shrink(c["t"], c["f"], f_t, slope)
    t = jnp.where(accept, t_accept, jnp.where(active, t_reject, c["t"])).astype(dtype)

    rejections = jnp.where(accept, 0, c["rejections"] + (active & ~accept))
    iterations = c["iterations"] + accept
    # Converged: small gradient, exact fit, or a step whose gain is at float resolution
    # (in float32, Armijo tests near the minimum otherwise fail on rounding alone).
    negligible = accept & (c["f"] - f_t <= settings.ftol * jnp.abs(c["f"]))
    done = accept & (_finished(f, g, settings) | negligible)
    stalled = rejections > settings.max_linesearch
    stepped = dict(c, x=x, f=f, g=g, d=d, t=t, S=S, Y=Y, rho=rho, count=count,
                   active=active & ~done & ~stalled & ~bad_gradient
                   & (iterations < c["max_iter"]),
                   converged=c["converged"] | done, non_finite=c["non_finite"] | bad_gradient,
                   iterations=iterations, rejections=rejections, steps=c["steps"] + active)
    return jax.tree.map(lambda a, b: jnp.where(_lanes_like(fresh, a), a, b), started, stepped)


def _lanes_like(mask, a):
    return mask.reshape(mask.shape + (1,) * (a.ndim - 1))


def _shrink(t, f, f_t, slope):
    """Next trial step after a rejected one: the minimiser of the quadratic through f, the
    slope and f_t, kept within [MIN_SHRINK, MAX_SHRINK] * t (halving if f_t is not finite)."""
    curvature = f_t - f - slope * t
    ideal = -slope * t * t / (2 * jnp.where(curvature > 0, curvature, 1.0))
    ideal = jnp.where(jnp.isfinite(f_t) & (curvature > 0), ideal, MAX_SHRINK * t)
    return jnp.clip(ideal, MIN_SHRINK * t, MAX_SHRINK * t)

