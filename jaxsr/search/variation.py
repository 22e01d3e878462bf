"""Variation on the array form: every operator acts on all chosen rows in a few numpy calls.

All structural changes are one primitive, ``splice``: row p becomes
``dst[p, :i] + src[p, j:k] + dst[p, e:]`` (a slice of another row replaces the subtree
[i, e)). With a mate as ``src`` it is subtree crossover; with a random tree it is subtree
mutation; with the row itself it is hoist; with an empty slice or a single unary node it
removes or inserts a unary operator. A child longer than the maximum length is rejected
(its parent is kept).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsr.expr import operators
from jaxsr.expr.compiler import KIND_CONST, KIND_FIXED, KIND_OP, KIND_VAR
from jaxsr.search.population import OP_ARITY, PAD, Genomes, Structure

# The variation operators, in the order of ``Rates`` fields.
OPERATORS = ("crossover", "subtree", "point", "constants", "insert_unary", "remove_unary",
             "hoist")
# Operators that keep every node's arity, hence the row's ``Structure``.
SHAPE_PRESERVING = ("point", "constants")


@dataclasses.dataclass(frozen=True)
class Rates:
    """Relative frequency of each variation operator (normalised when drawn)."""

    crossover: float = 0.35
    subtree: float = 0.2
    point: float = 0.15
    constants: float = 0.15
    insert_unary: float = 0.05
    remove_unary: float = 0.05
    hoist: float = 0.05

    def probabilities(self) -> np.ndarray:
        p = np.array([getattr(self, name) for name in OPERATORS], float)
        if np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"variation rates must be non-negative and not all 0, got {self}")
        return p / p.sum()


@dataclasses.dataclass(frozen=True)
class Alphabet:
    """The operators formulas may use (opcodes), and each row's number of variables."""

    unary: np.ndarray
    binary: np.ndarray

    @staticmethod
    def of(names) -> Alphabet:
        names = list(names)
        for name in names:
            if operators.get(name).arity == 0:
                raise ValueError(f"{name!r} is a leaf, not an operator")
        code = lambda arity: np.array([operators.OPCODE[n] for n in names
                                       if operators.BY_NAME[n].arity == arity], np.int32)
        alphabet = Alphabet(code(1), code(2))
        if not len(alphabet.binary):
            raise ValueError(f"the operators {names} include no binary operator")
        return alphabet


def splice(dst: Genomes, i, e, src: Genomes, j, k) -> tuple[Genomes, np.ndarray]:
    """Row-wise ``dst[:i] + src[j:k] + dst[e:]``; returns the children and which fit."""
    L = dst.max_length
    inserted = k - j
    length = dst.length - (e - i) + inserted
    t = np.arange(L)[None]
    i, e, j = i[:, None], e[:, None], j[:, None]
    from_src = (t >= i) & (t < i + inserted[:, None])
    src_at = np.clip(j + t - i, 0, L - 1)
    dst_at = np.where(t < i, t, np.clip(e + t - i - inserted[:, None], 0, L - 1))
    inside = t < length[:, None]

    # Flat indices, computed once for the three fields.
    base = np.arange(len(length))[:, None] * L
    src_at, dst_at = (base + src_at).reshape(-1), (base + dst_at).reshape(-1)

    def mix(a, b, pad):
        picked = np.where(from_src, b.reshape(-1)[src_at].reshape(-1, L),
                          a.reshape(-1)[dst_at].reshape(-1, L))
        return np.where(inside, picked, pad)

    child = Genomes(mix(dst.kind, src.kind, PAD), mix(dst.arg, src.arg, 0),
                    mix(dst.value, src.value, 0.0), length.astype(np.int32))
    return child, length <= L


