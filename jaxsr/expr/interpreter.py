"""The batched interpreter: one compiled JAX program evaluates a ``Programs`` batch.

``evaluate_programs`` computes B programs in a ``(rows, N)`` value buffer (its layout is
described in ``jaxsr.expr.compiler``) and returns each program's value, shape ``(B, N)``. A
``fori_loop`` (trip count = number of chunks, a runtime value) applies ``lax.switch(opcode)``
to one chunk at a time, so each operator is computed only where it occurs, and the compiled
code depends only on ``(B, ProgramSize, chunk)``, never on the skeletons.

Gradients come from one hand-written reverse sweep over the same chunks (``reverse_sweep``),
which serves both ``jax.custom_vjp`` here and refinement's fused loss
(``jaxsr.refine.loss``). It reads only the saved value buffer (derivatives are taken in terms
of each operator's output), and it gathers each node's cotangent from the one operand row of
its parent, so it needs no scatter-add and keeps no per-step residuals. Cotangents that are
exactly zero (masked points) stay zero even where the operator is undefined, so a masked NaN
cannot leak into a gradient.

Every row is computed elementwise from its own program's rows, so a NaN or an overflow in one
program never changes another program's values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsr.expr import operators
from jaxsr.expr.compiler import CotangentRows, Operands, Programs

# ------------------------------------------------------------------------ operator branches


def _forward_branch(op: operators.Operator):
    """Computes one chunk of ``op`` from the buffer; only its operands are gathered."""
    def run(buf, operands):
        return op.apply(jnp, *(_gather(buf, operands, k) for k in range(op.arity)))
    return run


def _backward_branch(op: operators.Operator):
    """Cotangents of a chunk's operands (C, 2, N) given its outputs and their cotangent g.

    Uses the table's derivative of ``op`` in terms of its saved output, so the operator
    is not recomputed. Where g is exactly zero (unused points) the cotangent stays zero even
    if the derivative is undefined there.
    """
    def run(buf, operands, out, g):
        args = [_gather(buf, operands, k) for k in range(op.arity)]
        partials = op.derivative(jnp, out, *args)
        used = g != 0
        grads = [jnp.where(used, g * partial, 0) for partial in partials]
        grads += [jnp.zeros_like(g)] * (2 - op.arity)
        return jnp.stack(grads, axis=1)
    return run


def _gather(buf, operands, k):
    """Values (C, N) of operand k of every node of a chunk."""
    rows, scalar, is_scalar = operands
    return jnp.where(is_scalar[:, k, None], scalar[:, k, None], buf[rows[:, k]])


_FORWARD = [_forward_branch(op) for op in operators.FUNCTIONS]
_BACKWARD = [_backward_branch(op) for op in operators.FUNCTIONS]

# ------------------------------------------------------------------------------ one call


def point_rows(X):
    """(P, N, D) datasets -> (P * D, N): the X rows that start the value buffer."""
    n_sets, n_points, n_dims = X.shape
    return jnp.swapaxes(X, 1, 2).reshape(n_sets * n_dims, n_points)


@dataclasses.dataclass(frozen=True)
class Frame:
    """The runtime layout of one call: operand rows and scalars resolved for every node."""

    p: Programs
    consts_flat: jax.Array
    data_index: jax.Array  # (B,) dataset of each program
    n_dims: int
    n_x_rows: int
    sink: int             # the last row: never written by a node that is read
    rows: jax.Array       # (RB + C, 2) buffer row of each operand (the sink for scalars)
    scalar: jax.Array     # (RB + C, 2) value of scalar operands
    is_scalar: jax.Array  # (RB + C, 2)

    @staticmethod
    def make(p: Programs, consts, x_rows, data_index, n_dims: int) -> Frame:
        n_x_rows = x_rows.shape[0]
        partial = Frame(p, consts.reshape(-1), data_index, n_dims, n_x_rows,
                        n_x_rows + p.n_node_rows - 1, None, None, None)
        scalar, is_scalar = partial.scalars_of(p.operands)
        return dataclasses.replace(partial, rows=partial.rows_of(p.operands), scalar=scalar,
                                   is_scalar=is_scalar)

    def rows_of(self, operands: Operands):
        """Buffer row of each operand (the sink for scalars)."""
        var_row = self.data_index[operands.program] * self.n_dims + operands.var
        node_row = self.n_x_rows + operands.node
        return jnp.where(operands.var >= 0, var_row,
                         jnp.where(operands.node >= 0, node_row, self.sink))

    def scalars_of(self, operands: Operands):
        """Value of each scalar operand, and a mask of which operands are scalars."""
        is_scalar = (operands.var < 0) & (operands.node < 0)
        value = jnp.where(operands.const >= 0,
                          self.consts_flat[jnp.maximum(operands.const, 0)],
                          operands.value.astype(self.consts_flat.dtype))
        return value, is_scalar

    def values(self, operands: Operands, buf):
        """Values (..., N) of ``operands`` in the filled buffer."""
        scalar, is_scalar = self.scalars_of(operands)
        return jnp.where(is_scalar[..., None], scalar[..., None], buf[self.rows_of(operands)])

    def chunk(self, j):
        """Chunk j: its operands (rows, scalars, mask), first output row and node slice."""
        start = self.p.chunk_start[j]
        take = lambda a: lax.dynamic_slice_in_dim(a, start, self.p.chunk)
        return (take(self.rows), take(self.scalar), take(self.is_scalar)), \
            self.n_x_rows + start, start


def forward_buffer(frame: Frame, x_rows):
    """The value buffer (X rows, then every operator row) for one block of points."""
    p = frame.p
    buf = jnp.concatenate([x_rows, jnp.zeros((p.n_node_rows, x_rows.shape[1]), x_rows.dtype)])

    def step(j, buf):
        # A partial chunk also writes rows past its count. Those rows belong to nodes later
        # in the sorted order, whose own chunks overwrite them before any parent reads them.
        operands, row0, _ = frame.chunk(j)
        out = lax.switch(p.chunk_opcode[j], _FORWARD, buf, operands)
        return lax.dynamic_update_slice_in_dim(buf, out, row0, 0)

    return lax.fori_loop(0, p.n_chunks, step, buf)


# ---------------------------------------------------------------------------- the sweep


def reverse_sweep(frame: Frame, buf, g):
    """Cotangent of every operand, (rows.total, Nb) in the ``CotangentRows`` layout, given
    the value buffer of a block of points and the roots' cotangent g (B, Nb)."""
    p = frame.p
    if p.parent is None:
        raise ValueError("these programs were assembled without the reverse sweep's tables "
                         "(assemble(..., gradients=False)): they cannot be differentiated")
    rows = CotangentRows(p.n_node_rows, p.n_programs)
    n_points = buf.shape[1]
    cot = jnp.concatenate([jnp.zeros((rows.roots, n_points), buf.dtype), g.astype(buf.dtype),
                           jnp.zeros((1, n_points), buf.dtype)])

    def step(k, cot):
        j = p.n_chunks - 1 - k
        operands, row0, start = frame.chunk(j)
        g_out = cot[lax.dynamic_slice_in_dim(p.parent, start, p.chunk)]
        out = lax.dynamic_slice_in_dim(buf, row0, p.chunk)
        g_operands = lax.switch(p.chunk_opcode[j], _BACKWARD, buf, operands, out, g_out)
        # Rows past a partial chunk's count belong to nodes already swept: keep theirs.
        valid = jnp.repeat(jnp.arange(p.chunk) < p.chunk_count[j], 2)[:, None]
        old = lax.dynamic_slice_in_dim(cot, 2 * start, 2 * p.chunk)
        new = jnp.where(valid, g_operands.reshape(2 * p.chunk, n_points), old)
        return lax.dynamic_update_slice_in_dim(cot, new, 2 * start, 0)

    return lax.fori_loop(0, p.n_chunks, step, cot)


