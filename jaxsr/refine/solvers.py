"""Library L-BFGS (jaxopt, optax) over many candidates at once, steps in lock-step.

A backend adapts one library's single-problem L-BFGS to three functions of one lane:
``init(params, *args) -> state``, ``step(params, state, *args) -> (params, state)`` and
``value_and_grad(state) -> (value, grad)`` at the state's current point. ``run`` vmaps them
over candidates inside one ``lax.while_loop`` and adds what a batch needs: the best point
seen so far is kept, a lane whose loss or gradient turns non-finite is frozen and flagged,
converged or stalled lanes stop, and the loop ends when no lane is active.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
from jax import lax

from jaxsr.expr.interpreter import pairwise_sum
from jaxsr.refine.objective import lane_loss


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static solver settings (they key the compiled code)."""

    solver: str = "batched"    # "batched" (batched.py), "jaxopt" or "optax" (this module)
    max_iter: int = 50
    tol: float = 1e-8          # on the gradient norm of the normalised MSE
    exact_fit: float = 1e-14   # normalised MSE counted as a perfect fit
    ftol: float = 1e-12        # "batched": an accepted step lowering the loss by less than
                               # ftol * loss ends the candidate (float resolution reached)
    max_linesearch: int = 20
    patience: int = 5          # consecutive steps without a new best before a lane stops
    linesearch: str = "zoom"   # jaxopt: "zoom" or "backtracking"; optax: "zoom" or "backtracking"
    history: int = 10


class Backend(NamedTuple):
    init: Callable
    step: Callable
    value_and_grad: Callable


def _jaxopt_backend(settings: Settings) -> Backend:
    import jaxopt  # deprecated upstream (warns on import) but the user's chosen default

    solver = jaxopt.LBFGS(lane_loss, maxiter=settings.max_iter, tol=0.0,
                          history_size=settings.history, maxls=settings.max_linesearch,
                          linesearch=settings.linesearch, implicit_diff=False)

    def init(params, *args):
        state = solver.init_state(params, *args)
        # Like optax's scale_init_precond: a first trial step of 1/|g| rather than 1, so that
        # a steep start (small-variance targets) does not overshoot by orders of magnitude.
        first = jnp.minimum(1.0, 1.0 / jnp.maximum(norm(state.grad), 1e-30))
        stepsize = (first / solver.increase_factor).astype(state.stepsize.dtype)
        return state._replace(stepsize=stepsize)

    return Backend(
        init=init,
        step=lambda params, state, *args: tuple(solver.update(params, state, *args)),
        value_and_grad=lambda state: (state.value, state.grad),
    )


def _optax_backend(settings: Settings) -> Backend:
    if settings.linesearch == "zoom":
        linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=settings.max_linesearch)
    else:
        linesearch = optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=settings.max_linesearch, store_grad=True)
    opt = optax.lbfgs(memory_size=settings.history, linesearch=linesearch)

    def init(params, *args):
        state = opt.init(params)
        value, grad = jax.value_and_grad(lane_loss)(params, *args)
        # Seed the line search's cache so the first step reuses this evaluation.
        return otu.tree_set(state, value=value, grad=grad)

    def step(params, state, *args):
        value_fn = lambda p: lane_loss(p, *args)
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                    value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return Backend(init, step, lambda state: (otu.tree_get(state, "value"),
                                               otu.tree_get(state, "grad")))


BACKENDS = {"jaxopt": _jaxopt_backend, "optax": _optax_backend}


class Outcome(NamedTuple):
    params: jax.Array       # (B, K) best point seen
    value: jax.Array        # (B,) objective there
    iterations: jax.Array   # (B,) steps taken
    converged: jax.Array    # (B,) gradient or exact-fit criterion met
    non_finite: jax.Array   # (B,) loss or gradient became non-finite


def _select(mask, new, old):
    """Per lane: ``new`` where mask else ``old``, for any pytree with a leading lane axis."""
    def pick(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)
    return jax.tree.map(pick, new, old)


def run(problem, params0: jax.Array, active0: jax.Array, settings: Settings) -> Outcome:
    """Refines every active lane of ``params0`` (B, K) on ``problem``."""
    backend = BACKENDS[settings.solver](settings)
    lanes = jnp.arange(params0.shape[0])
    vstep = jax.vmap(backend.step, in_axes=(0, 0, 0, 0, None))
    vvalue = jax.vmap(backend.value_and_grad)

    state0 = jax.vmap(backend.init, in_axes=(0, 0, 0, None))(params0, lanes, active0, problem)
    value0, grad0 = vvalue(state0)
    finite0 = jnp.isfinite(value0) & jnp.all(jnp.isfinite(grad0), axis=1)
    done0 = _finished(value0, grad0, settings)
    best = jnp.where(active0 & finite0, value0, jnp.inf)
    carry = dict(
        params=params0, state=state0, best_params=params0, best=best, value=value0,
        active=active0 & finite0 & ~done0, converged=active0 & finite0 & done0,
        non_finite=active0 & ~finite0, iterations=jnp.zeros_like(lanes),
        stalls=jnp.zeros_like(lanes), step=0)

    def body(c):
        params, state = vstep(c["params"], c["state"], lanes, c["active"], problem)
        value, grad = vvalue(state)
        was_active = c["active"]
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad), axis=1)
        improved = was_active & finite & (value < c["best"])
        # A lane stalls after `patience` steps in a row (line searches included) that did
        # not reach a new best loss; one bad step (a poorly scaled first one) is tolerated.
        stalls = jnp.where(improved, 0, c["stalls"] + was_active)
        stalled = stalls >= settings.patience
        done = was_active & finite & _finished(value, grad, settings)
        return dict(
            params=_select(was_active, params, c["params"]),
            state=_select(was_active, state, c["state"]),
            best_params=_select(improved, params, c["best_params"]),
            best=jnp.where(improved, value, c["best"]),
            value=jnp.where(was_active, value, c["value"]),
            active=was_active & finite & ~done & ~stalled,
            converged=c["converged"] | done,
            non_finite=c["non_finite"] | (was_active & ~finite),
            iterations=c["iterations"] + was_active,
            stalls=stalls, step=c["step"] + 1)

    def cond(c):
        return (c["step"] < settings.max_iter) & jnp.any(c["active"])

    c = lax.while_loop(cond, body, carry)
    return Outcome(c["best_params"], c["best"], c["iterations"], c["converged"],
                   c["non_finite"])


def norm(a):
    """Euclidean norm over the last axis, in a batch-independent order."""
    return jnp.sqrt(pairwise_sum(a * a))


def _finished(value, grad, settings: Settings):
    return (norm(grad) <= settings.tol) | (value <= settings.exact_fit)
