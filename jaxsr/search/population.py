"""The array form of a population: formulas as rows of fixed-length prefix arrays.

A population of P formulas is three ``(P, L)`` arrays in prefix order (the order of the
model's tokens) plus a length per row:

* ``kind``: ``compiler.KIND_*`` of each node, ``PAD`` past the row's length;
* ``arg``: a variable's index or an operator's opcode (``operators.FUNCTIONS`` order);
* ``value``: a float constant's value, or a fixed leaf's (integers, ``pi``).

In prefix order a subtree is a contiguous slice, so every variation (crossover, subtree
mutation, hoist, inserting or removing a unary) is "replace slice [i, e) of a row by a slice
of another row": one vectorised gather for the whole population (``variation.splice``), with
no tree objects on the host. ``Structure`` gives every node's subtree end and height in
``L`` vectorised steps, and ``to_nodes`` hands the rows to the batched interpreter
(``compiler.assemble``) directly.

``Expr`` trees appear only at the edges: seeds come in as trees, and the few formulas that
go through L-BFGS or into the final front go out as trees.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from jaxsr.expr import operators
from jaxsr.expr.compiler import (
    KIND_CONST,
    KIND_FIXED,
    KIND_OP,
    KIND_VAR,
    Nodes,
    ProgramSize,
)
from jaxsr.expr.tree import Expr
from jaxsr.shapes import next_power_of_two

PAD = -1
# Arity of every opcode (index: operators.FUNCTIONS order).
OP_ARITY = np.array([op.arity for op in operators.FUNCTIONS], np.int8)
_FIXED_BY_VALUE = {op.value: op.name for op in operators.OPERATORS if op.arity == 0}


@dataclasses.dataclass
class Genomes:
    """Formulas in array form (see the module docstring); row i is formula i."""

    kind: np.ndarray    # (P, L) int8
    arg: np.ndarray     # (P, L) int32
    value: np.ndarray   # (P, L) float64
    length: np.ndarray  # (P,) int32

    @property
    def size(self) -> int:
        return len(self.length)

    @property
    def max_length(self) -> int:
        return self.kind.shape[1]

    def take(self, rows) -> Genomes:
        """Rows ``rows`` (indices, or a slice for views)."""
        rows = rows if isinstance(rows, slice) else np.asarray(rows)
        return Genomes(self.kind[rows], self.arg[rows], self.value[rows], self.length[rows])

    @staticmethod
    def concatenate(parts: Sequence[Genomes]) -> Genomes:
        return Genomes(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("kind", "arg", "value", "length")))

    @staticmethod
    def filler(n: int, max_length: int) -> Genomes:
        """n rows holding the formula ``x_0`` (no operators), to pad a call."""
        out = Genomes.empty(n, max_length)
        out.kind[:, 0], out.length[:] = KIND_VAR, 1
        return out

    @staticmethod
    def empty(n: int, max_length: int) -> Genomes:
        return Genomes(np.full((n, max_length), PAD, np.int8),
                       np.zeros((n, max_length), np.int32), np.zeros((n, max_length)),
                       np.zeros(n, np.int32))

    def same_rows(self, other: Genomes) -> np.ndarray:
        """(P,) which rows are node for node equal to ``other``'s (constants included)."""
        valid = np.arange(self.max_length) < self.length[:, None]
        equal = (self.kind == other.kind) & (self.arg == other.arg) & (self.value == other.value)
        return (self.length == other.length) & np.all(equal | ~valid, axis=1)

    # ------------------------------------------------------------------ trees in and out

    @staticmethod
    def from_exprs(exprs: Sequence[Expr], max_length: int) -> tuple[Genomes, np.ndarray]:
        """Rows for the trees that fit ``max_length`` nodes; returns them and the indices
        of the trees used."""
        kept = [i for i, e in enumerate(exprs) if e.complexity() <= max_length]
        out = Genomes.empty(len(kept), max_length)
        for row, i in enumerate(kept):
            for t, node in enumerate(exprs[i].preorder()):
                out.kind[row, t], out.arg[row, t], out.value[row, t] = _encode_node(node)
            out.length[row] = t + 1
        return out, np.asarray(kept, int)

    def to_expr(self, row: int) -> Expr:
        """Row ``row`` as a tree."""
        kind, arg, value = self.kind[row], self.arg[row], self.value[row]
        position = 0

        def build() -> Expr:
            nonlocal position
            t = position
            position += 1
            if kind[t] == KIND_VAR:
                return Expr.var(int(arg[t]))
            if kind[t] == KIND_CONST:
                return Expr.const(float(value[t]))
            if kind[t] == KIND_FIXED:
                return Expr(_FIXED_BY_VALUE[float(value[t])])
            op = operators.FUNCTIONS[arg[t]]
            return Expr(op.name, tuple(build() for _ in range(op.arity)))

        return build()

    # ------------------------------------------------------------------ keys

    def skeleton_keys(self) -> np.ndarray:
        """(P,) an integer hash of each row's skeleton (structure with constants blanked):
        equal skeletons give equal keys, so duplicates can be dropped with ``np.unique``."""
        code = self.kind.astype(np.int64) * 1024 + self.arg + 1
        # Fixed leaves are few: their codes are computed where they are.
        fixed = np.nonzero(self.kind == KIND_FIXED)
        code[fixed] = KIND_FIXED * 1024 + _fixed_code(self.value[fixed]) + 1
        code[self.kind == PAD] = 0
        # Sums wrap around modulo 2**64 in any order: a product with the weights is the sum.
        return (code @ _hash_weights(self.max_length)) ^ self.length.astype(np.int64)