def constant_cotangents(frame: Frame, cot):
    """(B * K,) cotangents of the constant slots, summed over the block's points."""
    return pairwise_sum(cot[frame.p.const_position])


def x_cotangents(frame: Frame, cot):
    """(n_x_rows, Nb): each X row's cotangent, summed over the operands that read it."""
    reads = jnp.concatenate([frame.rows.reshape(-1), frame.rows_of(frame.p.roots),
                             jnp.full(1, frame.sink)])
    reads = jnp.where(reads < frame.n_x_rows, reads, frame.n_x_rows)  # others are dropped
    zeros = jnp.zeros((frame.n_x_rows, cot.shape[1]), cot.dtype)
    return zeros.at[reads].add(cot, mode="drop")


def pairwise_sum(x, axis: int = -1):
    """Sum along ``axis`` in a fixed pairwise order: pad to a power of two, add neighbours.

    Unlike ``jnp.sum``, whose order XLA picks from the whole array's shape, the result for
    one row does not depend on how many rows are summed alongside it, and padding with zeros
    to any larger power of two gives the same bits. Adding neighbours (not halves) makes
    every aligned power-of-two block a subtree of the order, so summing blocks of points
    first and then the blocks' sums gives the same bits too. This is what makes a
    candidate's loss and gradient identical whether it is evaluated alone or in a batch
    (whose size decides the blocks).
    """
    x = jnp.moveaxis(x, axis, -1)
    size = 1 << max(0, (x.shape[-1] - 1).bit_length())
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x[..., 0]


