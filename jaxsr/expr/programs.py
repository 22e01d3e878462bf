"""Batched programs: many expression trees evaluated by one compiled JAX interpreter.

``compile_programs(exprs)`` flattens B trees into one table of operator nodes;
``evaluate_programs`` computes them in a ``(rows, N)`` value buffer and returns each program's
value, shape ``(B, N)``.

Layout:

* the buffer starts with the rows of X (one row per dataset and variable), so a variable
  operand is just a row index and variables are never copied;
* float constants and fixed numbers (integers, ``pi``) are *scalar operands*, read from the
  constants array at the point of use, so they take no rows either;
* then come the operator rows: every operator node of every program, sorted on the host by
  (height, opcode), where height is the longest path down to a leaf. All nodes of one height
  depend only on lower heights, and within a height the nodes of one operator are contiguous.

The operator rows are processed in fixed-size *chunks* of ``chunk`` rows, each holding a single
operator: a ``fori_loop`` (trip count = number of chunks, a runtime value) applies
``lax.switch(opcode)`` to one chunk at a time, so each operator is computed only where it
occurs, and any new mix of skeletons with the same padded size reuses the compiled code.

Gradients use a hand-written reverse sweep (``jax.custom_vjp``) over the same chunks: the
forward pass saves only the value buffer, so the backward pass costs about two forward passes
and keeps no per-step residuals. Cotangents that are exactly zero (masked points) stay zero
even where the operator is undefined, so a masked NaN cannot leak into a gradient.

Every row is computed elementwise from its own program's rows, so a NaN or an overflow in one
program never changes another program's values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import register_pytree_node_class

from jaxsr.expr import operators
from jaxsr.expr.tree import Expr

MAX_CHUNK = 128


def default_chunk(n_node_slots: int) -> int:
    """Chunk rows for a batch: large enough to amortise the loop, small enough that the
    partial chunk ending each (height, operator) group (~64 groups in a diverse batch)
    wastes little. A power of two in [8, MAX_CHUNK]."""
    target = max(n_node_slots // 64, 8)
    return int(min(MAX_CHUNK, 1 << (target.bit_length() - 1)))

# Node kinds of the flat node arrays (``Nodes``).
KIND_VAR, KIND_CONST, KIND_FIXED, KIND_OP = range(4)


@dataclasses.dataclass(frozen=True)
class ProgramSize:
    """Padded capacity of a batch; one compiled evaluator serves each (B, size, chunk).

    ``ops`` is the operator-node capacity per program *on average* (the batch holds
    ``B * ops`` nodes in all; a single program may hold more), ``constants`` the most float
    constants in one program, and ``depth`` the greatest height of a program (it bounds how
    many (height, operator) groups the batch can have).
    """

    ops: int
    constants: int
    depth: int

    @staticmethod
    def fitting(exprs: Sequence[Expr], multiple: int = 4) -> ProgramSize:
        """The smallest size holding ``exprs``, each field rounded up to ``multiple``."""
        templates = [_template(e) for e in exprs]
        up = lambda n: max(multiple, -(-int(n) // multiple) * multiple)
        return ProgramSize(
            ops=up(np.ceil(sum(t.n_ops for t in templates) / max(len(templates), 1))),
            constants=up(max((t.n_consts for t in templates), default=0)),
            depth=up(max((int(t.height.max(initial=0)) for t in templates), default=0)),
        )

    def check(self, templates) -> None:
        total_ops = sum(t.n_ops for t in templates)
        if total_ops > len(templates) * self.ops:
            raise ValueError(f"{len(templates)} expressions hold {total_ops} operator nodes; "
                             f"{self} holds {len(templates) * self.ops}")
        for i, t in enumerate(templates):
            if t.n_consts > self.constants or t.height.max(initial=0) > self.depth:
                raise ValueError(f"expression {i} ({t.n_consts} constants, depth "
                                 f"{t.height.max(initial=0)}) does not fit {self}")


@register_pytree_node_class
@dataclasses.dataclass
class Operands:
    """Where the values of a list of operands come from (any leading shape).

    An operand is an operator node (``node`` >= 0), a variable (``var`` >= 0) of its program's
    dataset, a float constant (``const`` >= 0, a flat slot ``program * K + k``), or else the
    fixed number ``value``.
    """

    node: np.ndarray
    var: np.ndarray
    const: np.ndarray
    value: np.ndarray
    program: np.ndarray

    def tree_flatten(self):
        return (self.node, self.var, self.const, self.value, self.program), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def rows(self, data_index, n_dims, first_node_row, sink):
        """Buffer row of each operand (``sink`` for scalars)."""
        var_row = data_index[self.program] * n_dims + self.var
        return jnp.where(self.var >= 0, var_row,
                         jnp.where(self.node >= 0, first_node_row + self.node, sink))

    def scalars(self, consts_flat):
        """Value of each scalar operand, and a mask of which operands are scalars."""
        is_scalar = (self.var < 0) & (self.node < 0)
        value = jnp.where(self.const >= 0, consts_flat[jnp.maximum(self.const, 0)],
                          self.value.astype(consts_flat.dtype))
        return value, is_scalar


@register_pytree_node_class
@dataclasses.dataclass
class Programs:
    """B expressions compiled for the batched interpreter (see the module docstring)."""

    operands: Operands        # (RB + chunk, 2): both operands of each sorted operator node
    roots: Operands           # (B,): each program's value
    chunk_start: np.ndarray   # (n_chunk_slots,) first operator node of each chunk
    chunk_count: np.ndarray   # (n_chunk_slots,) nodes in the chunk (<= chunk)
    chunk_opcode: np.ndarray  # (n_chunk_slots,) index into operators.FUNCTIONS
    n_chunks: np.ndarray      # () chunks in use
    parent: np.ndarray        # (RB + chunk,) cotangent row of each node (see _CotangentRows)
    const_position: np.ndarray  # (B * K,) cotangent row of each constant slot
    constants: np.ndarray     # (B, K) float64, prefix order
    constant_mask: np.ndarray # (B, K) bool, slots in use
    n_variables: np.ndarray   # () 1 + the largest variable index used (0 if none)
    taps: Operands | None = None  # extra nodes whose values ``evaluate_taps`` reads
    size: ProgramSize = ProgramSize(4, 4, 4)
    chunk: int = MAX_CHUNK

    _ARRAYS = ("operands", "roots", "chunk_start", "chunk_count", "chunk_opcode", "n_chunks",
               "parent", "const_position", "constants", "constant_mask", "n_variables", "taps")

    def tree_flatten(self):
        return tuple(getattr(self, k) for k in self._ARRAYS), (self.size, self.chunk)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, size=aux[0], chunk=aux[1])

    @property
    def n_programs(self) -> int:
        return self.roots.node.shape[0]

    @property
    def n_node_rows(self) -> int:
        """Rows for operator nodes, including one chunk of slack at the end."""
        return self.operands.node.shape[0]


# ---------------------------------------------------------------------------- compiling


@dataclasses.dataclass(frozen=True)
class _Template:
    """One expression's nodes in postorder, as arrays (cached per expression)."""

    kind: np.ndarray      # KIND_*
    arg: np.ndarray       # variable index / constant ordinal / opcode
    fixed: np.ndarray     # value of fixed leaves
    children: np.ndarray  # (n, 2) local child indices, -1 where absent
    height: np.ndarray
    n_ops: int
    n_consts: int
    constants: np.ndarray