def _fixed_code(value: np.ndarray) -> np.ndarray:
    """A small integer per fixed leaf value (integers map to themselves, named constants
    to codes above them)."""
    return np.where(value == np.round(value), value + 16, 64 + np.round(value * 8)).astype(
        np.int64)


@functools.cache
def _hash_weights(n: int) -> np.ndarray:
    weights = np.random.default_rng(0x5EED).integers(1, 1 << 40, size=n, dtype=np.int64) | 1
    weights.setflags(write=False)  # cached: shared by every call
    return weights


def _encode_node(node: Expr) -> tuple[int, int, float]:
    if node.is_constant:
        return KIND_CONST, 0, node.value
    if node.variable is not None:
        return KIND_VAR, node.variable, 0.0
    op = node.operator
    if op.arity == 0:
        return KIND_FIXED, 0, op.value
    return KIND_OP, operators.OPCODE[node.token], 0.0


def arity(genomes: Genomes) -> np.ndarray:
    """(P, L) operands of every node (0 for leaves and padding)."""
    return np.where(genomes.kind == KIND_OP, OP_ARITY[genomes.arg], 0)


@dataclasses.dataclass(frozen=True)
class Structure:
    """Where every node's subtree ends and how tall it is, for all rows at once.

    ``end[p, t]`` is one past the last node of the subtree rooted at t (so that subtree is
    the slice ``[t, end)``), and ``height[p, t]`` the longest path down to a leaf. Both come
    from one right-to-left sweep of L vectorised steps: a node's first operand starts right
    after it and its second operand right after the first one ends.
    """

    end: np.ndarray     # (P, L) int16
    height: np.ndarray  # (P, L) int16
    arity: np.ndarray   # (P, L) int8

    @staticmethod
    def of(genomes: Genomes) -> Structure:
        P, L = genomes.kind.shape
        ar = arity(genomes)
        # Position-major (L, P) arrays: each step reads and writes contiguous rows. Small
        # integers and in-place steps: the sweep is L rounds of a dozen numpy calls, whose
        # cost is mostly memory traffic and temporaries.
        arity_at = np.ascontiguousarray(ar.T)
        leaf, binary = arity_at == 0, arity_at == 2
        end = np.empty((L + 1, P), np.int16)
        end[L] = L
        height = np.zeros((L + 1, P), np.int16)
        flat_end, flat_height = end.reshape(-1), height.reshape(-1)
        columns = np.arange(P, dtype=np.int32)
        at_second = np.empty(P, np.int32)  # where operand 2 starts (ends are <= L)
        for t in range(L - 1, -1, -1):
            first_end = end[t + 1]
            np.multiply(first_end, P, out=at_second, dtype=np.int32)
            at_second += columns
            here = np.where(binary[t], flat_end.take(at_second), first_end)
            here[leaf[t]] = t + 1
            end[t] = here
            tallest = np.maximum(height[t + 1],
                                 np.where(binary[t], flat_height.take(at_second), 0))
            tallest += 1
            tallest[leaf[t]] = 0
            height[t] = tallest
        return Structure(np.ascontiguousarray(end[:L].T), np.ascontiguousarray(height[:L].T),
                         ar)

    @staticmethod
    def given(genomes: Genomes, structure: Structure | None) -> Structure:
        """``structure`` where the caller keeps it (variation, scoring), else computed."""
        return Structure.of(genomes) if structure is None else structure

    def take(self, rows) -> Structure:
        return Structure(self.end[rows], self.height[rows], self.arity[rows])

    @staticmethod
    def concatenate(parts: Sequence[Structure]) -> Structure:
        return Structure(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("end", "height", "arity")))

    def replace_rows(self, rows: np.ndarray, new: Structure) -> Structure:
        """A copy with ``rows`` replaced by the rows of ``new``."""
        out = Structure(self.end.copy(), self.height.copy(), self.arity.copy())
        for field in ("end", "height", "arity"):
            getattr(out, field)[rows] = getattr(new, field)
        return out