# ------------------------------------------------------------------------ blocks of points

# Points are processed in blocks whose buffers fit a budget of bytes. Large temporary buffers
# are fresh memory on every call (on CPU, glibc maps allocations above 32 MB anew and pays a
# page fault per page), so a batch whose buffers would exceed the budget runs as a few
# smaller blocks that reuse one allocation and stay closer to the caches. Each block costs
# a pass of the chunk loop, so blocks should not be smaller than they need to be. Measured
# on a 2-core x86 CPU (32 MB L3): a forward pass over 4,096 search candidates ran twice as
# fast with 12 MB value buffers (32 points) as with 17 MB ones (64 points); refinement's
# sweep (value and cotangent buffers, 8,192 candidates) ran 1.5x faster with 24 MB (16
# points) than with 12 MB (8 points).
FORWARD_BLOCK_BYTES = 16 << 20
SWEEP_BLOCK_BYTES = 24 << 20


def forward_block_points(p: Programs, x_rows) -> int:
    """Points per block for a forward pass (one value buffer)."""
    return block_points(x_rows.shape[0] + p.n_node_rows, x_rows.dtype.itemsize,
                        x_rows.shape[1], FORWARD_BLOCK_BYTES)


def sweep_block_points(p: Programs, x_rows) -> int:
    """Points per block for a forward pass and its reverse sweep (value and cotangent
    buffers)."""
    rows = x_rows.shape[0] + p.n_node_rows + CotangentRows(p.n_node_rows, p.n_programs).total
    return block_points(rows, x_rows.dtype.itemsize, x_rows.shape[1], SWEEP_BLOCK_BYTES)


def block_points(rows: int, itemsize: int, n_points: int, budget: int) -> int:
    """Points per block for buffers of ``rows`` rows in all: all of them if they fit
    ``budget`` bytes, else the largest power of two that fits. Power-of-two blocks are aligned
    subtrees of ``pairwise_sum``'s order over the points, so blocked sums keep the same bits."""
    per_point = rows * itemsize
    if per_point * n_points <= budget:
        return n_points
    fit = max(1, budget // per_point)
    return 1 << (fit.bit_length() - 1)


def over_point_blocks(fn, arrays, size: int):
    """``fn(blocks of arrays)`` for each block of ``size`` points of ``arrays`` (each
    (R, N)), outputs stacked along a leading block axis (of length 1 when all points fit)."""
    if size == arrays[0].shape[1]:
        return jax.tree.map(lambda a: a[None], fn(list(arrays)))
    return lax.map(fn, [_blocks(a, size) for a in arrays])


def unblock(a, n_points: int):
    """(n_blocks, R, Nb) -> (R, N): the inverse of the blocking in ``over_point_blocks``."""
    if a.shape[0] == 1:
        return a[0, :, :n_points]
    return jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1)[:, :n_points]


def _blocks(a, size: int):
    """(R, N) -> (n_blocks, R, size), the last block zero-padded."""
    n_blocks = -(-a.shape[1] // size)
    a = jnp.pad(a, ((0, 0), (0, size * n_blocks - a.shape[1])))
    return jnp.moveaxis(a.reshape(a.shape[0], n_blocks, size), 1, 0)


# ------------------------------------------------------------------------------ evaluating


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _evaluate(p: Programs, consts, x_rows, data_index, n_dims):
    frame = Frame.make(p, consts, x_rows, data_index, n_dims)
    block = lambda xs: frame.values(p.roots, forward_buffer(frame, xs[0]))
    values = over_point_blocks(block, [x_rows], forward_block_points(p, x_rows))
    return unblock(values, x_rows.shape[1])


def _evaluate_fwd(p, consts, x_rows, data_index, n_dims):
    if sweep_block_points(p, x_rows) < x_rows.shape[1]:  # recompute blocks in backward
        return _evaluate(p, consts, x_rows, data_index, n_dims), (p, consts, x_rows,
                                                                  data_index, None)
    frame = Frame.make(p, consts, x_rows, data_index, n_dims)
    buf = forward_buffer(frame, x_rows)
    return frame.values(p.roots, buf), (p, consts, x_rows, data_index, buf)


def _evaluate_bwd(n_dims, residuals, g):
    p, consts, x_rows, data_index, buf = residuals
    frame = Frame.make(p, consts, x_rows, data_index, n_dims)

    def block(arrays):
        xb, gb = arrays  # buf was saved only when all points make one block
        cot = reverse_sweep(frame, forward_buffer(frame, xb) if buf is None else buf, gb)
        return constant_cotangents(frame, cot), x_cotangents(frame, cot)

    g_consts, g_x = over_point_blocks(block, [x_rows, g], sweep_block_points(p, x_rows))
    g_consts = pairwise_sum(g_consts, axis=0)  # the top of the same tree over points
    zeros = lambda a: (jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.floating)
                       else np.zeros(a.shape, jax.dtypes.float0))
    return (jax.tree.map(zeros, p), g_consts.reshape(consts.shape),
            unblock(g_x, x_rows.shape[1]), zeros(data_index))


