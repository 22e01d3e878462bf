"""One batched pass over one or many problems: every stage of a fit, each a plain function.

    bags -> tokenise -> decode -> parse -> score -> dedupe -> unscale -> refine -> select

Each stage returns new values (a new ``Pool``, per-problem counts) and leaves its inputs
as they were, so that a stage can be run, timed or tested on its own.

All bags of all problems decode together (in calls sized to a memory budget), all
candidates are scored in one batched call, and all unique candidates are refined in one
``refine_constants`` call, each candidate against its own problem's data
(``dataset_index``). Shapes are rounded up to buckets so that later fits reuse the
compiled code.

Spaces: the model reads the selected columns standardised and y as is (the reference does
not scale y), so its formulas map standardised x to raw y. ``unscale`` substitutes
x_k -> (x_k - mean_k) / scale_k, which turns them into formulas of the user's x with
explicit constants; refinement then fits those constants too (an affine map of every
variable occurrence for free), in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import decode
from jaxsr.expr import Expr
from jaxsr.expr.compiler import compile_programs
from jaxsr.expr.interpreter import evaluate_programs
from jaxsr.expr.tokens import encode_point_sets
from jaxsr.refine import refine_constants
from jaxsr.regressor.inputs import FitProblem
from jaxsr.regressor.models import LoadedModel
from jaxsr.shapes import bucket, next_power_of_two, pad_point_sets, pad_to

# "tokenise" is host work (rows into bags, numbers into tokens); the encoder itself runs
# inside "decode".
STAGES = ("tokenise", "decode", "parse", "score", "refine", "search", "select")
# Decoder key/value caches of one decoding call stay under this on a CPU (the
# cross-attention cache is repeated for every candidate row: 13 MB per row for the paper
# model at 200 points); on an accelerator, under a quarter of its memory.
DECODE_MEMORY_BYTES = 2 << 30
# With max_time, refinement runs in rounds of this many iterations, the clock checked
# between rounds (each round restarts L-BFGS from the previous round's constants).
ROUND_ITERATIONS = 10
# With max_time, bags decode at most this many per call, the clock checked between calls.
TIMED_GROUP_BAGS = 2
REFINE_SOLVER = "batched"  # one batched evaluation per step: the fastest for many candidates
SOURCE_MODEL = "model"
SOURCE_LINEAR = "fallback: linear fit"
SOURCE_MEAN = "fallback: mean"
SOURCE_CONSTANT = "constant target"
DROPPED_VARIABLE = "uses a variable the data lacks"
DROPPED_NON_FINITE = "not finite on the data"


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """The estimator's parameters that the pipeline reads, validated."""

    max_input_points: int
    max_number_bags: int | None
    n_candidates: int
    decoding: str
    temperature: float
    max_len: int
    refine: bool
    max_iter: int
    max_time: float | None
    seed: int
    search: str = "sample"
    population_size: int = 1024
    generations: int | None = None
    seeds: str = "model"
    model_proposals: bool = True
    verbose: int = 0

    @property
    def rows_per_bag(self) -> int:
        return 1 if self.decoding == "greedy" else self.n_candidates


@dataclasses.dataclass
class FitOutcome:
    """The result for one problem: candidates ranked best first, in the user's units, with
    variables indexing the problem's original columns."""

    exprs: list[Expr]
    r2: np.ndarray
    mse: np.ndarray
    complexity: np.ndarray
    refined: np.ndarray
    source: list[str]
    fallback: str | None
    counts: dict
    dropped: dict
    selected: int = 0                        # the chosen row (the first: best R2)
    r2_validation: np.ndarray | None = None  # with search="evolve": R2 on held-out rows
    calm: np.ndarray | None = None  # with search="evolve": no blow-up between the rows


