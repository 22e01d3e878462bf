"""The refinement objective: a per-candidate loss whose vmap is one batched evaluation.

Solvers (jaxopt, optax) are written for one problem at a time and vectorised with
``jax.vmap``. Vmapping the interpreter itself would turn its ``lax.switch`` into a select
over every operator, so ``lane_value_and_grad`` is a ``custom_vmap`` function: called for one
candidate it evaluates the batch and picks its row; vmapped over candidates, its rule makes
exactly one batched value-and-gradient call for all of them. ``lane_loss`` wraps it in a
``custom_vjp`` so that solvers can differentiate it as usual.

The loss of candidate i is its weighted mean squared error on dataset ``dataset_index[i]``
divided by the weighted variance of that dataset's y (a normalised MSE, so that tolerances
mean the same for every dataset). Lanes marked inactive report a very low value and a zero
gradient: any line search then accepts its first trial for them, so finished candidates do
not make the lock-stepped line searches of the others run longer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.tree_util import register_pytree_node_class

from jaxsr.expr.compiler import Programs
from jaxsr.expr.interpreter import evaluate_programs, pairwise_sum
from jaxsr.refine.loss import loss_and_constant_grads

INACTIVE_VALUE = -1e30  # finite: a line search compares it without producing NaN


@register_pytree_node_class
@dataclasses.dataclass
class CandidateBatch:
    """Everything the objective needs, as one pytree.

    Attributes:
      programs: the candidates, compiled.
      X: (P, N, D) datasets; y: (P, N); weight: (P, N), each row summing to 1 (0 = unused).
      dataset_index: (B,) dataset of each candidate.
      inverse_variance: (B,) 1 / weighted variance of the candidate's y.
    """

    programs: Programs
    X: jax.Array
    y: jax.Array
    weight: jax.Array
    dataset_index: jax.Array
    inverse_variance: jax.Array

    def tree_flatten(self):
        return (self.programs, self.X, self.y, self.weight, self.dataset_index,
                self.inverse_variance), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def losses(self, consts: jax.Array) -> jax.Array:
        """(B,) normalised MSE of every candidate with constants ``consts`` (B, K)."""
        prediction = evaluate_programs(self.programs, self.X, consts, self.dataset_index)
        weight = self.weight[self.dataset_index]
        # Unused points contribute an exact zero, and a zero cotangent stays zero in the
        # interpreter's reverse sweep even where the formula is undefined.
        residual = jnp.where(weight > 0, prediction - self.y[self.dataset_index], 0.0)
        return pairwise_sum(weight * residual**2) * self.inverse_variance

    def losses_and_grads(self, consts: jax.Array):
        """(B,) losses and (B, K) gradients: one fused forward and reverse sweep."""
        targets = (self.y[self.dataset_index], self.weight[self.dataset_index])
        losses, grads = loss_and_constant_grads(self.programs, consts, self.X,
                                                self.dataset_index, _squared_error, targets)
        return losses * self.inverse_variance, grads * self.inverse_variance[:, None]


def _squared_error(prediction, y, weight):
    """Per point: weighted squared error and its derivative in the prediction. Unused points
    contribute exact zeros, which stay zero in the reverse sweep even where the formula is
    undefined."""
    residual = jnp.where(weight > 0, prediction - y, 0.0)
    return weight * residual**2, 2 * weight * residual


def _evaluate_lanes(consts, lanes, active, problem):
    """Losses and gradients of ``lanes`` with per-lane constants ``consts`` (L, K)."""
    full = jnp.zeros(problem.programs.constants.shape, consts.dtype).at[lanes].set(consts)
    losses, grads = problem.losses_and_grads(full)
    value = jnp.where(active, losses[lanes], INACTIVE_VALUE)
    grad = jnp.where(active[..., None], grads[lanes], 0.0)
    return value, grad


@custom_vmap
def lane_value_and_grad(consts, lane, active, problem):
    """Loss and gradient of one candidate (``lane``) at ``consts`` (K,)."""
    value, grad = _evaluate_lanes(consts[None], lane[None], jnp.asarray(active)[None], problem)
    return value[0], grad[0]


@lane_value_and_grad.def_vmap
def _lane_value_and_grad_batched(axis_size, in_batched, consts, lane, active, problem):
    consts_b, lane_b, active_b, problem_b = in_batched
    # Inside solver loops the problem may arrive broadcast along the lane axis; every copy
    # is the same, so take the first.
    problem = jax.tree.map(lambda a, b: a[0] if b else a, problem, problem_b)
    consts = consts if consts_b else jnp.broadcast_to(consts, (axis_size, *consts.shape))
    lane = lane if lane_b else jnp.broadcast_to(lane, (axis_size,))
    active = active if active_b else jnp.broadcast_to(active, (axis_size,))
    return _evaluate_lanes(consts, lane, active, problem), (True, True)


@jax.custom_vjp
def lane_loss(consts, lane, active, problem):
    """The loss of one candidate; differentiable, batched when vmapped."""
    return lane_value_and_grad(consts, lane, active, problem)[0]


def _lane_loss_fwd(consts, lane, active, problem):
    value, grad = lane_value_and_grad(consts, lane, active, problem)
    return value, grad


def _lane_loss_bwd(grad, cotangent):
    return cotangent * grad, None, None, None


lane_loss.defvjp(_lane_loss_fwd, _lane_loss_bwd)