_evaluate.defvjp(_evaluate_fwd, _evaluate_bwd)


@jax.jit
def _evaluate_jit(p: Programs, consts, X, data_index):
    return _evaluate(p, consts, point_rows(X), data_index, X.shape[2])


def evaluate_programs(programs: Programs, X, consts=None, dataset_index=None) -> jax.Array:
    """Values of every program on its points: ``(B, N)``, NaN where undefined.

    Args:
      programs: from ``compile_programs``.
      X: points. ``(N, D)``: every program on the same points. ``(B, N, D)``: program i on
        ``X[i]``. ``(P, N, D)`` with ``dataset_index`` (B,): program i on
        ``X[dataset_index[i]]``. Its float dtype is the compute dtype.
      consts: (B, K) constants to use instead of ``programs.constants``; differentiable
        (``jax.grad`` works with respect to ``consts`` and ``X``).
      dataset_index: see ``X``.
    """
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.float32)
    if X.ndim == 2:
        X = X[None]
        if dataset_index is None:  # built with jnp: a numpy array here would become a
            dataset_index = jnp.zeros(programs.n_programs, jnp.int32)  # captured constant
    if X.ndim != 3:
        raise ValueError(f"X must be (N, D), (B, N, D) or (P, N, D), got shape {X.shape}")
    dataset_index = _dataset_index(programs, X, dataset_index)
    _check_variables(programs, X)
    consts = programs.constants if consts is None else consts
    consts = jnp.asarray(consts, X.dtype)
    if consts.shape != programs.constants.shape:
        raise ValueError(f"consts must have shape {programs.constants.shape}, got {consts.shape}")
    return _evaluate_jit(programs, consts, X, dataset_index)


def _dataset_index(programs: Programs, X, dataset_index):
    """The checked (B,) dataset of each program; by default program i reads ``X[i]``."""
    B = programs.n_programs
    if dataset_index is None:
        if X.shape[0] != B:
            raise ValueError(f"X holds {X.shape[0]} datasets for {B} programs; "
                             "pass dataset_index to map programs to datasets")
        dataset_index = jnp.arange(B, dtype=jnp.int32)
    dataset_index = jnp.asarray(dataset_index, jnp.int32)
    if dataset_index.shape != (B,):
        raise ValueError(f"dataset_index must have shape ({B},), got {dataset_index.shape}")
    return dataset_index


def _check_variables(programs: Programs, X) -> None:
    n_variables = programs.n_variables
    if not isinstance(n_variables, jax.core.Tracer) and int(n_variables) > X.shape[2]:
        raise ValueError(f"programs use x_{int(n_variables) - 1} but X has {X.shape[2]} columns")


@jax.jit
def _evaluate_taps_jit(p: Programs, X, data_index):
    x_rows = point_rows(X)
    frame = Frame.make(p, p.constants.astype(X.dtype), x_rows, data_index, X.shape[2])
    taps = jax.tree.map(lambda a: a.reshape(-1), p.taps)  # rows, as the roots are
    block = lambda xs: frame.values(taps, forward_buffer(frame, xs[0]))
    values = over_point_blocks(block, [x_rows], forward_block_points(p, x_rows))
    return unblock(values, X.shape[1]).reshape(*p.taps.node.shape, X.shape[1])


def evaluate_taps(programs: Programs, X, dataset_index) -> jax.Array:
    """Values of the nodes ``programs`` was assembled with as ``taps``: ``taps.shape + (N,)``,
    program i on ``X[dataset_index[i]]`` (X: (P, N, D), its dtype the compute dtype). One
    forward pass, as ``evaluate_programs``; not differentiable."""
    if programs.taps is None:
        raise ValueError("these programs were assembled without taps")
    return _evaluate_taps_jit(programs, jnp.asarray(X), jnp.asarray(dataset_index, jnp.int32))
