"""Compiling expression trees into tables for the batched interpreter (host-side numpy work).

``compile_programs(exprs)`` flattens B trees into one ``Programs`` batch; the search builds
the same ``Nodes`` from its array-form populations and calls ``assemble`` directly.
``jaxsr.expr.interpreter`` evaluates the batch.

Layout of the value buffer the tables index:

* it starts with the rows of X (one row per dataset and variable), so a variable operand is
  just a row index and variables are never copied;
* float constants and fixed numbers (integers, ``pi``) are *scalar operands*, read from the
  constants array at the point of use, so they take no rows either;
* then come the operator rows: every operator node of every program, sorted here by
  (height, opcode), where height is the longest path down to a leaf. All nodes of one height
  depend only on lower heights, and within a height the nodes of one operator are contiguous.

The sorted operator rows are cut into fixed-size *chunks* of ``chunk`` rows, each holding a
single operator, so any new mix of skeletons with the same padded size has tables of the
same shapes and reuses the compiled interpreter.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
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
        return ProgramSize.of_nodes(Nodes.of_exprs(exprs), multiple)

    @staticmethod
    def of_nodes(nodes: Nodes, multiple: int = 4) -> ProgramSize:
        """The smallest size holding the programs of ``nodes``, each field rounded up to
        ``multiple``."""
        up = lambda n: max(multiple, -(-int(n) // multiple) * multiple)
        n_ops = np.count_nonzero(nodes.kind == KIND_OP)
        return ProgramSize(ops=up(np.ceil(n_ops / max(nodes.n_programs, 1))),
                           constants=up(nodes.n_constants.max(initial=0)),
                           depth=up(nodes.height.max(initial=0)))

    def check(self, nodes: Nodes) -> None:
        """Raises ValueError where the programs of ``nodes`` do not fit."""
        B = nodes.n_programs
        total_ops = np.count_nonzero(nodes.kind == KIND_OP)
        if total_ops > B * self.ops:
            raise ValueError(f"{B} expressions hold {total_ops} operator nodes; "
                             f"{self} holds {B * self.ops}")
        height = np.zeros(B, np.int64)
        np.maximum.at(height, nodes.program, nodes.height)
        bad = np.flatnonzero((nodes.n_constants > self.constants) | (height > self.depth))
        if len(bad):
            i = bad[0]
            raise ValueError(f"expression {i} ({nodes.n_constants[i]} constants, depth "
                             f"{height[i]}) does not fit {self}")


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


@register_pytree_node_class
@dataclasses.dataclass
class Programs:
    """B expressions compiled for the batched interpreter (see ``jaxsr.expr.interpreter``)."""

    operands: Operands        # (RB + chunk, 2): both operands of each sorted operator node
    roots: Operands           # (B,): each program's value
    chunk_start: np.ndarray   # (n_chunk_slots,) first operator node of each chunk
    chunk_count: np.ndarray   # (n_chunk_slots,) nodes in the chunk (<= chunk)
    chunk_opcode: np.ndarray  # (n_chunk_slots,) index into operators.FUNCTIONS
    n_chunks: np.ndarray      # () chunks in use
    parent: np.ndarray | None  # (RB + chunk,) cotangent row of each node (CotangentRows);
    const_position: np.ndarray | None  # (B * K,) that of each constant slot (None: no sweep)
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


@dataclasses.dataclass(frozen=True)
class _Template:
    """One expression's nodes in postorder, as arrays (cached per expression)."""

    kind: np.ndarray      # KIND_*
    arg: np.ndarray       # variable index / constant ordinal / opcode
    fixed: np.ndarray     # value of fixed leaves
    children: np.ndarray  # (n, 2) local child indices, -1 where absent
    height: np.ndarray
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
    return _Template(kind, arg, fixed, children, height, n_consts, expr.constants())


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
    nodes = Nodes.of_exprs(exprs)
    size = size or ProgramSize.of_nodes(nodes)
    size.check(nodes)
    return assemble(nodes, size, chunk)


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

    The nodes of each program are contiguous, programs in order (``take`` relies on it).
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

    @property
    def n_programs(self) -> int:
        return len(self.root)

    @staticmethod
    def of_exprs(exprs: Sequence[Expr]) -> Nodes:
        return Nodes.concatenate([_template(e) for e in exprs])

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

    def take(self, programs) -> Nodes:
        """The nodes of ``programs`` (indices, in that order). An index of -1 gives a filler
        program, the variable x_0 alone, for padding a batch to a fixed size."""
        programs = np.asarray(programs, np.int64)
        count = np.bincount(self.program, minlength=self.n_programs)
        first = np.cumsum(count) - count
        filler = programs < 0
        source_first = np.where(filler, 0, first[programs])
        out_count = np.where(filler, 1, count[programs])
        out_first = np.cumsum(out_count) - out_count
        program = np.repeat(np.arange(len(programs), dtype=np.int32), out_count)
        # Each output node's source node, and the shift of its program's node indices.
        source = source_first[program] + np.arange(len(program)) - out_first[program]
        fill = filler[program]
        shift = (out_first - source_first)[program]
        kids = self.children[source]
        return Nodes(
            kind=np.where(fill, KIND_VAR, self.kind[source]).astype(self.kind.dtype),
            arg=np.where(fill, 0, self.arg[source]).astype(self.arg.dtype),
            fixed=np.where(fill, 0.0, self.fixed[source]),
            children=np.where(fill[:, None] | (kids < 0), -1, kids + shift[:, None]),
            height=np.where(fill, 0, self.height[source]).astype(self.height.dtype),
            program=program,
            root=np.where(filler, out_first, self.root[programs] - source_first + out_first),
            constants=np.where(filler[:, None], 0.0, self.constants[programs]),
            n_constants=np.where(filler, 0, self.n_constants[programs]))


