"""The refinement loss: per-program losses and their constant gradients in one fused pass."""

from __future__ import annotations

from jaxsr.expr.compiler import Programs
from jaxsr.expr.interpreter import (
    Frame,
    constant_cotangents,
    forward_buffer,
    over_point_blocks,
    pairwise_sum,
    point_rows,
    reverse_sweep,
    sweep_block_points,
)


def loss_and_constant_grads(programs: Programs, consts, X, dataset_index, point_loss, targets):
    """Per-program losses and their gradients with respect to the constants, fused.

    The loss of program i is ``sum_n loss_n`` where ``loss_n, dloss_n = point_loss(pred, *t)``
    is computed per point from the prediction ``pred`` (B, Nb) and ``targets`` (arrays of
    shape (B, N), split into the same point blocks). Compared with ``jax.vjp`` of
    ``evaluate_programs`` this is what refinement needs and nothing more: each block of
    points is evaluated once and its reverse sweep follows at once (no recomputation), and
    no gradient with respect to X is formed. Sums run in ``pairwise_sum`` order over points,
    so a program's results do not depend on the batch it is in.

    Args:
      programs: from ``compile_programs``; X: (P, N, D); dataset_index: (B,) ints;
      consts: (B, K).
    Returns:
      (B,) losses and (B, K) gradients.
    """
    x_rows = point_rows(X)
    frame = Frame.make(programs, consts, x_rows, dataset_index, X.shape[2])

    def block(arrays):
        xb, *tb = arrays
        buf = forward_buffer(frame, xb)
        losses, g = point_loss(frame.values(programs.roots, buf), *tb)
        return pairwise_sum(losses), constant_cotangents(frame, reverse_sweep(frame, buf, g))

    size = sweep_block_points(programs, x_rows)
    losses, g_consts = over_point_blocks(block, [x_rows, *targets], size)
    # The top of the same pairwise tree over points.
    losses, g_consts = pairwise_sum(losses, axis=0), pairwise_sum(g_consts, axis=0)
    return losses, g_consts.reshape(consts.shape)