class Clock:
    """Per-stage wall time, the max_time deadline and the progress bar."""

    def __init__(self, max_time: float | None, verbose: int):
        self.start = time.perf_counter()
        self.deadline = None if max_time is None else self.start + max_time
        self.timings = {name: 0.0 for name in STAGES}
        self.stopped_early = False
        self.bar = None
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(STAGES), desc="jaxsr fit", unit="stage", leave=False)

    @contextlib.contextmanager
    def stage(self, name: str):
        if self.bar is not None:
            self.bar.set_description(f"jaxsr fit: {name}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - started
            if self.bar is not None:
                self.bar.update(1)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None without one)."""
        return None if self.deadline is None else self.deadline - time.perf_counter()

    @contextlib.contextmanager
    def until(self, seconds: float | None):
        """Inside the block, the deadline is ``seconds`` from the start (never later than
        the real one), and running out of it does not count as stopping early."""
        deadline, stopped = self.deadline, self.stopped_early
        if seconds is not None:
            self.deadline = min(self.start + seconds, deadline or np.inf)
        try:
            yield
        finally:
            self.deadline, self.stopped_early = deadline, stopped

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.stopped_early = True
        return self.stopped_early

    def close(self) -> dict:
        if self.bar is not None:
            self.bar.close()
        self.timings["total"] = time.perf_counter() - self.start
        return {k: round(v, 4) for k, v in self.timings.items()}


# ---------------------------------------------------------------------------- helpers


def map_variables(expr: Expr, replace) -> Expr:
    """A copy of ``expr`` with every variable x_k replaced by the tree ``replace(k)``."""
    if expr.variable is not None:
        return replace(expr.variable)
    if not expr.children:
        return expr
    return Expr(expr.token, tuple(map_variables(c, replace) for c in expr.children))


def unscale(expr: Expr, problem: FitProblem) -> Expr:
    """A model-space formula as a formula of the user's x: x_k -> (x_k - mean_k)/scale_k
    (fresh nodes per occurrence, so every occurrence refines on its own)."""
    return map_variables(expr, lambda k: Expr.op(
        "div", Expr.op("sub", Expr.var(k), Expr.const(problem.mean[k])),
        Expr.const(problem.scale[k])))


def to_columns(expr: Expr, problem: FitProblem) -> Expr:
    """Variables renumbered from selected features to the problem's original columns."""
    return map_variables(expr, lambda k: Expr.var(int(problem.selected[k])))


def weighted_variance(y, weight) -> float:
    weight = weight / weight.sum()
    return float(np.sum(weight * (y - np.sum(weight * y)) ** 2))


def weighted_metrics(prediction, y, weight) -> tuple[float, float]:
    """(mean squared error, R2), both weighted; non-finite predictions give (inf, -inf)."""
    if not np.all(np.isfinite(prediction)):
        return float("inf"), float("-inf")
    mse = float(np.sum(weight * (prediction - y) ** 2) / weight.sum())
    variance = weighted_variance(y, weight)
    if variance == 0:
        return mse, float(mse == 0)
    return mse, 1.0 - mse / variance


def stack_fit_rows(problems: list[FitProblem], columns, width: int):
    """Every problem's fit rows as padded arrays: X (P, N, width), y (P, N), weight (P, N)
    with weight 0 on padding; ``columns(problem, rows)`` gives a problem's (m, d) X."""
    n = next_power_of_two(max(len(p.fit_rows) for p in problems), 16)
    X = np.zeros((len(problems), n, width))
    y, weight = np.zeros((len(problems), n)), np.zeros((len(problems), n))
    for i, p in enumerate(problems):
        m = len(p.fit_rows)
        X[i, :m, : p.n_selected] = columns(p, p.fit_rows)
        y[i, :m], weight[i, :m] = p.y[p.fit_rows], p.weight[p.fit_rows]
    return X, y, weight


# ---------------------------------------------------------------------------- stages


@dataclasses.dataclass
class Bags:
    point_ids: np.ndarray  # (B, N, tokens per point) encoder ids
    mask: np.ndarray       # (B, N) True for real points
    problem: np.ndarray    # (B,) which problem each bag samples