def assemble(nodes: Nodes, size: ProgramSize, chunk: int | None = None,
             taps: np.ndarray | None = None, gradients: bool = True) -> Programs:
    """The interpreter's tables for ``nodes`` (host-side numpy work, no per-program loop).

    The caller guarantees that the programs fit ``size`` (``ProgramSize.check``). ``taps``:
    global node indices (any shape, -1 for "the number 0") whose values ``evaluate_taps``
    returns besides the roots, read from the same forward pass. ``gradients=False`` leaves
    out the reverse sweep's tables (for callers that only evaluate, such as the search's
    scoring).
    """
    B, K = len(nodes.root), size.constants
    chunk = chunk or default_chunk(B * size.ops)
    kind, arg, fixed, height, program = (nodes.kind, nodes.arg, nodes.fixed, nodes.height,
                                         nodes.program)

    # Operator nodes sorted by (height, opcode): chunks are homogeneous and in dependency order.
    op_nodes = np.flatnonzero(kind == KIND_OP)
    order = op_nodes[_sort_by_height_and_opcode(height[op_nodes], arg[op_nodes])]
    node_index = np.full(len(kind), -1, np.int32)
    node_index[order] = np.arange(len(order))

    # Every node described as an operand; a missing child (unary) is the scalar 0.
    is_var, is_const = kind == KIND_VAR, kind == KIND_CONST
    as_operand = Operands(
        node=_with_absent(node_index, -1),
        var=_with_absent(arg, -1, is_var, np.int32),
        const=_with_absent(program * K + arg, -1, is_const, np.int32),
        value=_with_absent(fixed, 0.0, kind == KIND_FIXED),
        program=_with_absent(program, 0),
    )
    RB = B * size.ops
    # Operand rows of the sorted nodes, gathered once per field, then padded to the
    # capacity with "absent" (the last entry of as_operand, the scalar 0).
    kids = nodes.children[order]
    operands = jax.tree.map(lambda a: _gather_padded(a, kids, RB + chunk), as_operand)
    roots = jax.tree.map(lambda a: a[nodes.root], as_operand)
    tapped = None if taps is None else jax.tree.map(lambda a: a[taps], as_operand)

    starts, counts, opcodes = _chunks(height[order], arg[order], chunk)
    n_slots = -(-RB // chunk) + min(RB, size.depth * len(operators.FUNCTIONS))
    pad = lambda a: np.pad(a, (0, n_slots - len(a))).astype(np.int32)

    width = min(K, nodes.constants.shape[1])
    constants = np.zeros((B, K))
    constants[:, :width] = nodes.constants[:, :width]
    mask = np.arange(K) < nodes.n_constants[:, None]
    parent, const_position = (_cotangent_rows(kind, arg, program, node_index, kids,
                                              nodes.root, RB + chunk, K)
                              if gradients else (None, None))
    used = arg[is_var]
    # The interpreter's tables go to the device once; constants stay on the host in float64.
    tables = jax.device_put((operands, roots, pad(starts), pad(counts), pad(opcodes),
                             np.int32(len(starts)), parent, const_position))
    return Programs(*tables, constants, mask, np.int32(used.max() + 1 if len(used) else 0),
                    taps=jax.device_put(tapped), size=size, chunk=chunk)


def _cotangent_rows(kind, arg, program, node_index, kids, root, n_node_rows: int, K: int):
    """Where the reverse sweep finds each cotangent (``CotangentRows`` describes the rows).

    Returns ``parent`` (n_node_rows,): the row holding each sorted operator node's
    cotangent (its slot in its parent's operand rows, or its program's root row), and
    ``const_position`` (B * K,): the row holding each constant's cotangent per point.
    Every node and constant has exactly one parent, so these are gathers, not scatter-adds.
    """
    B = len(root)
    rows = CotangentRows(n_node_rows, B)
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
class CotangentRows:
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


def _sort_by_height_and_opcode(height: np.ndarray, opcode: np.ndarray) -> np.ndarray:
    """The stable order of nodes by (height, opcode): one radix sort of a 16-bit key where
    it fits (a few times faster than ``np.lexsort`` on the search's batches)."""
    n_opcodes = len(operators.FUNCTIONS)
    if len(height) and int(height.max()) < np.iinfo(np.int16).max // n_opcodes:
        key = height.astype(np.int16) * np.int16(n_opcodes) + opcode.astype(np.int16)
        return np.argsort(key, kind="stable")
    return np.lexsort((opcode, height))


def _with_absent(values: np.ndarray, absent, keep: np.ndarray | None = None,
                 dtype=None) -> np.ndarray:
    """``values`` (where ``keep``, else ``absent``) as ``dtype``, with ``absent`` appended:
    one allocation and one pass per field (the search builds these tables every
    generation)."""
    n = len(values)
    out = np.empty(n + 1, dtype or values.dtype)
    if keep is None:
        out[:n] = values
    else:
        out[:n] = absent
        np.copyto(out[:n], values, casting="unsafe", where=keep)
    out[n] = absent
    return out


def _gather_padded(a: np.ndarray, index: np.ndarray, rows: int) -> np.ndarray:
    """``a[index]`` padded to ``rows`` rows with ``a[-1]``, gathered straight into place."""
    out = np.empty((rows, *index.shape[1:]), a.dtype)
    np.take(a, index, out=out[: len(index)])
    out[len(index):] = a[-1]
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