def subtrees(genomes: Genomes, min_nodes: int, max_nodes: int) -> Genomes:
    """Every subtree of ``min_nodes`` to ``max_nodes`` nodes that holds a variable, one row
    each, one per skeleton (in order of first appearance)."""
    s = Structure.of(genomes)
    t = np.arange(genomes.max_length)[None]
    size = s.end - t
    variables = np.concatenate([np.zeros((genomes.size, 1), int),
                                np.cumsum(genomes.kind == KIND_VAR, axis=1)], axis=1)
    rows = np.arange(genomes.size)[:, None]
    holds_variable = variables[rows, s.end] > variables[:, :-1]
    inside = t < genomes.length[:, None]
    row, start = np.nonzero(inside & (size >= min_nodes) & (size <= max_nodes) & holds_variable)
    zero = np.zeros(len(row), int)
    out, _ = splice(Genomes.empty(len(row), genomes.max_length), zero, zero,
                    genomes.take(row), start, s.end[row, start])
    _, first = np.unique(out.skeleton_keys(), return_index=True)
    return out.take(np.sort(first))


def random_node(rng: np.random.Generator, length: np.ndarray, allowed=None) -> np.ndarray:
    """A uniformly random position per row (among ``allowed`` (P, L) where given; rows with
    no allowed position get 0)."""
    L = allowed.shape[1] if allowed is not None else int(length.max())
    score = rng.random((len(length), L))
    inside = np.arange(L) < length[:, None]
    score = np.where(inside if allowed is None else inside & allowed, score, -1.0)
    return score.argmax(axis=1)


# ---------------------------------------------------------------------------- operators


def crossover(rng, parents: Genomes, mates: Genomes, sp: Structure | None = None,
              sm: Structure | None = None):
    """The subtree at a random node of each parent replaced by a random subtree of its mate.
    ``sp``, ``sm``: the parents' and mates' ``Structure`` where the caller keeps them
    (computed when not given; likewise ``s`` in the operators below)."""
    sp = Structure.given(parents, sp)
    sm = Structure.given(mates, sm)
    i, j = random_node(rng, parents.length), random_node(rng, mates.length)
    rows = np.arange(parents.size)
    return splice(parents, i, sp.end[rows, i], mates, j, sm.end[rows, j])


def subtree_mutation(rng, parents: Genomes, fresh: Genomes, s: Structure | None = None):
    """The subtree at a random node replaced by a fresh random tree (one per row)."""
    s = Structure.given(parents, s)
    i = random_node(rng, parents.length)
    rows = np.arange(parents.size)
    return splice(parents, i, s.end[rows, i], fresh, np.zeros_like(i), fresh.length)


def hoist(rng, parents: Genomes, s: Structure | None = None):
    """A random subtree becomes the whole formula."""
    s = Structure.given(parents, s)
    j = random_node(rng, parents.length)
    rows = np.arange(parents.size)
    zero = np.zeros_like(j)
    return splice(parents, zero, parents.length, parents, j, s.end[rows, j])


def insert_unary(rng, parents: Genomes, alphabet: Alphabet):
    """A random unary operator inserted above a random node."""
    i = random_node(rng, parents.length)
    node = _single_nodes(parents.size, parents.max_length, KIND_OP,
                         rng.choice(alphabet.unary, parents.size))
    return splice(parents, i, i, node, np.zeros_like(i), np.ones_like(i))


def remove_unary(rng, parents: Genomes):
    """A random unary operator removed (its operand takes its place)."""
    is_unary = (parents.kind == KIND_OP) & (OP_ARITY[parents.arg] == 1)
    i = random_node(rng, parents.length, is_unary)
    has = is_unary.any(axis=1)
    child, ok = splice(parents, i, i + 1, parents, i, i)
    return child, ok & has


def point_mutation(rng, parents: Genomes, alphabet: Alphabet, n_variables: np.ndarray):
    """One random node changed in place: an operator for another of the same arity, a
    variable for another variable (each different from the old one where the alphabet or
    the problem offers another), a constant for a new draw, a fixed leaf for a refinable
    constant of the same value."""
    child = dataclasses.replace(parents, kind=parents.kind.copy(), arg=parents.arg.copy(),
                                value=parents.value.copy())
    rows = np.arange(parents.size)
    t = random_node(rng, parents.length)
    kind, arg = parents.kind[rows, t], parents.arg[rows, t]
    is_op = kind == KIND_OP
    unary = is_op & (OP_ARITY[arg] == 1)
    new_op = np.where(unary, _redraw(rng, arg, alphabet.unary),
                      _redraw(rng, arg, alphabet.binary))
    others = np.maximum(n_variables - 1, 1)
    shift = 1 + (rng.random(len(rows)) * others).astype(np.int32)
    new_var = np.where(n_variables > 1, (arg + shift) % np.maximum(n_variables, 1), arg)
    child.arg[rows, t] = np.where(is_op, new_op, np.where(kind == KIND_VAR, new_var, arg))
    value = parents.value[rows, t]
    child.value[rows, t] = np.where(kind == KIND_CONST, value * np.exp(rng.normal(size=len(rows)))
                                    * rng.choice([-1.0, 1.0], len(rows)), value)
    child.kind[rows, t] = np.where(kind == KIND_FIXED, KIND_CONST, kind)
    return child, np.ones(len(rows), bool)


