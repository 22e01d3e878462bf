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
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxsr.expr.programs import pairwise_sum
from jaxsr.refine.solvers import Outcome, Settings, _finished, norm

ARMIJO = 1e-4
MIN_SHRINK, MAX_SHRINK = 0.1, 0.5  # a rejected step becomes t * [0.1, 0.5]


def _dot(a, b):
    return pairwise_sum(a * b)  # independent of the batch and of the constants' padding


def _direction(g, S, Y, rho, count):
    """-H g by the two-loop recursion; S, Y (B, m, K) ring buffers, ``count`` pairs stored."""
    m = S.shape[1]
    lanes = jnp.arange(g.shape[0])
    q, alphas = g, []
    for i in range(m):  # newest to oldest
        slot = (count - 1 - i) % m
        use = (i < jnp.minimum(count, m))
        s, y, r = S[lanes, slot], Y[lanes, slot], rho[lanes, slot]
        alpha = jnp.where(use, r * _dot(s, q), 0.0)
        q = q - alpha[:, None] * y
        alphas.append((slot, use, alpha))
    newest = (count - 1) % m
    s, y = S[lanes, newest], Y[lanes, newest]
    gamma = jnp.where(count > 0, _dot(s, y) / jnp.maximum(_dot(y, y), 1e-300), 1.0)
    r = gamma[:, None] * q
    for slot, use, alpha in reversed(alphas):  # oldest to newest
        beta = jnp.where(use, rho[lanes, slot] * _dot(Y[lanes, slot], r), 0.0)
        r = r + (alpha - beta)[:, None] * S[lanes, slot]
    return -r


def run_batched(problem, params0, active0, settings: Settings) -> Outcome:
    """Refines every active lane of ``params0`` (B, K) on ``problem``."""
    B, K = params0.shape
    m = settings.history
    dtype = params0.dtype
    lanes = jnp.arange(B)
    f0, g0 = problem.losses_and_grads(params0)
    finite0 = jnp.isfinite(f0) & jnp.all(jnp.isfinite(g0), axis=1)
    done0 = _finished(f0, g0, settings)
    gnorm0 = norm(g0)
    state = dict(
        x=params0, f=f0, g=g0, d=-g0,
        t=jnp.minimum(1.0, 1.0 / jnp.maximum(gnorm0, 1e-30)).astype(dtype),
        S=jnp.zeros((B, m, K), dtype), Y=jnp.zeros((B, m, K), dtype),
        rho=jnp.zeros((B, m), dtype), count=jnp.zeros(B, jnp.int32),
        active=active0 & finite0 & ~done0, converged=active0 & finite0 & done0,
        non_finite=active0 & ~finite0, iterations=jnp.zeros(B, jnp.int32),
        rejections=jnp.zeros(B, jnp.int32), step=0)

    def body(c):
        active = c["active"]
        slope = _dot(c["g"], c["d"])
        trial = c["x"] + c["t"][:, None] * c["d"]
        f_t, g_t = problem.losses_and_grads(jnp.where(active[:, None], trial, c["x"]))
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
        t_accept = jnp.where(count > 0, 1.0, first)
        t_reject = _shrink(c["t"], c["f"], f_t, slope)
        t = jnp.where(accept, t_accept, jnp.where(active, t_reject, c["t"])).astype(dtype)

        rejections = jnp.where(accept, 0, c["rejections"] + (active & ~accept))
        iterations = c["iterations"] + accept
        # Converged: small gradient, exact fit, or a step whose gain is at float resolution
        # (in float32, Armijo tests near the minimum otherwise fail on rounding alone).
        negligible = accept & (c["f"] - f_t <= settings.ftol * jnp.abs(c["f"]))
        done = accept & (_finished(f, g, settings) | negligible)
        stalled = rejections > settings.max_linesearch
        active = (active & ~done & ~stalled & ~bad_gradient
                  & (iterations < settings.max_iter))
        return dict(x=x, f=f, g=g, d=d, t=t, S=S, Y=Y, rho=rho, count=count, active=active,
                    converged=c["converged"] | done, non_finite=c["non_finite"] | bad_gradient,
                    iterations=iterations, rejections=rejections, step=c["step"] + 1)

    # Each lane takes at most max_iter accepted steps and max_linesearch rejections in a row.
    max_steps = settings.max_iter * (settings.max_linesearch + 1)
    c = lax.while_loop(lambda c: (c["step"] < max_steps) & jnp.any(c["active"]), body, state)
    best = jnp.where(active0 & finite0, c["f"], jnp.inf)
    return Outcome(c["x"], best, c["iterations"], c["converged"], c["non_finite"])


def _shrink(t, f, f_t, slope):
    """Next trial step after a rejected one: the minimiser of the quadratic through f, the
    slope and f_t, kept within [MIN_SHRINK, MAX_SHRINK] * t (halving if f_t is not finite)."""
    curvature = f_t - f - slope * t
    ideal = -slope * t * t / (2 * jnp.where(curvature > 0, curvature, 1.0))
    ideal = jnp.where(jnp.isfinite(f_t) & (curvature > 0), ideal, MAX_SHRINK * t)
    return jnp.clip(ideal, MIN_SHRINK * t, MAX_SHRINK * t)