@functools.lru_cache(maxsize=1 << 16)
def _template(expr: Expr) -> _Template:
    nodes = expr.postorder
    n = len(nodes)
    kind, arg = np.zeros(n, np.int8), np.zeros(n, np.int32)
    fixed, height = np.zeros(n), np.zeros(n, np.int32)
    children = np.full((n, 2), -1, np.int32)
    index = {}
    n_consts = 0
    for i, node in enumerate(nodes):
        index[id(node)] = i
        if node.is_constant:
            kind[i], arg[i] = KIND_CONST, n_consts
            n_consts += 1
        elif node.variable is not None:
            kind[i], arg[i] = KIND_VAR, node.variable
        elif node.operator.arity == 0:
            kind[i], fixed[i] = KIND_FIXED, node.operator.value
        else:
            kind[i], arg[i] = KIND_OP, operators.OPCODE[node.token]
            kids = [index[id(c)] for c in node.children]
            children[i, : len(kids)] = kids
            height[i] = 1 + max(height[k] for k in kids)
    return _Template(kind, arg, fixed, children, height, int(np.sum(kind == KIND_OP)),
                     n_consts, expr.constants())


def compile_programs(
    exprs: Sequence[Expr], size: ProgramSize | None = None, chunk: int | None = None
) -> Programs:
    """Compiles expression trees into one ``Programs`` batch (host-side numpy work).

    Args:
      exprs: the trees; any mix of shapes.
      size: padded per-program capacity; default ``ProgramSize.fitting(exprs)``. Batches with
        equal ``(len(exprs), size, chunk)`` share one compiled evaluator.
      chunk: rows per interpreter step; default ``default_chunk(len(exprs) * size.ops)``.
        Larger amortises loop overhead, smaller wastes less on the partial chunk that ends
        each (height, operator) group.
    """
    exprs = list(exprs)
    if not exprs:
        raise ValueError("compile_programs needs at least one expression")
    size = size or ProgramSize.fitting(exprs)
    templates = [_template(e) for e in exprs]
    size.check(templates)
    return assemble(Nodes.concatenate(templates), size, chunk)