def _redraw(rng, current: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """A random element of ``choices`` for each entry, other than ``current`` wherever
    ``choices`` holds another."""
    if not len(choices):
        return current
    j = rng.integers(len(choices), size=len(current))
    drawn = choices[j]
    return np.where(drawn == current, choices[(j + 1) % len(choices)], drawn)


def jitter_constants(rng, parents: Genomes, scale: float = 0.1):
    """Every float constant multiplied by 1 + scale * N(0, 1) (and nudged off zero)."""
    is_const = parents.kind == KIND_CONST
    noise = rng.normal(size=parents.value.shape)
    value = parents.value * (1 + scale * noise) + scale * 1e-3 * noise
    child = dataclasses.replace(parents, value=np.where(is_const, value, parents.value))
    return child, is_const.any(axis=1)


def fold_constants(genomes: Genomes, s: Structure | None = None
                   ) -> tuple[Genomes, Structure]:
    """In each row, the first operator whose operands are all numbers replaced by its value
    (one fold per row and call; repeated over generations it keeps formulas short).
    Returns the rows and their structure (``s``, the input's, is computed if not given;
    only the folded rows' is computed again)."""
    s = Structure.given(genomes, s)
    L = genomes.max_length
    number = (genomes.kind == KIND_CONST) | (genomes.kind == KIND_FIXED)
    # Operators whose first operand (the next node) is a number: few, so the second operand
    # (where the first one ends) is checked for these positions only.
    rows, t = np.nonzero((genomes.kind[:, :-1] == KIND_OP) & number[:, 1:])
    second = np.minimum(s.end[rows, t + 1], L - 1)
    foldable = (s.arity[rows, t] == 1) | number[rows, second]
    # The first foldable operator of each row (nonzero lists positions row by row).
    todo, first = np.unique(rows[foldable], return_index=True)
    if not len(todo):
        return genomes, s
    t, second = t[foldable][first], second[foldable][first]
    a = genomes.value[todo, t + 1]
    b = genomes.value[todo, second]
    folded = np.full(len(todo), np.nan)
    opcode = genomes.arg[todo, t]
    with np.errstate(all="ignore"):
        for code in np.unique(opcode):
            op = operators.FUNCTIONS[code]
            mine = opcode == code
            folded[mine] = op.apply(np, *(a[mine], b[mine])[: op.arity])
    ok = np.isfinite(folded)
    todo, t, folded = todo[ok], t[ok], folded[ok]
    if not len(todo):
        return genomes, s
    part = genomes.take(todo)
    node = _single_nodes(len(todo), L, KIND_CONST, 0, folded)
    child, _ = splice(part, t, s.end[todo, t], node, np.zeros_like(t), np.ones_like(t))
    out = dataclasses.replace(genomes, kind=genomes.kind.copy(), arg=genomes.arg.copy(),
                              value=genomes.value.copy(), length=genomes.length.copy())
    for field in ("kind", "arg", "value", "length"):
        getattr(out, field)[todo] = getattr(child, field)
    return out, s.replace_rows(todo, Structure.of(child))


def _single_nodes(n: int, max_length: int, kind, arg, value=0.0) -> Genomes:
    """n one-node rows (slices to splice in)."""
    out = Genomes.empty(n, max_length)
    out.kind[:, 0], out.arg[:, 0], out.value[:, 0] = kind, arg, value
    out.length[:] = 1
    return out
