"""Random expression trees with the reference's distribution (docs/reference.md 2.1, steps 3-8).

A tree is built in three passes, as the reference does:

1. a uniformly random binary skeleton with ``b`` operators (every shape with ``b`` internal
   nodes equally likely), labelled by the binary-operator weights, with variables at the leaves;
2. unary operators inserted above small subtrees, then thinned to the unary budget;
3. constants placed by the reference's rules, which gives the final ``Expr``.

The tree lives in a small mutable ``Node`` while being built and evaluated (most attempts are
rejected, so they never pay for the immutable ``jaxsr.expr.Expr``); ``to_expr`` converts an
accepted tree and writes its decoder token ids in the same pass. Only the random draws differ
from the reference (a different RNG and order of draws), not the distribution they produce.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxsr.data.config import GeneratorConfig
from jaxsr.expr import operators, tokens
from jaxsr.expr.tree import FLOAT, Expr

SUMS = frozenset({"add", "sub"})
_FIXED_LEAVES = ("e", "pi", "euler_gamma")


class Node:
    """A node under construction: an operator name or leaf word, its children, and for leaves
    what evaluation needs (a variable's column, or a number)."""

    __slots__ = ("token", "children", "column", "value", "ids")

    def __init__(self, token: str | None = None, children: list | None = None):
        self.token = token
        self.children = children if children is not None else []
        self.column: int | None = None  # variables: the column of x
        self.value: float | None = None  # float constants and fixed leaves
        self.ids: tuple[int, ...] = ()  # float constants: their three decoder ids

    @staticmethod
    def variable(k: int) -> Node:
        node = Node(f"x_{k}")
        node.column = k
        return node

    @staticmethod
    def fixed(word: str) -> Node:
        node = Node(word)
        node.value = operators.BY_NAME[word].value
        return node


class OperatorSampler:
    """Draws operator names with the configured weights (zero-weight operators never)."""

    def __init__(self, pairs: tuple[tuple[str, float], ...]):
        kept = [(name, w) for name, w in pairs if w > 0]
        self.names = tuple(name for name, _ in kept)
        weights = np.array([w for _, w in kept], dtype=np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())
        self.cumulative[-1] = 1.0  # guard against rounding: every uniform maps to an operator

    def draw(self, rng: np.random.Generator, n: int) -> list[str]:
        picks = np.searchsorted(self.cumulative, rng.random(n), side="right")
        return [self.names[i] for i in picks]


class ConstantSampler:
    """Constants +-m * 10**e: sign uniform, m ~ U{1 .. 10**p - 1}, e uniform in the range.

    Draws in blocks (one numpy call per block instead of three per constant). Each constant
    comes with its decoder ids, read off (m, e) directly: m has at most 4 digits, so its
    4-digit token is m * 10**(4 - digits) with exponent e - (4 - digits), exactly what
    formatting the value with "%.3e" gives (checked against ``Expr.prefix`` in the tests).
    """

    _BLOCK = 32

    def __init__(self, rng: np.random.Generator, config: GeneratorConfig):
        self._rng = rng
        self._max_mantissa = 10**config.float_precision - 1
        self._exponents = config.constant_exponents
        self._drawn: list[tuple[float, tuple[int, int, int]]] = []

    def _refill(self):
        rng, n = self._rng, self._BLOCK
        negative = rng.random(n) < 0.5
        mantissa = rng.integers(1, self._max_mantissa + 1, size=n)
        exponent = rng.integers(self._exponents[0], self._exponents[1] + 1, size=n)
        digits = 1 + sum((mantissa >= 10**k).astype(np.int64)
                         for k in range(1, tokens.MANTISSA_DIGITS))
        shift = tokens.MANTISSA_DIGITS - digits
        ids = _float_ids(negative, mantissa * 10**shift, exponent - shift)
        # sign * (mantissa * 10**e) with a Python float power of ten, as the reference
        # computes it, so values carry the same rounding (e.g. 0.23600000000000002).
        self._drawn = [(-(m * 10.0 ** e) if neg else m * 10.0 ** e, i)
                       for neg, m, e, i in zip(negative.tolist(), mantissa.tolist(),
                                               exponent.tolist(), ids, strict=True)]

    def draw(self) -> Node:
        if not self._drawn:
            self._refill()
        node = Node(FLOAT)
        node.value, node.ids = self._drawn.pop()
        return node


@functools.cache
def _decoder_ids():
    vocab = tokens.Vocab.decoder()
    digits = tokens.MANTISSA_DIGITS
    mantissa = np.array([vocab[f"N{m:0{digits}d}"] for m in range(10**digits)], np.int64)
    exponent = np.array([vocab[f"E{e}"] for e in range(-tokens.MAX_EXPONENT,
                                                      tokens.MAX_EXPONENT + 1)], np.int64)
    return vocab.word2id, mantissa, exponent, vocab["+"], vocab["-"]


def _float_ids(negative, mantissa4, exponent) -> list[tuple[int, int, int]]:
    _, mantissa_ids, exponent_ids, plus, minus = _decoder_ids()
    signs = np.where(negative, minus, plus)
    return list(zip(signs.tolist(), mantissa_ids[mantissa4].tolist(),
                    exponent_ids[exponent + tokens.MAX_EXPONENT].tolist(), strict=True))


# ---------------------------------------------------------------------------- skeleton


def random_skeleton(rng: np.random.Generator, n_binary: int,
                    binary: OperatorSampler) -> tuple[Node, list[Node]]:
    """A uniformly random full binary tree with ``n_binary`` labelled internal nodes.

    Rémy's algorithm: grow the tree one operator at a time by picking any existing node
    uniformly, putting a new operator in its place and hanging the old node and a new leaf
    under it on a random side. After n steps every one of the Catalan(n) shapes is equally
    likely, the same distribution as the reference's counting sampler with unary=False.
    Returns the root and the leaves.
    """
    nodes = [Node()]
    parent: list[Node | None] = [None]
    root = nodes[0]
    picks = rng.random(n_binary)
    sides = rng.random(n_binary) < 0.5
    for step in range(n_binary):
        k = int(picks[step] * len(nodes))
        old, up = nodes[k], parent[k]
        leaf = Node()
        op = Node(None, [old, leaf] if sides[step] else [leaf, old])
        if up is None:
            root = op
        else:
            up.children[up.children.index(old)] = op
        parent[k] = op
        nodes += [op, leaf]
        parent += [up, op]
    labels = binary.draw(rng, n_binary)
    leaves = []
    for node in nodes:
        if node.children:
            node.token = labels.pop()
        else:
            leaves.append(node)
    return root, leaves


def assign_leaves(rng: np.random.Generator, leaves: list[Node], dimension: int,
                  config: GeneratorConfig) -> int:
    """Puts variables (or, with prob_const, integers) at the leaves; returns the dimension used.

    In a random order of the leaves the first ``dimension`` get x_0, x_1, ..., so every
    variable appears once the tree has enough leaves; the others draw x_k uniformly, or a
    constant leaf with probability ``prob_const``. Because the first variables are assigned in
    order, the variables used are always x_0..x_{k-1}: the reference's relabelling step is
    the identity here and k = min(dimension, number of leaves).
    """
    order = rng.permutation(len(leaves))
    extra = len(leaves) - dimension
    others = rng.integers(0, dimension, size=max(extra, 0))
    as_constant = rng.random(max(extra, 0)) < config.prob_const
    constant_words = [str(i) for i in range(-config.max_int, config.max_int + 1) if i != 0]
    constant_words += list(_FIXED_LEAVES)
    for rank, leaf_index in enumerate(order.tolist()):
        leaf = leaves[leaf_index]
        if rank < dimension:
            leaf.token, leaf.column = f"x_{rank}", rank
        elif as_constant[rank - dimension]:
            word = constant_words[int(rng.integers(len(constant_words)))]
            leaf.token, leaf.value = word, operators.BY_NAME[word].value
        else:
            k = int(others[rank - dimension])
            leaf.token, leaf.column = f"x_{k}", k
    return min(dimension, len(leaves))


# ---------------------------------------------------------------------------- unaries


def insert_unaries(rng: np.random.Generator, root: Node, budget: int,
                   unary: OperatorSampler, max_depth: int) -> int:
    """Inserts at most ``budget`` unary operators; returns how many.

    Candidate places are above every non-root subtree with fewer than ``max_depth`` nodes;
    the reference fills them all and then deletes random ones down to the budget, which keeps
    a uniformly random subset of them, as here.
    """
    slots: list[tuple[Node, int]] = []
    _collect_unary_slots(root, max_depth, slots)
    keep = min(budget, len(slots))
    if keep == 0:
        return 0
    chosen = rng.permutation(len(slots))[:keep]  # a uniform subset (faster than choice)
    names = unary.draw(rng, keep)
    for slot, name in zip(chosen, names, strict=True):
        parent, i = slots[slot]
        parent.children[i] = Node(name, [parent.children[i]])
    return keep


def _collect_unary_slots(node: Node, max_depth: int, slots: list) -> int:
    """Appends (parent, child index) for each small child subtree; returns the subtree size."""
    size = 1
    for i, child in enumerate(node.children):
        child_size = _collect_unary_slots(child, max_depth, slots)
        if child_size < max_depth:
            slots.append((node, i))
        size += child_size
    return size


# ---------------------------------------------------------------------------- constants


def place_constants(root: Node, constants: ConstantSampler, config: GeneratorConfig) -> Node:
    """The final tree with constants, by the reference's rules."""
    if config.reduce_num_constants:
        placed = _add_prefactors(root, constants)
        if placed == 0:  # nothing was inserted: scale the whole tree
            root = Node("mul", [constants.draw(), root])
        return Node("add", [constants.draw(), root])
    _add_affine(root, constants)
    # The root is never a unary; a lone variable (no binary operator) gets its own a + b*x.
    return _affine(root, constants) if root.column is not None else root


def _affine(node: Node, constants: ConstantSampler) -> Node:
    """a + b * node."""
    return Node("add", [constants.draw(), Node("mul", [constants.draw(), node])])


def _add_prefactors(node: Node, constants: ConstantSampler) -> int:
    """reduce_num_constants=True, in place below ``node``: a coefficient on each term of a
    sum, and unary(a + b * child) for a unary whose argument is not a sum; products and
    leaves get nothing of their own. Returns how many were inserted."""
    placed = 0
    for i, child in enumerate(node.children):
        placed += _add_prefactors(child, constants)
        if child.token in SUMS:
            continue
        if node.token in SUMS:
            node.children[i] = Node("mul", [constants.draw(), child])
            placed += 1
        elif len(node.children) == 1:
            node.children[i] = _affine(child, constants)
            placed += 1
    return placed


def _add_affine(node: Node, constants: ConstantSampler) -> None:
    """reduce_num_constants=False, in place below ``node``: a + b * (.) around every
    variable and every unary (the caller wraps the root itself)."""
    for i, child in enumerate(node.children):
        _add_affine(child, constants)
        if child.column is not None or len(child.children) == 1:
            node.children[i] = _affine(child, constants)


# ---------------------------------------------------------------------------- evaluation


def evaluate(node: Node, x: np.ndarray, functions: dict):
    """Value of a tree on the rows of x: an (N,) array, or a float for constant subtrees.

    ``functions`` maps operator names to callables on numpy arrays (see
    ``Generator._functions``); they may raise to abandon a hopeless evaluation early.
    """
    children = node.children
    if not children:
        return x[:, node.column] if node.column is not None else node.value
    if len(children) == 1:
        return functions[node.token](evaluate(children[0], x, functions))
    return functions[node.token](evaluate(children[0], x, functions),
                                 evaluate(children[1], x, functions))


# ---------------------------------------------------------------------------- output


def token_ids(root: Node) -> tuple[np.ndarray, int, int]:
    """Decoder token ids of a tree (prefix order, floats as 3 ids), and its unary and binary
    operator counts (prefactor add/mul included, as the reference's info counts them)."""
    word2id = _decoder_ids()[0]
    ids: list[int] = []
    counts = [0, 0, 0]  # nodes by arity
    stack = [root]
    while stack:
        node = stack.pop()
        if node.ids:
            ids.extend(node.ids)
            continue
        ids.append(word2id[node.token])
        counts[len(node.children)] += 1
        if node.children:
            stack.extend(reversed(node.children))
    return np.array(ids, dtype=np.int32), counts[1], counts[2]


def to_expr(root: Node) -> Expr:
    """The immutable ``Expr`` of a finished tree."""
    if root.token == FLOAT:
        return Expr(FLOAT, (), root.value)
    return Expr(root.token, tuple([to_expr(child) for child in root.children]))


def from_expr(expr: Expr) -> Node:
    """A ``Node`` tree for evaluating any expression with the generator's numerics."""
    if expr.children:
        return Node(expr.token, [from_expr(child) for child in expr.children])
    node = Node(expr.token)
    if expr.is_constant:
        node.value = expr.value
    elif expr.variable is not None:
        node.column = expr.variable
    else:
        node.value = operators.get(expr.token).value
    return node


# ---------------------------------------------------------------------------- checks


def operator_tokens(root: Node) -> list[str]:
    """Operator names of a tree under construction, in prefix order."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.children:
            out.append(node.token)
            stack.extend(reversed(node.children))
    return out


def max_prefix_length(config: GeneratorConfig, dimension: int, unary_budget: int) -> int:
    """An upper bound on the prefix length (floats count 3 tokens) of any tree drawn for
    dimension ``dimension`` and unary budget ``unary_budget``; the batcher pads targets with it.

    With b binary operators (b + 1 leaves) and v <= unary_budget unaries, the skeleton and
    unaries take 2b + 1 + v tokens. reduce_num_constants=True adds 4 tokens (``mul`` and a
    float) per non-sum child of a sum, 8 per unary (``add a mul b``), and at most 8 at the
    top. A sum has two children, so there are at most 2s such children for s sums; each is a
    distinct leaf, product or unary, so also at most (b + 1) + (b - s) + v; the smaller of the
    two is at most 2 (2b + 1 + v) / 3. reduce_num_constants=False adds 8 per variable leaf and
    per unary.
    """
    b = config.binary_ops_range(dimension)[1]
    v = unary_budget
    skeleton = 2 * b + 1 + v
    if config.reduce_num_constants:
        sum_children = min(2 * b, (2 * (2 * b + 1 + v)) // 3)
        return skeleton + 4 * sum_children + 8 * v + 8
    return skeleton + 8 * (b + 1) + 8 * v


assert all(name in operators.BY_NAME for name in _FIXED_LEAVES)