@dataclasses.dataclass(frozen=True)
class Nodes:
    """The nodes of B programs, flat: what ``assemble`` turns into a ``Programs`` batch.

    Node order within a program is free (the interpreter sorts operator nodes itself), so
    trees (postorder templates) and the search's array-form populations (prefix order) both
    build one of these without going through each other.

    Attributes:
      kind: (n,) KIND_* of each node.
      arg: (n,) variable index, constant ordinal within its program (in prefix order of the
        leaves) or opcode.
      fixed: (n,) value of fixed leaves (0 elsewhere).
      children: (n, 2) global indices of the operands, -1 where absent.
      height: (n,) longest path down to a leaf.
      program: (n,) the program each node belongs to.
      root: (B,) global index of each program's root.
      constants: (B, K') float constants of each program in prefix order, zero-padded.
      n_constants: (B,) constants in use per program.
    """

    kind: np.ndarray
    arg: np.ndarray
    fixed: np.ndarray
    children: np.ndarray
    height: np.ndarray
    program: np.ndarray
    root: np.ndarray
    constants: np.ndarray
    n_constants: np.ndarray

    @staticmethod
    def concatenate(templates: Sequence[_Template]) -> Nodes:
        cat = lambda field: np.concatenate([getattr(t, field) for t in templates])
        lengths = np.array([len(t.kind) for t in templates])
        offset = np.repeat(np.cumsum(lengths) - lengths, lengths)
        n_constants = np.array([t.n_consts for t in templates])
        constants = np.zeros((len(templates), max(1, n_constants.max(initial=0))))
        for p, t in enumerate(templates):
            constants[p, : t.n_consts] = t.constants
        return Nodes(
            kind=cat("kind"), arg=cat("arg"), fixed=cat("fixed"),
            children=np.where(cat("children") >= 0, cat("children") + offset[:, None], -1),
            height=cat("height"),
            program=np.repeat(np.arange(len(templates)), lengths).astype(np.int32),
            root=np.cumsum(lengths) - 1, constants=constants, n_constants=n_constants)