def make_bags(problems: list[FitProblem], settings: PipelineSettings, max_features: int) -> Bags:
    """Bags of at most ``max_input_points`` rows per problem, encoded as the model's tokens.

    A problem's rows are shuffled (seeded) and cut into bags of nearly equal size (not the
    reference's consecutive chunks of the original order, whose last bag can be tiny); the
    first ``max_number_bags`` are kept. Problems with a constant target get none.
    """
    rows, owner = [], []
    for i, p in enumerate(problems):
        if p.constant_target:
            continue
        n = len(p.y)
        order = p.rng.permutation(n)
        chunks = np.array_split(order, -(-n // settings.max_input_points))
        for chunk in chunks[: settings.max_number_bags]:
            rows.append(np.sort(chunk))
            owner.append(i)
    if not rows:
        return Bags(*pad_point_sets([], 0, max_features), np.zeros(0, int))
    # Every bag is padded to max_input_points: one compiled decoder for any data size, for
    # at most ~10% more decoding work on small data (cross-attention is a small part of a
    # decoder step; the encoder runs once per bag).
    sets = encode_point_sets([problems[i].standardised(r) for r, i in zip(rows, owner)],
                             [problems[i].y[r] for r, i in zip(rows, owner)], max_features)
    return Bags(*pad_point_sets(sets, settings.max_input_points), np.asarray(owner, int))


def rows_per_call(loaded: LoadedModel, n_points: int, settings: PipelineSettings) -> int:
    """Candidate rows one decoding call may hold: its key/value caches stay under
    DECODE_MEMORY_BYTES."""
    config = loaded.model.config
    per_row = 4 * config.decoder_layers * 2 * (n_points + settings.max_len) * config.decoder_dim
    return max(1, decode_memory_bytes() // per_row)


def decode_memory_bytes() -> int:
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return max(DECODE_MEMORY_BYTES, int(stats["bytes_limit"]) // 4)
    return DECODE_MEMORY_BYTES


def decode_bags(loaded: LoadedModel, bags: Bags, settings: PipelineSettings, clock: Clock):
    """Token rows (B', n, L) and lengths (B', n) of the first B' bags: all of them unless
    max_time ran out (checked between calls; at least one call runs).

    Bags decode in groups as large as memory allows (a power of two, the last group padded
    with copies); when one bag's samples alone exceed it, they are drawn in several calls.
    """
    n_bags, n = len(bags.problem), settings.rows_per_bag
    rows = rows_per_call(loaded, bags.mask.shape[1], settings)
    pieces = -(-n // rows) if settings.decoding == "sampling" else 1  # beams cannot split
    group = 1 if pieces > 1 else min(max(1, rows // n), next_power_of_two(n_bags))
    if clock.deadline is not None:  # small calls, so that the clock is checked often
        group = min(group, TIMED_GROUP_BAGS)
    key = jax.random.key(settings.seed)
    tokens, lengths = [], []
    for g, start in enumerate(range(0, n_bags, group)):
        if g > 0 and clock.out_of_time():
            break
        take = min(group, n_bags - start)
        ids, mask = (pad_to(a[start: start + group], group) for a in (bags.point_ids, bags.mask))
        outs = [_generate(loaded, ids, mask, settings, jax.random.fold_in(key, g * pieces + j),
                          -(-n // pieces)) for j in range(pieces)]
        tokens.append(np.concatenate([np.asarray(o.tokens) for o in outs], 1)[:take, :n])
        lengths.append(np.concatenate([np.asarray(o.lengths) for o in outs], 1)[:take, :n])
    return np.concatenate(tokens), np.concatenate(lengths)


def _generate(loaded: LoadedModel, ids, mask, settings: PipelineSettings, key, n: int):
    return decode.generate(loaded.model, loaded.params, ids, mask, strategy=settings.decoding,
                           n=n, key=key, temperature=settings.temperature,
                           max_len=settings.max_len)


@dataclasses.dataclass(frozen=True)
class Pool:
    """Candidates of all problems: parallel arrays; each stage returns a new pool."""

    exprs: list[Expr]
    problem: np.ndarray
    mse: np.ndarray | None = None
    r2: np.ndarray | None = None
    refined: np.ndarray | None = None
    iterations: np.ndarray | None = None  # L-BFGS iterations run

    def take(self, keep) -> Pool:
        keep = np.asarray(keep, int)
        pick = lambda a: None if a is None else a[keep]
        return Pool([self.exprs[i] for i in keep], self.problem[keep], pick(self.mse),
                    pick(self.r2), pick(self.refined), pick(self.iterations))

    def per_problem(self, n_problems: int) -> np.ndarray:
        """How many candidates each of ``n_problems`` problems has."""
        return np.bincount(self.problem, minlength=n_problems)


def parse(tokens, lengths, bags: Bags, problems: list[FitProblem]):
    """Token rows -> trees, dropping invalid rows and formulas using a variable beyond the
    problem's selected features. Returns the pool, per-problem counts (sampled, valid) and
    per-problem drop reasons."""
    exprs, owner = [], []
    counts = [{"sampled": 0, "valid": 0} for _ in problems]
    dropped = [Counter() for _ in problems]
    decoded_problems = bags.problem[: len(tokens)]
    for i, p in enumerate(problems):
        mine = decoded_problems == i
        if not mine.any():
            continue
        parsed = decode.to_expressions(tokens[mine], lengths[mine])
        usable = [e for e in parsed.exprs if max(e.variables(), default=-1) < p.n_selected]
        dropped[i].update(parsed.dropped)
        if len(usable) < len(parsed.exprs):
            dropped[i][DROPPED_VARIABLE] += len(parsed.exprs) - len(usable)
        counts[i] = {"sampled": int(lengths[mine].size), "valid": len(usable)}
        exprs += usable
        owner += [i] * len(usable)
    return Pool(exprs, np.asarray(owner, int)), counts, dropped


def score(pool: Pool, problems: list[FitProblem]) -> tuple[Pool, list[Counter]]:
    """Weighted MSE of every candidate on its problem's fit rows, in one batched float64
    evaluation (model space: standardised x, raw y); drops those not finite there. Returns
    the scored pool and, per problem, the drops."""
    dropped = [Counter() for _ in problems]
    if not pool.exprs:
        return dataclasses.replace(pool, mse=np.zeros(0)), dropped
    X, y, weight = stack_fit_rows(problems, FitProblem.standardised, _width(problems))
    size = bucket(len(pool.exprs))
    with jax.enable_x64(True):
        programs = compile_programs(pad_to(pool.exprs, size))
        index = pad_to(list(pool.problem), size)
        values = np.asarray(evaluate_programs(programs, jnp.asarray(X), dataset_index=index))
    values = values[: len(pool.exprs)]
    weight = weight[pool.problem] / weight[pool.problem].sum(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        residual = np.where(weight > 0, values - y[pool.problem], 0.0)
        mse = np.sum(weight * residual**2, axis=1)
    finite = np.isfinite(mse) & np.all(np.isfinite(values) | (weight == 0), axis=1)
    for i in pool.problem[~finite]:
        dropped[i][DROPPED_NON_FINITE] += 1
    return dataclasses.replace(pool, mse=mse).take(np.flatnonzero(finite)), dropped


def _width(problems: list[FitProblem]) -> int:
    """Columns of the stacked data: the model's maximum rather than the problems' (padding
    is free), so that data of any width reuses one compiled evaluator and solver."""
    return problems[0].max_features


def dedupe(pool: Pool) -> Pool:
    """One candidate per (problem, skeleton): the one with the lowest MSE."""
    best: dict = {}
    for j, (expr, i) in enumerate(zip(pool.exprs, pool.problem)):
        key = (int(i), expr.skeleton())
        if key not in best or pool.mse[j] < pool.mse[best[key]]:
            best[key] = j
    return pool.take(sorted(best.values()))


def refine(pool: Pool, problems: list[FitProblem], settings: PipelineSettings,
           clock: Clock) -> Pool:
    """Unscales every candidate, then (with ``settings.refine``) refines all their constants
    in one ``refine_constants`` call on their problems' fit rows, in float64."""
    if not pool.exprs:
        return dataclasses.replace(pool, mse=np.zeros(0), r2=np.zeros(0),
                                   refined=np.zeros(0, bool), iterations=np.zeros(0, int))
    variance = np.array([weighted_variance(p.y[p.fit_rows], p.weight[p.fit_rows])
                         for p in problems])
    unscaled = dataclasses.replace(
        pool, exprs=[unscale(e, problems[i]) for e, i in zip(pool.exprs, pool.problem)],
        r2=1.0 - pool.mse / np.where(variance > 0, variance, 1.0)[pool.problem],
        refined=np.zeros(len(pool.exprs), bool), iterations=np.zeros(len(pool.exprs), int))
    if not (settings.refine and settings.max_iter > 0) or clock.out_of_time():
        return unscaled
    return _refine_constants(unscaled, problems, settings, clock)


def _refine_constants(pool: Pool, problems: list[FitProblem], settings: PipelineSettings,
                      clock: Clock) -> Pool:
    """``refine_constants`` on every candidate of ``pool`` (in the user's units), in rounds
    of ROUND_ITERATIONS while a deadline is set."""
    users = np.unique(pool.problem)  # the datasets refine_constants needs, in order
    X, y, weight = stack_fit_rows([problems[i] for i in users], FitProblem.user_units,
                                  _width(problems))
    # No candidate padding here: refine_constants rounds its batch to reusable sizes with
    # idle lanes, whereas padding copies would be refined for nothing.
    index = np.searchsorted(users, pool.problem)
    exprs, left = pool.exprs, settings.max_iter
    iterations = np.zeros(len(exprs), int)
    while left > 0:
        step = left if clock.deadline is None else min(left, ROUND_ITERATIONS)
        result = refine_constants(exprs, X, y, sample_weight=weight, dataset_index=index,
                                  max_iter=step, solver=REFINE_SOLVER, dtype="float64")
        exprs, left = result.exprs, left - step
        iterations += result.iterations
        if not np.any(result.iterations == step) or clock.out_of_time():
            break  # every candidate stopped on its own, or time is up
    return dataclasses.replace(pool, exprs=exprs, mse=result.loss, r2=result.r2,
                               refined=np.array([e.n_constants > 0 for e in exprs]),
                               iterations=iterations)


def select(pool: Pool, problems: list[FitProblem], counts, dropped) -> list[FitOutcome]:
    """Per problem: its candidates in the original columns, ranked by R2 (equal to 10
    decimals: lower complexity first); a flagged fallback where the model gave nothing."""
    outcomes = []
    for i, p in enumerate(problems):
        rows = [(to_columns(pool.exprs[j], p), pool.r2[j], pool.mse[j], pool.refined[j],
                 SOURCE_MODEL) for j in np.flatnonzero(pool.problem == i)]
        counted = {**counts[i],
                   "iterations": int(pool.iterations[pool.problem == i].max(initial=0))}
        fallback = None
        if not rows:
            fallback, extra = _fallback(p, counted, dropped[i])
            for source, expr in extra:
                mse, r2 = weighted_metrics(expr.evaluate(p.X[p.fit_rows]), p.y[p.fit_rows],
                                           p.weight[p.fit_rows])
                rows.append((expr, r2, mse, False, source))
        exprs, r2, mse, refined, source = (list(column) for column in zip(*rows))
        complexity = np.array([e.complexity() for e in exprs])
        r2 = np.asarray(r2, float)
        order = np.lexsort((complexity, -np.round(r2, 10)))  # stable: ties keep pool order
        outcomes.append(FitOutcome(
            exprs=[exprs[k] for k in order], r2=r2[order], mse=np.asarray(mse, float)[order],
            complexity=complexity[order], refined=np.asarray(refined, bool)[order],
            source=[source[k] for k in order], fallback=fallback, counts=counted,
            dropped=dict(dropped[i])))
    return outcomes


def _fallback(p: FitProblem, counts: dict, dropped: Counter) -> tuple[str, list]:
    """Why the model gave no usable formula, and the fallback candidates (source, tree)."""
    if p.constant_target:
        return (f"y is constant: the answer is y = {p.y[0]!r}; the model was not run",
                [(SOURCE_CONSTANT, Expr.const(p.y[0]))])
    mean = Expr.const(float(np.average(p.y, weights=p.weight)))
    extra = [(SOURCE_MEAN, mean)]
    if len(p.y) > p.n_selected + 1:
        extra.insert(0, (SOURCE_LINEAR, _linear_fit(p)))
    reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "none decoded"
    return (f"no sampled sequence gave a usable formula ({counts.get('sampled', 0)} sampled: "
            f"{reasons}); fell back to a linear fit and the mean"), extra


def _linear_fit(p: FitProblem) -> Expr:
    """Weighted least squares on the standardised features, as a tree in the original columns
    and the user's units (the same unscaling as every model formula)."""
    Z = np.column_stack([np.ones(len(p.y)), p.standardised(np.arange(len(p.y)))])
    root = np.sqrt(p.weight)
    coef = np.linalg.lstsq(Z * root[:, None], p.y * root, rcond=None)[0]
    tree = Expr.const(coef[0])
    for k, a in enumerate(coef[1:]):
        tree = Expr.op("add", tree, Expr.op("mul", Expr.const(a), Expr.var(k)))
    return to_columns(unscale(tree, p), p)


# ---------------------------------------------------------------------------- the pass


def new_counts() -> dict:
    """Per-problem counters, all zero."""
    return {"bags": 0, "sampled": 0, "valid": 0, "unique": 0, "iterations": 0}


def tokenise_and_decode(problems: list[FitProblem], loaded: LoadedModel, settings: PipelineSettings,
                        clock: Clock):
    """Bags of every problem and their decoded token rows (tokens, lengths); the bags of
    which only the first ``len(tokens)`` decoded before max_time ran out."""
    with clock.stage("tokenise"):
        bags = make_bags(problems, settings, loaded.max_features)
    with clock.stage("decode"):
        if len(bags.problem):
            tokens, lengths = decode_bags(loaded, bags, settings, clock)
        else:
            tokens = lengths = np.zeros((0, 1, 1), np.int32)
    return bags, tokens, lengths


def sampled_counts(bags: Bags, n_decoded: int, parsed: list[dict], n_problems: int):
    """Per-problem counters after parsing: bags decoded, sequences sampled, valid ones."""
    decoded = np.bincount(bags.problem[:n_decoded], minlength=n_problems)
    return [{**new_counts(), **parsed[i], "bags": int(decoded[i])} for i in range(n_problems)]


def sample(problems: list[FitProblem], loaded: LoadedModel, settings: PipelineSettings,
           clock: Clock):
    """The paper's protocol up to ranking: every unique sampled formula of every problem,
    in the user's units (variables: selected features), refined. Returns the pool and the
    per-problem counters and drop reasons."""
    bags, tokens, lengths = tokenise_and_decode(problems, loaded, settings, clock)
    with clock.stage("parse"):
        pool, parsed, dropped = parse(tokens, lengths, bags, problems)
    with clock.stage("score"):
        pool, non_finite = score(pool, problems)
        pool = dedupe(pool)
    counts = sampled_counts(bags, len(tokens), parsed, len(problems))
    for count, unique in zip(counts, pool.per_problem(len(problems))):
        count["unique"] = int(unique)
    dropped = [a + b for a, b in zip(dropped, non_finite)]
    with clock.stage("refine"):
        pool = refine(pool, problems, settings, clock)
    return pool, counts, dropped


def run(problems: list[FitProblem], loaded: LoadedModel, settings: PipelineSettings, clock: Clock):
    """Every stage for all ``problems`` at once; returns one ``FitOutcome`` per problem."""
    pool, counts, dropped = sample(problems, loaded, settings, clock)
    with clock.stage("select"):
        return select(pool, problems, counts, dropped)