def scoring_size(max_length: int) -> ProgramSize:
    """The capacities a search scores with: constants and depth at the maximum length, and
    half of it (a binary tree's share of operators) as operator nodes per row on average,
    each a power of two. The search splits a batch whose rows hold more operators on average
    over more calls (``engine._score_calls``) instead of compiling a larger size: in long
    searches the mean crosses half the maximum length, and the larger size cost a
    recompilation (seconds on a CPU) and a buffer twice as large (measured at 4,096 rows,
    generations 281-400 of a search: 36k-62k evaluations/s, against 67k-92k with the
    spill)."""
    up = lambda n: next_power_of_two(int(n), minimum=4)
    return ProgramSize(ops=up(max_length // 2), constants=up(max_length),
                       depth=up(max_length))


def operator_counts(structure: Structure) -> np.ndarray:
    """(P,) operator nodes of each row."""
    return np.count_nonzero(structure.arity, axis=1)


def program_size(genomes: Genomes) -> ProgramSize:
    """Capacities holding the rows in one call: ``scoring_size``, with more operator nodes
    per row (a power of two) where the rows hold more on average."""
    size = scoring_size(genomes.max_length)
    valid = np.arange(genomes.max_length) < genomes.length[:, None]
    mean = np.ceil(((genomes.kind == KIND_OP) & valid).sum(axis=1).mean())
    return dataclasses.replace(size, ops=max(size.ops, next_power_of_two(int(mean), minimum=4)))


def to_nodes(genomes: Genomes, structure: Structure) -> Nodes:
    """The rows as the interpreter's flat node arrays (``compiler.Nodes``)."""
    P, L = genomes.kind.shape
    slots = np.flatnonzero(np.arange(L) < genomes.length[:, None])  # the nodes, row-major
    flat = lambda a: a.reshape(-1)[slots]
    # Everything below works on the picked nodes (not the padded (P, L) arrays), in 32 bits.
    program = np.repeat(np.arange(P, dtype=np.int32), genomes.length)
    offset = (np.cumsum(genomes.length) - genomes.length).astype(np.int32)  # each root
    node = np.arange(len(slots), dtype=np.int32)
    kind, arity, value = flat(genomes.kind), flat(structure.arity), flat(genomes.value)
    # A node's first operand follows it; its second starts where the first one ends (a
    # binary node is never a row's last slot, so slot + 1 stays in its row).
    first_end = structure.end.reshape(-1)[np.minimum(slots + 1, P * L - 1)]
    children = np.stack([np.where(arity >= 1, node + 1, -1),
                         np.where(arity == 2, offset[program] + first_end, -1)], -1)
    # Constants are numbered in prefix order within their program.
    is_const = kind == KIND_CONST
    before = np.cumsum(is_const, dtype=np.int32) - is_const       # constants before each node
    ordinal = before - before[offset[program]]
    n_constants = np.bincount(program[is_const], minlength=P)
    constants = np.zeros((P, max(1, n_constants.max(initial=0))))
    constants[program[is_const], ordinal[is_const]] = value[is_const]
    return Nodes(
        kind=kind, arg=np.where(is_const, ordinal, flat(genomes.arg)).astype(np.int32),
        fixed=np.where(kind == KIND_FIXED, value, 0.0), children=children,
        height=flat(structure.height), program=program, root=offset, constants=constants,
        n_constants=n_constants)


# ---------------------------------------------------------------------------- additive terms

# Opcodes whose operands a formula's terms are split at (a - b is the terms a and b).
_SUMS = np.array([operators.OPCODE["add"], operators.OPCODE["sub"]])


@dataclasses.dataclass(frozen=True)
class Terms:
    """Each row's additive terms as slices ``[start, end)``, in prefix order; ``count`` per
    row, unused slots hold empty slices at ``L``.

    A row is split at its root while that is ``add`` or ``sub``, then at the first term
    rooted at one, until it has ``max_terms`` terms. Outside the slices there are only the
    dissolved ``add``/``sub`` nodes, so the row's constants are its terms' constants in
    order.
    """

    start: np.ndarray  # (P, K)
    end: np.ndarray    # (P, K)
    count: np.ndarray  # (P,)

    @property
    def used(self) -> np.ndarray:
        """(P, K) which slots hold a term."""
        return np.arange(self.start.shape[1]) < self.count[:, None]

    @staticmethod
    def of(genomes: Genomes, structure: Structure, max_terms: int) -> Terms:
        P, L = genomes.kind.shape
        rows = np.arange(P)
        start = np.full((P, max_terms), L, np.int64)
        end = np.full((P, max_terms), L, np.int64)
        start[:, 0], end[:, 0] = 0, genomes.length
        count = np.ones(P, np.int64)
        # Nodes that are add or sub, flat: each round reads it at every term's root.
        flat_sum = ((genomes.kind == KIND_OP)
                    & ((genomes.arg == _SUMS[0]) | (genomes.arg == _SUMS[1]))).reshape(-1)
        flat_end = structure.end.reshape(-1)
        row_start = (rows * L)[:, None]
        for _ in range(max_terms - 1):
            is_sum = flat_sum[row_start + np.minimum(start, L - 1)] & (start < end)
            split = is_sum.any(axis=1) & (count < max_terms)
            j = np.argmax(is_sum, axis=1)
            r = start[rows, j]
            first_end = flat_end[rows * L + np.minimum(r + 1, L - 1)]
            old_end = end[rows, j]
            s = np.flatnonzero(split)
            start[s, j[s]], end[s, j[s]] = r[s] + 1, first_end[s]
            start[s, count[s]], end[s, count[s]] = first_end[s], old_end[s]
            count[s] += 1
        order = np.argsort(start, axis=1, kind="stable")
        return Terms(np.take_along_axis(start, order, 1), np.take_along_axis(end, order, 1),
                     count)

    def genomes(self, genomes: Genomes) -> Genomes:
        """The terms as rows of their own, ``(P * K)`` in row-major order; an unused slot is
        the constant 0 (which scaling ignores)."""
        P, L = genomes.kind.shape
        start, n = self.start.reshape(-1), (self.end - self.start).reshape(-1)
        source = np.repeat(np.arange(P), self.start.shape[1])[:, None]
        index = np.minimum(start[:, None] + np.arange(L), L - 1)
        valid = np.arange(L) < n[:, None]
        out = Genomes(np.where(valid, genomes.kind[source, index], PAD).astype(np.int8),
                      np.where(valid, genomes.arg[source, index], 0).astype(np.int32),
                      np.where(valid, genomes.value[source, index], 0.0), n.astype(np.int32))
        empty = n == 0
        out.kind[empty, 0], out.length[empty] = KIND_CONST, 1
        return out

    def take(self, rows) -> Terms:
        rows = np.asarray(rows)
        return Terms(self.start[rows], self.end[rows], self.count[rows])

    def exprs(self, genomes: Genomes, row: int) -> list[Expr]:
        """Row ``row``'s terms as trees."""
        one = self.take([row]).genomes(genomes.take([row]))
        return [one.to_expr(k) for k in range(int(self.count[row]))]


# ---------------------------------------------------------------------------- refinement form

_ADD, _MUL = operators.OPCODE["add"], operators.OPCODE["mul"]


@dataclasses.dataclass(frozen=True)
class FreeSum:
    """Rows rewritten as ``a + b_1 t_1 + ... + b_k t_k`` over their terms (``Terms``), with
    the intercept a and every weight b a constant of its own: the form whose constants
    L-BFGS refines together (the terms' own constants with the scaling).

    In prefix order a row reads ``add a (add (mul b_1 t_1) (... (mul b_k t_k)))``, so its
    constants are a, then b_1 and t_1's, b_2 and t_2's, ...; it is ``2 + 2k`` nodes longer
    than the original row (whose ``k - 1`` dissolved sums it drops, adding k - 1 of its own).
    ``source`` maps each node to its position in the original row (-1 for the added ones)
    and ``weight_at`` gives where each b_k stands (-1 for unused term slots).
    """

    genomes: Genomes
    source: np.ndarray     # (P, W)
    weight_at: np.ndarray  # (P, K)

    @staticmethod
    def of(genomes: Genomes, terms: Terms, intercept: np.ndarray,
           coefficients: np.ndarray) -> FreeSum:
        """The rows of ``genomes`` (split into ``terms``) with the fitted ``intercept``
        (P,) and term ``coefficients`` (P, K) as the start values of a and b."""
        P, L = genomes.kind.shape
        K = terms.start.shape[1]
        out = Genomes.empty(P, L + 2 + 2 * K)
        source = np.full(out.kind.shape, -1, np.int64)
        weight_at = np.full((P, K), -1, np.int64)
        rows = np.arange(P)

        def put(at, mask, kind, arg=0, value=0.0):
            out.kind[rows[mask], at[mask]] = kind
            out.arg[rows[mask], at[mask]] = arg
            out.value[rows[mask], at[mask]] = value[mask] if np.ndim(value) else value

        everyone = np.ones(P, bool)
        put(np.zeros(P, np.int64), everyone, KIND_OP, _ADD)
        put(np.ones(P, np.int64), everyone, KIND_CONST, value=intercept)
        cursor = np.full(P, 2, np.int64)
        span = np.arange(L)
        for k in range(K):
            used = k < terms.count
            chained = k < terms.count - 1  # a further term follows: add (mul b t) rest
            put(cursor, chained, KIND_OP, _ADD)
            cursor += chained
            put(cursor, used, KIND_OP, _MUL)
            put(cursor + 1, used, KIND_CONST, value=coefficients[:, k])
            weight_at[used, k] = cursor[used] + 1
            cursor += 2 * used
            n = np.where(used, terms.end[:, k] - terms.start[:, k], 0)
            r, j = np.nonzero(span < n[:, None])
            src, dst = terms.start[r, k] + j, cursor[r] + j
            out.kind[r, dst], out.arg[r, dst] = genomes.kind[r, src], genomes.arg[r, src]
            out.value[r, dst], source[r, dst] = genomes.value[r, src], src
            cursor += n
        out.length[:] = cursor
        return FreeSum(out, source, weight_at)

    def nodes(self) -> Nodes:
        return to_nodes(self.genomes, Structure.of(self.genomes))

    def split(self, params: np.ndarray, value: np.ndarray):
        """Refined constants ``params`` (P, >= constants, in the rows' constant order)
        back in the original form: returns the rows' ``value`` (a copy of the (P, L)
        array with their own constants replaced), the intercepts (P,) and the
        coefficients (P, K) (0 for unused slots)."""
        g = self.genomes
        is_const = (g.kind == KIND_CONST)
        ordinal = np.cumsum(is_const, axis=1) - 1
        r, c = np.nonzero(is_const)
        refined = np.zeros(g.value.shape)
        refined[r, c] = params[r, ordinal[r, c]]
        own = is_const & (self.source >= 0)
        r, c = np.nonzero(own)
        value = value.copy()
        value[r, self.source[r, c]] = refined[r, c]
        used = self.weight_at >= 0
        coefficients = np.where(used, np.take_along_axis(
            refined, np.maximum(self.weight_at, 0), axis=1), 0.0)
        return value, refined[:, 1], coefficients