def assemble(nodes: Nodes, size: ProgramSize, chunk: int | None = None,
             taps: np.ndarray | None = None) -> Programs:
    """The interpreter's tables for ``nodes`` (host-side numpy work, no per-program loop).

    The caller guarantees that the programs fit ``size`` (``ProgramSize.check``). ``taps``:
    global node indices (any shape, -1 for "the number 0") whose values ``evaluate_taps``
    returns besides the roots, read from the same forward pass.
    """
    B, K = len(nodes.root), size.constants
    chunk = chunk or default_chunk(B * size.ops)
    kind, arg, fixed, height, program = (nodes.kind, nodes.arg, nodes.fixed, nodes.height,
                                         nodes.program)

    # Operator nodes sorted by (height, opcode): chunks are homogeneous and in dependency order.
    op_nodes = np.flatnonzero(kind == KIND_OP)
    order = op_nodes[np.lexsort((arg[op_nodes], height[op_nodes]))]
    node_index = np.full(len(kind), -1, np.int32)
    node_index[order] = np.arange(len(order))

    # Every node described as an operand; a missing child (unary) is the scalar 0.
    as_operand = Operands(
        node=np.append(node_index, -1),
        var=np.append(np.where(kind == KIND_VAR, arg, -1), -1).astype(np.int32),
        const=np.append(np.where(kind == KIND_CONST, program * K + arg, -1), -1).astype(np.int32),
        value=np.append(np.where(kind == KIND_FIXED, fixed, 0.0), 0.0),
        program=np.append(program, 0),
    )
    RB = B * size.ops
    kids = nodes.children[order]
    operands = jax.tree.map(
        lambda a: _pad_rows(a[kids], RB + chunk, fill=0 if a is as_operand.value else -1),
        as_operand)
    operands.program = np.where(operands.program < 0, 0, operands.program).astype(np.int32)
    roots = jax.tree.map(lambda a: a[nodes.root], as_operand)
    tapped = None if taps is None else jax.tree.map(lambda a: a[taps], as_operand)

    starts, counts, opcodes = _chunks(height[order], arg[order], chunk)
    n_slots = -(-RB // chunk) + min(RB, size.depth * len(operators.FUNCTIONS))
    pad = lambda a: np.pad(a, (0, n_slots - len(a))).astype(np.int32)

    width = min(K, nodes.constants.shape[1])
    constants = np.zeros((B, K))
    constants[:, :width] = nodes.constants[:, :width]
    mask = np.arange(K) < nodes.n_constants[:, None]
    parent, const_position = _cotangent_rows(kind, arg, program, node_index, kids,
                                             nodes.root, RB + chunk, K)
    used = arg[kind == KIND_VAR]
    # The interpreter's tables go to the device once; constants stay on the host in float64.
    tables = jax.device_put((operands, roots, pad(starts), pad(counts), pad(opcodes),
                             np.int32(len(starts)), parent, const_position))
    return Programs(*tables, constants, mask, np.int32(used.max() + 1 if len(used) else 0),
                    taps=jax.device_put(tapped), size=size, chunk=chunk)


def _cotangent_rows(kind, arg, program, node_index, kids, root, n_node_rows: int, K: int):
    """Where the reverse sweep finds each cotangent (``_CotangentRows`` describes the rows).

    Returns ``parent`` (n_node_rows,): the row holding each sorted operator node's
    cotangent (its slot in its parent's operand rows, or its program's root row), and
    ``const_position`` (B * K,): the row holding each constant's cotangent per point.
    Every node and constant has exactly one parent, so these are gathers, not scatter-adds.
    """
    B = len(root)
    rows = _CotangentRows(n_node_rows, B)
    # Row of every node (global postorder index) as an operand: parent slot or root row.
    slot_of = np.full(len(kind), rows.zero, np.int64)
    for k in range(2):
        child = kids[:, k]
        has = child >= 0
        slot_of[child[has]] = 2 * np.flatnonzero(has) + k
    slot_of[root] = rows.roots + np.arange(B)
    is_op = kind == KIND_OP
    parent = np.full(n_node_rows, rows.zero, np.int64)
    parent[node_index[is_op]] = slot_of[is_op]
    const_position = np.full(B * K, rows.zero, np.int64)
    is_const = kind == KIND_CONST
    const_position[program[is_const] * K + arg[is_const]] = slot_of[is_const]
    return parent.astype(np.int32), const_position.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _CotangentRows:
    """Layout of the reverse sweep's cotangent buffer: rows ``2 s + k`` hold the cotangent of
    operand k of sorted node s, then one row per program root, then a row that stays zero
    (the cotangent of padding)."""

    n_node_rows: int
    n_programs: int

    @property
    def roots(self) -> int:
        return 2 * self.n_node_rows

    @property
    def zero(self) -> int:
        return self.roots + self.n_programs

    @property
    def total(self) -> int:
        return self.zero + 1


def _pad_rows(a: np.ndarray, rows: int, fill) -> np.ndarray:
    out = np.full((rows, *a.shape[1:]), fill, a.dtype)
    out[: len(a)] = a
    return out


def _chunks(height: np.ndarray, opcode: np.ndarray, chunk: int):
    """Chunk starts, counts and opcodes over sorted op nodes: one operator per chunk."""
    n = len(height)
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    boundary = np.r_[True, (np.diff(height) != 0) | (np.diff(opcode) != 0)]
    group_start = np.flatnonzero(boundary)
    group_end = np.r_[group_start[1:], n]
    per_group = -(-(group_end - group_start) // chunk)
    group = np.repeat(np.arange(len(group_start)), per_group)
    within = np.arange(len(group)) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    starts = group_start[group] + within * chunk
    counts = np.minimum(chunk, group_end[group] - starts)
    return starts, counts, opcode[starts]


# ---------------------------------------------------------------------------- evaluating


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


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The runtime layout of one call: operand rows and scalars resolved for every node."""

    p: Programs
    consts_flat: jax.Array
    n_x_rows: int
    sink: int             # the last row: never written by a node that is read
    rows: jax.Array       # (RB + C, 2) buffer row of each operand (the sink for scalars)
    scalar: jax.Array     # (RB + C, 2) value of scalar operands
    is_scalar: jax.Array  # (RB + C, 2)

    @staticmethod
    def make(p: Programs, consts, x_rows, data_index, n_dims) -> _Frame:
        n_x_rows = x_rows.shape[0]
        sink = n_x_rows + p.n_node_rows - 1
        consts_flat = consts.reshape(-1)
        rows = p.operands.rows(data_index, n_dims, n_x_rows, sink)
        return _Frame(p, consts_flat, n_x_rows, sink, rows, *p.operands.scalars(consts_flat))

    def root_values(self, buf, data_index, n_dims):
        return self.values(self.p.roots, buf, data_index, n_dims)

    def values(self, operands: Operands, buf, data_index, n_dims):
        """Values (..., N) of ``operands`` in the filled buffer, and their buffer rows."""
        rows = operands.rows(data_index, n_dims, self.n_x_rows, self.sink)
        scalar, is_scalar = operands.scalars(self.consts_flat)
        return jnp.where(is_scalar[..., None], scalar[..., None], buf[rows]), rows

    def chunk(self, j):
        """Chunk j: its operands (rows, scalars, mask), first output row and node slice."""
        start = self.p.chunk_start[j]
        take = lambda a: lax.dynamic_slice_in_dim(a, start, self.p.chunk)
        return (take(self.rows), take(self.scalar), take(self.is_scalar)), \
            self.n_x_rows + start, start


def _forward_buffer(frame: _Frame, x_rows):
    p = frame.p
    buf = jnp.concatenate([x_rows, jnp.zeros((p.n_node_rows, x_rows.shape[1]), x_rows.dtype)])

    def step(j, buf):
        # A partial chunk also writes rows past its count. Those rows belong to nodes later
        # in the sorted order, whose own chunks overwrite them before any parent reads them.
        operands, row0, _ = frame.chunk(j)
        out = lax.switch(p.chunk_opcode[j], _FORWARD, buf, operands)
        return lax.dynamic_update_slice_in_dim(buf, out, row0, 0)

    return lax.fori_loop(0, p.n_chunks, step, buf)


def pairwise_sum(x, axis: int = -1):
    """Sum along ``axis`` in a fixed pairwise order: pad to a power of two, add halves.

    Unlike ``jnp.sum``, whose order XLA picks from the whole array's shape, the result for
    one row does not depend on how many rows are summed alongside it, and padding with zeros
    to any larger power of two gives the same bits. This is what makes a candidate's loss and
    gradient identical whether it is evaluated alone or in a batch.
    """
    x = jnp.moveaxis(x, axis, -1)
    size = 1 << max(0, (x.shape[-1] - 1).bit_length())
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


# Points are processed in blocks whose value buffers fit this many bytes. Large temporary
# buffers are fresh memory on every call (on CPU, glibc maps allocations above 32 MB anew and
# pays a page fault per page), so a batch whose buffer would exceed the budget runs as a few
# smaller blocks that reuse one allocation and stay closer to the caches.
BLOCK_BYTES = 24 << 20


def _block_points(p: Programs, x_rows, buffers: int) -> int:
    """Points per block when ``buffers`` value buffers are live (see ``_block_points_for_rows``)."""
    rows = (x_rows.shape[0] + p.n_node_rows) * buffers
    return _block_points_for_rows(rows, x_rows.dtype.itemsize, x_rows.shape[1])


def _blocks(a, size: int):
    """(R, N) -> (n_blocks, R, size), the last block zero-padded."""
    n_blocks = -(-a.shape[1] // size)
    a = jnp.pad(a, ((0, 0), (0, size * n_blocks - a.shape[1])))
    return jnp.moveaxis(a.reshape(a.shape[0], n_blocks, size), 1, 0)


def _unblock(a, n_points: int):
    """(n_blocks, R, Nb) -> (R, N)."""
    return jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1)[:, :n_points]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _evaluate(p: Programs, consts, x_rows, data_index, n_dims):
    frame = _Frame.make(p, consts, x_rows, data_index, n_dims)
    size = _block_points(p, x_rows, buffers=1)

    def block(xb):
        return frame.root_values(_forward_buffer(frame, xb), data_index, n_dims)[0]

    if size == x_rows.shape[1]:
        return block(x_rows)
    return _unblock(lax.map(block, _blocks(x_rows, size)), x_rows.shape[1])


@jax.jit
def _evaluate_taps_jit(p: Programs, X, data_index):
    n_sets, n_points, n_dims = X.shape
    x_rows = jnp.swapaxes(X, 1, 2).reshape(n_sets * n_dims, n_points)
    frame = _Frame.make(p, p.constants.astype(X.dtype), x_rows, data_index, n_dims)
    size = _block_points(p, x_rows, buffers=1)
    taps = jax.tree.map(lambda a: a.reshape(-1), p.taps)  # rows, as the roots are

    def block(xb):
        return frame.values(taps, _forward_buffer(frame, xb), data_index, n_dims)[0]

    if size == x_rows.shape[1]:
        values = block(x_rows)
    else:
        values = _unblock(lax.map(block, _blocks(x_rows, size)), n_points)
    return values.reshape(*p.taps.node.shape, n_points)


def evaluate_taps(programs: Programs, X, dataset_index) -> jax.Array:
    """Values of the nodes ``programs`` was assembled with as ``taps``: ``taps.shape + (N,)``,
    program i on ``X[dataset_index[i]]`` (X: (P, N, D), its dtype the compute dtype). One
    forward pass, as ``evaluate_programs``; not differentiable."""
    if programs.taps is None:
        raise ValueError("these programs were assembled without taps")
    return _evaluate_taps_jit(programs, jnp.asarray(X), jnp.asarray(dataset_index, jnp.int32))


def _evaluate_fwd(p, consts, x_rows, data_index, n_dims):
    if _block_points(p, x_rows, buffers=2) < x_rows.shape[1]:  # recompute blocks in backward
        return _evaluate(p, consts, x_rows, data_index, n_dims), (p, consts, x_rows,
                                                                  data_index, None)
    frame = _Frame.make(p, consts, x_rows, data_index, n_dims)
    buf = _forward_buffer(frame, x_rows)
    values = frame.root_values(buf, data_index, n_dims)[0]
    return values, (p, consts, x_rows, data_index, buf)


def _scatter_cotangent(adj, g_consts, const_slots, rows, g):
    """Adds operand cotangents g (..., N): rows get g, constant slots get sum over points."""
    adj = adj.at[rows].add(g)  # scalar operands land in the sink row, which nobody reads
    slot = jnp.where(const_slots >= 0, const_slots, g_consts.shape[0])
    return adj, g_consts.at[slot].add(pairwise_sum(g), mode="drop")


def _reverse_sweep(frame: _Frame, buf, g, data_index, n_dims):
    """Cotangents of the constants (flat) and of the X rows for one block of points."""
    p = frame.p
    _, root_rows = frame.root_values(buf, data_index, n_dims)
    carry = _scatter_cotangent(jnp.zeros_like(buf), jnp.zeros_like(frame.consts_flat),
                               p.roots.const, root_rows, g)

    def step(k, carry):
        adj, g_consts = carry
        j = p.n_chunks - 1 - k
        operands, row0, start = frame.chunk(j)
        valid = (jnp.arange(p.chunk) < p.chunk_count[j])[:, None]
        g_out = jnp.where(valid, lax.dynamic_slice_in_dim(adj, row0, p.chunk), 0)
        out = lax.dynamic_slice_in_dim(buf, row0, p.chunk)
        g_operands = lax.switch(p.chunk_opcode[j], _BACKWARD, buf, operands, out, g_out)
        const_slots = lax.dynamic_slice_in_dim(p.operands.const, start, p.chunk)
        return _scatter_cotangent(adj, g_consts, const_slots, operands[0], g_operands)

    adj, g_consts = lax.fori_loop(0, p.n_chunks, step, carry)
    return g_consts, adj[: frame.n_x_rows]


def _evaluate_bwd(n_dims, residuals, g):
    p, consts, x_rows, data_index, buf = residuals
    frame = _Frame.make(p, consts, x_rows, data_index, n_dims)
    if buf is not None:
        g_consts, g_x = _reverse_sweep(frame, buf, g, data_index, n_dims)
    else:
        size = _block_points(p, x_rows, buffers=2)

        def block(blocks):
            xb, gb = blocks
            return _reverse_sweep(frame, _forward_buffer(frame, xb), gb, data_index, n_dims)

        g_consts, g_x = lax.map(block, (_blocks(x_rows, size), _blocks(g, size)))
        g_consts = pairwise_sum(g_consts, axis=0)  # the top of the same tree over points
        g_x = _unblock(g_x, x_rows.shape[1])
    zeros = lambda a: (jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.floating)
                       else np.zeros(a.shape, jax.dtypes.float0))
    return (jax.tree.map(zeros, p), g_consts.reshape(consts.shape), g_x, zeros(data_index))


_evaluate.defvjp(_evaluate_fwd, _evaluate_bwd)


@jax.jit
def _evaluate_jit(p: Programs, consts, X, data_index):
    n_sets, n_points, n_dims = X.shape
    x_rows = jnp.swapaxes(X, 1, 2).reshape(n_sets * n_dims, n_points)
    return _evaluate(p, consts, x_rows, data_index, n_dims)


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
    B = programs.n_programs
    if X.ndim == 2:
        X = X[None]
        if dataset_index is None:  # built with jnp: a numpy array here would become a
            dataset_index = jnp.zeros(B, jnp.int32)  # captured constant under tracing
    if X.ndim != 3:
        raise ValueError(f"X must be (N, D), (B, N, D) or (P, N, D), got shape {X.shape}")
    if dataset_index is None:
        if X.shape[0] != B:
            raise ValueError(f"X holds {X.shape[0]} datasets for {B} programs; "
                             "pass dataset_index to map programs to datasets")
        dataset_index = jnp.arange(B, dtype=jnp.int32)
    dataset_index = jnp.asarray(dataset_index, jnp.int32)
    if dataset_index.shape != (B,):
        raise ValueError(f"dataset_index must have shape ({B},), got {dataset_index.shape}")
    n_variables = programs.n_variables
    if not isinstance(n_variables, jax.core.Tracer) and int(n_variables) > X.shape[2]:
        raise ValueError(f"programs use x_{int(n_variables) - 1} but X has {X.shape[2]} columns")
    consts = programs.constants if consts is None else consts
    consts = jnp.asarray(consts, X.dtype)
    if consts.shape != programs.constants.shape:
        raise ValueError(f"consts must have shape {programs.constants.shape}, got {consts.shape}")
    return _evaluate_jit(programs, consts, X, dataset_index)


# ------------------------------------------------------------- fused loss and gradient


def loss_and_constant_grads(programs: Programs, consts, X, dataset_index, point_loss, targets):
    """Per-program losses and their gradients with respect to the constants, fused.

    The loss of program i is ``sum_n loss_n`` where ``loss_n, dloss_n = point_loss(pred, *t)``
    is computed per point from the prediction ``pred`` (B, Nb) and ``targets`` (arrays of
    shape (B, N), split into the same point blocks). Compared with ``jax.vjp`` of
    ``evaluate_programs`` this is what refinement needs and nothing more: each block of
    points is evaluated once, its reverse sweep follows at once (no recomputation), every
    cotangent is read from its single parent with a gather (no scatter-add), and no
    gradient with respect to X is formed. Sums run in ``pairwise_sum`` order over points, so
    a program's results do not depend on the batch it is in.

    Args:
      programs: from ``compile_programs``; X: (P, N, D); dataset_index: (B,) ints;
      consts: (B, K).
    Returns:
      (B,) losses and (B, K) gradients.
    """
    n_sets, n_points, n_dims = X.shape
    x_rows = jnp.swapaxes(X, 1, 2).reshape(n_sets * n_dims, n_points)
    frame = _Frame.make(programs, consts, x_rows, dataset_index, n_dims)
    rows = _CotangentRows(programs.n_node_rows, programs.n_programs)
    per_point_rows = x_rows.shape[0] + programs.n_node_rows + rows.total
    size = _block_points_for_rows(per_point_rows, x_rows.dtype.itemsize, n_points)

    def block(args):
        xb, *tb = args
        buf = _forward_buffer(frame, xb)
        prediction = frame.root_values(buf, dataset_index, n_dims)[0]
        losses, g = point_loss(prediction, *tb)
        cot = _reverse_gather_sweep(frame, rows, buf, g)
        g_consts = pairwise_sum(cot[programs.const_position])
        return pairwise_sum(losses), g_consts

    if size == n_points:
        losses, g_consts = block((x_rows, *targets))
    else:
        blocked = [_blocks(a, size) for a in (x_rows, *targets)]
        losses, g_consts = lax.map(block, blocked)
        losses, g_consts = pairwise_sum(losses, axis=0), pairwise_sum(g_consts, axis=0)
    return losses, g_consts.reshape(consts.shape)


def _reverse_gather_sweep(frame: _Frame, rows: _CotangentRows, buf, g):
    """Cotangent buffer (rows.total, Nb) of every operand, given the roots' cotangent g."""
    p = frame.p
    n_points = buf.shape[1]
    cot = jnp.concatenate([jnp.zeros((rows.roots, n_points), buf.dtype), g,
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


def _block_points_for_rows(rows: int, itemsize: int, n_points: int) -> int:
    """Points per block for buffers of ``rows`` rows in all: all of them if they fit
    BLOCK_BYTES, else the largest power of two that fits. Power-of-two blocks are aligned
    subtrees of ``pairwise_sum``'s order over the points, so blocked sums keep the same bits."""
    per_point = rows * itemsize
    if per_point * n_points <= BLOCK_BYTES:
        return n_points
    fit = max(1, BLOCK_BYTES // per_point)
    return 1 << (fit.bit_length() - 1)
