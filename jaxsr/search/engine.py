"""``evolve``: a batched evolutionary search seeded, and fed during the run, by the model.

One generation, for all problems at once:

1. parents and mates drawn by tournament within each problem's block of the population;
2. one variation operator per child (``variation``), all children of an operator made in a
   few numpy calls on the array form (a child equal to its parent is point-mutated
   instead); one constant fold per child;
3. every child scored in one batched evaluation and one batched solve, by least squares
   over its additive terms, ``a + b1 t1 + ...`` (``fitness``). The compiled calls run
   while the host builds the next generation: a generation's children are merged one
   generation later, and come from parents that do not include the children scored
   meanwhile. With the host and XLA's threads on separate cores (``cores``), a 2-core CPU
   runs about twice the generations per second at 4,096 (the README's search benchmark);
4. parents and children merged, duplicate skeletons dropped, ``population_size`` survivors
   per problem chosen (``selection``); the Pareto front of every problem kept in an archive
   that never loses a member;
5. every ``refine_every`` generations the best ``refine_top`` formulas of each problem not
   yet refined go through the batched L-BFGS (``jaxsr.refine``) in array form, constants
   written back;
6. with a ``seeder``, each problem not solved after ``proposal_every`` generations gets the
   model's seeds then (once), as the first population gets ``seeds``: a problem that
   random trees solve at once never waits for the model's decoding;
7. with a ``proposer``, for each problem whose best error has not improved for
   ``proposal_every`` generations, the model is asked for fresh formulas for y, and for the
   residual ``y - f`` and ratio ``y / f`` of the best formulas f; ``f + g`` and ``f * g``
   are refined and join the population. Decoding costs as much as several generations on a
   CPU, so the model is asked only where the search is stuck, and proposals take at most
   ``proposal_share`` of the time.

The search never builds trees inside the loop except for the few formulas that go to the
proposer (L-BFGS takes the array form too: ``population.FreeSum``), and never calls sympy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxsr.checks import check_int
from jaxsr.data import trees
from jaxsr.data.config import GeneratorConfig
from jaxsr.expr import operators
from jaxsr.expr.compiler import KIND_CONST, Nodes, ProgramSize
from jaxsr.expr.tree import Expr
from jaxsr.refine.api import Refined, refine_nodes, solver_settings
from jaxsr.search import cores, fitness, selection, variation
from jaxsr.search.population import (
    FreeSum,
    Genomes,
    Structure,
    Terms,
    operator_counts,
    scoring_size,
)
from jaxsr.shapes import next_power_of_two

# Where a formula came from; a child of any variation is "evolved".
ORIGINS = ("model sample", "model proposal", "evolved", "random tree", "baseline")
MODEL_SAMPLE, MODEL_PROPOSAL, EVOLVED, RANDOM_TREE, BASELINE = range(len(ORIGINS))
DEFAULT_OPERATORS = ("add", "sub", "mul", "div", "sqrt", "exp", "log", "sin", "cos", "pow2",
                     "inv")
# L-BFGS steps for the initial population (the seeds are the model's best guesses).
INITIAL_REFINE_ITERATIONS = 50
# Subtree-mutation donors are drawn from a pool made once per problem: random trees, and
# up to FRAGMENT_SHARE of it the seeds' subtrees of FRAGMENT_NODES nodes (the model's
# building blocks, which stay available after the seeds themselves die out).
POOL_SIZE = 512
FRAGMENT_SHARE = 0.5
FRAGMENT_NODES = (3, 12)
# A problem's best error must fall below (1 - STALL_IMPROVEMENT) x its previous best for
# the search to count as progressing there (see ``SearchSettings.proposal_every``).
# Changes below NMSE_RESOLUTION (the default target's 1 - R2) are rounding, not progress.
STALL_IMPROVEMENT = 0.01
NMSE_RESOLUTION = 1e-12

# A seeder gives a problem's seeds when the search first asks for them: ``seeder([q, ...])``
# returns one list of trees per problem q, in its variables (see ``evolve``'s ``seeder``).
Seeder = Callable[[list[int]], list[list[Expr]]]

# A proposer turns targets into formulas: ``proposer([(q, target), ...], seed)`` returns one
# list of trees per request, each in problem q's variables (the columns of its X), fitted
# to ``target`` (values on problem q's rows, shape (n_q,)).
Proposer = Callable[[list[tuple[int, np.ndarray]], int], list[list[Expr]]]


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How ``evolve`` searches; every field is validated by ``check``.

    Attributes:
      population_size: formulas per problem.
      max_length: most nodes of a formula (before its fitted coefficients are written in).
      generations, max_evaluations, max_time: stop at whichever comes first (None: no
        limit; at least one must be set). ``max_time`` counts from the call.
      target_r2: stop a problem's search when a formula reaches this training R2.
      operators: names of the operators variation may use.
      rates: relative frequency of each variation operator.
      tournament_size: rows per tournament.
      selection: "nsga2" or "elitist" (see ``selection.survivors``).
      refine_top, refine_every, refine_iterations: L-BFGS on the best ``refine_top``
        unrefined formulas of each problem every ``refine_every`` generations.
      max_seeds: seeds per problem that enter the first population, at most: the ones
        with the lowest error. A population of the model's variations on a few ideas
        loses the diversity of random trees, and searches less well than random trees
        alone (measured: see the model card's ablation).
      proposal_every: generations without improvement (of a problem's best error by a
        factor ``1 - STALL_IMPROVEMENT``) before the model is asked for proposals for that
        problem, and at least between two rounds; doubled after each round that does not
        improve the problem's best error, reset after one that does (0: no proposals).
      proposal_share: fraction of the elapsed time that proposals may have taken, at most,
        when a round starts.
      proposal_members: front members per problem whose residual and ratio are proposed on.
      dtype: precision of scoring and refinement ("float32" or "float64"). float32 halves
        the cost of both and resolves R2 to about 1e-7 (callers that need more re-measure
        the final front, as the regressor does in float64).
      width: columns the data are padded to (a caller fitting data of many widths passes
        its maximum, so that one compiled evaluator serves them all).
      separate_cores: keep the host's work and the compiled calls on different cores
        during the search (``cores.separate_cores``); results do not depend on it.
      seed: random seed (with the same seed and generation count, the same result).
      verbose: 0 silent, 1 a tqdm progress bar.
    """

    population_size: int = 1024
    max_length: int = 32
    generations: int | None = None
    max_evaluations: int | None = None
    max_time: float | None = None
    target_r2: float = 1.0 - 1e-12
    operators: tuple[str, ...] = DEFAULT_OPERATORS
    rates: variation.Rates = variation.Rates()
    tournament_size: int = 4
    selection: str = "nsga2"
    refine_top: int = 64
    refine_every: int = 1
    refine_iterations: int = 10
    max_seeds: int = 64
    proposal_every: int = 5
    proposal_share: float = 0.2
    proposal_members: int = 2
    dtype: str = "float32"
    width: int | None = None
    separate_cores: bool = True
    seed: int = 0
    verbose: int = 0

    @property
    def max_requests(self) -> int:
        """Model proposal requests per problem and round at most: y, and the residual and
        ratio of each of ``proposal_members`` front members."""
        return 1 + 2 * self.proposal_members

    def check(self) -> None:
        for name in ("population_size", "max_length", "tournament_size", "refine_every"):
            check_int(name, getattr(self, name))
        for name in ("refine_top", "refine_iterations", "max_seeds", "proposal_every",
                     "proposal_members"):
            check_int(name, getattr(self, name), low=0)
        for name in ("generations", "max_evaluations"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=0)
        if self.max_time is not None and not (np.isfinite(self.max_time) and self.max_time >= 0):
            raise ValueError(f"max_time must be a non-negative number, got {self.max_time!r}")
        if self.generations is None and self.max_evaluations is None and self.max_time is None:
            raise ValueError("set generations, max_evaluations or max_time: the search needs "
                             "a limit")
        if not 0.0 <= self.proposal_share <= 1.0:
            raise ValueError(f"proposal_share must be in [0, 1], got {self.proposal_share!r}")
        if self.selection not in selection.SELECTIONS:
            raise ValueError(f"selection must be one of {selection.SELECTIONS}, "
                             f"got {self.selection!r}")
        variation.Alphabet.of(self.operators)
        self.rates.probabilities()
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A member of a final front: the formula with its fitted sum written in
    (``a + b_1 t_1 + ...``, each b folded into its term where it can be), its training
    error, complexity (as the search ranks it: the formula's nodes plus 2 per coefficient)
    and origin."""

    expr: Expr
    nmse: float
    complexity: int
    origin: str

    @property
    def r2(self) -> float:
        return 1.0 - self.nmse


@dataclasses.dataclass
class SearchResult:
    """Per problem, the Pareto front (simplest first); and how the search went."""

    fronts: list[list[Candidate]]
    generations: int
    evaluations: int
    seconds: float
    stopped: str                 # "generations", "max_evaluations", "max_time", "target_r2",
                                 # or "interrupted"
    history: list[dict]          # one entry per generation
    host_seconds: float = 0.0    # time the host did not wait for scoring or L-BFGS calls


# ---------------------------------------------------------------------------- state


@dataclasses.dataclass
class _Population:
    """Rows of all problems, each problem's rows contiguous."""

    genomes: Genomes
    # Kept with the genomes so that they are computed once per row (refinement changes
    # only float constants, which neither depends on).
    structure: Structure
    keys: np.ndarray  # skeleton keys (Genomes.skeleton_keys)
    scores: fitness.Scores
    problem: np.ndarray
    origin: np.ndarray
    refined: np.ndarray

    def take(self, rows) -> _Population:
        return _Population(self.genomes.take(rows), self.structure.take(rows), self.keys[rows],
                           self.scores.take(rows), self.problem[rows], self.origin[rows],
                           self.refined[rows])

    @staticmethod
    def concatenate(parts: Sequence[_Population]) -> _Population:
        cat = lambda f: np.concatenate([getattr(p, f) for p in parts])
        return _Population(Genomes.concatenate([p.genomes for p in parts]),
                           Structure.concatenate([p.structure for p in parts]), cat("keys"),
                           fitness.Scores.concatenate([p.scores for p in parts]),
                           cat("problem"), cat("origin"), cat("refined"))

    @property
    def complexity(self) -> np.ndarray:
        """Nodes of each formula with its fitted sum written in: the genome, plus a
        coefficient (a constant and a product) per term, plus the intercept's."""
        return self.genomes.length + 2 * self.scores.n_terms + 2

    def blocks(self, n_problems: int):
        start = np.searchsorted(self.problem, np.arange(n_problems))
        size = np.diff(np.append(start, len(self.problem)))
        return start, size


class _Clock:
    """Wall time, evaluations and the time the host waited for compiled calls (``device``;
    the rest is host work, overlapping the scoring)."""

    def __init__(self, settings: SearchSettings):
        self.start = time.perf_counter()
        self.settings = settings
        self.evaluations = 0
        self.device = 0.0
        self.proposing = 0.0  # seconds spent on model proposals

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.settings.max_time is not None and self.elapsed() >= self.settings.max_time

    def stop_reason(self, generation: int, solved: bool) -> str | None:
        s = self.settings
        if solved:
            return "target_r2"
        if s.generations is not None and generation >= s.generations:
            return "generations"
        if s.max_evaluations is not None and self.evaluations >= s.max_evaluations:
            return "max_evaluations"
        if self.out_of_time():
            return "max_time"
        return None


# ---------------------------------------------------------------------------- the loop


def evolve(problems: Sequence[tuple], seeds: Sequence[Sequence[Expr]] | None = None,
           settings: SearchSettings | None = None, proposer: Proposer | None = None,
           seed_origin: int = MODEL_SAMPLE, seeder: Seeder | None = None) -> SearchResult:
    """Evolves formulas for every problem at once.

    Args:
      problems: (X (n, d), y (n,)) or (X, y, sample_weight) per problem, in the units the
        formulas should use; variables are the columns of X.
      seeds: per problem, formulas to start from (for instance the model's samples); the
        rest of the population is random trees, plus a constant and a linear fit that
        always compete.
      settings: ``SearchSettings``.
      proposer: asks the model for formulas during the search (see ``Proposer``).
      seed_origin: the origin recorded for seeds (an index into ``ORIGINS``).
      seeder: gives each problem's seeds after ``proposal_every`` generations, where the
        target is not reached by then, rather than before the start: a problem that random
        trees solve in their first generations never waits for the seeds' decoding. Needs
        ``proposal_every`` > 0.

    Returns:
      A ``SearchResult``; stopped by Ctrl-C, it holds the fronts found so far.
    """
    settings = settings or SearchSettings(generations=50)
    settings.check()
    problems = [tuple(p) + (None,) * (3 - len(p)) for p in problems]
    data = fitness.Data.stack(problems, settings.width)
    n_variables = np.array([np.shape(p[0])[1] for p in problems])
    seeds = seeds if seeds is not None else [[] for _ in problems]
    if len(seeds) != len(problems):
        raise ValueError(f"got seeds for {len(seeds)} problems, expected {len(problems)}")
    if seeder is not None and not settings.proposal_every:
        raise ValueError("a seeder is asked after proposal_every generations: set "
                         "proposal_every > 0")
    rng = np.random.default_rng(settings.seed)
    clock = _Clock(settings)
    # From the start: the compiled calls are compiled inside (see ``cores``).
    with cores.separate_cores() if settings.separate_cores else contextlib.nullcontext():
        search = _Search(settings, data, n_variables, rng, clock, proposer, seeder, seed_origin)
        population = search.initial(seeds, problems)
        archive = search.update_archive(None, population)
        population, archive, history, stopped = _generations(search, population, archive,
                                                             _progress(settings))
        archive = search.update_archive(archive, search.merge_in_flight(population))
    fronts = search.fronts(archive)
    seconds = clock.elapsed()
    return SearchResult(fronts, len(history), clock.evaluations, seconds, stopped, history,
                        host_seconds=seconds - clock.device)


def _generations(search: _Search, population: _Population, archive: _Population, bar):
    """Generations until a stop; returns the population, archive, history and the reason."""
    history, stopped = [], None
    try:
        while True:
            solved = bool(np.all(search.best_r2(archive) >= search.settings.target_r2))
            stopped = search.clock.stop_reason(len(history), solved)
            if stopped:
                break
            population = search.generation(population, len(history))
            archive = search.update_archive(archive, population)
            history.append(search.record(len(history) + 1, archive))
            _show(bar, history[-1])
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    return population, archive, history, stopped


# Rows per scoring call at most: larger generations (a population of 16,384, or many
# problems in ``fit_many``) are scored in several calls. A call's interpreter buffers grow
# with its rows, and past this size their point blocks shrink to a few points, so that loop
# steps, not arithmetic, set the time (one core, 224 points: 4,096 candidates in 15 ms,
# 16,384 in one call in 200 ms).
MAX_SCORE_ROWS = 4096


def _score_calls(n_ops: np.ndarray, small: int, large: int, ops_per_row: int
                 ) -> list[tuple[int, int, int]]:
    """Consecutive calls ``(first, stop, size)`` scoring rows ``[first, stop)`` in a call of
    ``size`` rows (``small`` where the rows left fit it, else ``large``), each holding at
    most ``size * ops_per_row`` operator nodes (``n_ops`` per row): where rows hold more on
    average, a call takes fewer rows and the next call the rest."""
    total = np.concatenate([[0], np.cumsum(n_ops)])
    calls, first, n = [], 0, len(n_ops)
    while first < n:
        size = small if n - first <= small else large
        fits = np.searchsorted(total, total[first] + size * ops_per_row, side="right") - 1
        stop = max(first + 1, min(first + size, fits))  # one row always fits its call
        calls.append((first, stop, size))
        first = stop
    return calls


def _score_sizes(batch: int) -> tuple[int, int]:
    """(small, large) rows per scoring call for a search whose offspring are ``batch`` rows:
    the large size holds them in one call up to ``MAX_SCORE_ROWS``, the small one (an
    eighth) serves proposals."""
    large = min(next_power_of_two(batch, minimum=64), MAX_SCORE_ROWS)
    return max(64, large // 8), large


def _progress(settings: SearchSettings):
    if not settings.verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=settings.generations, desc="jaxsr evolve", unit="gen", leave=False)


def _show(bar, entry: dict) -> None:
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(evals_s=f"{entry['evaluations_per_second']:.3g}",
                    best_r2=f"{entry['best_r2']:.6f}", front=entry["front_size"])


class _Search:
    """The steps of ``evolve``; holds what every generation shares."""

    def __init__(self, settings, data, n_variables, rng, clock, proposer, seeder=None,
                 seed_origin=MODEL_SAMPLE):
        self.settings, self.data, self.rng, self.clock = settings, data, rng, clock
        self.n_variables = n_variables
        self.alphabet = variation.Alphabet.of(settings.operators)
        self.proposer, self.seeder, self.seed_origin = proposer, seeder, seed_origin
        self.awaiting_seeds = np.full(data.n_problems, seeder is not None)
        self.stalls = _Stalls(data.n_problems, settings.proposal_every)
        # Children being scored: (genomes, structure, problem, pending scores).
        self.in_flight = None
        pools = [self._random_genomes(POOL_SIZE, d, small=True) for d in n_variables]
        self.pool = Genomes.concatenate(pools)
        self.pool_start = np.cumsum([0] + [p.size for p in pools])[:-1]
        self.pool_size = np.array([p.size for p in pools])
        self.rates = self._rates()
        # a + sum_k b_k t_k adds at most 2 + 2 MAX_TERMS nodes and 1 + MAX_TERMS constants
        # to the longest f (proposals f + g, f * g longer than max_length are dropped before
        # refinement). The capacities are fixed for the search, so that the solver compiles
        # once: a compilation costs seconds on a CPU. Constants and depth cover the longest
        # formula. Operator nodes are counted per formula on average over the batch: half
        # the longest formula (a binary tree's share of operators) holds all but batches of
        # mostly unary chains, for which the solver compiles a larger size once. Taking the
        # longest formula instead made every L-BFGS step clear and sweep buffers twice the
        # size: refinement took 40% longer (measured).
        longest = settings.max_length + 2 + 2 * fitness.MAX_TERMS
        bound = next_power_of_two(longest)
        self.refine_size = ProgramSize(ops=next_power_of_two(-(-longest // 2)),
                                       constants=bound, depth=bound)
        # Scoring calls take one of two sizes (each compiles once): the offspring of all
        # problems, and an eighth of it for small batches (proposals), both with the same
        # capacities per row; rows padding a call are one-node formulas.
        self.score_sizes = _score_sizes(settings.population_size * data.n_problems)
        self.score_size = scoring_size(settings.max_length)
        self.filler = Genomes.filler(self.score_sizes[1], settings.max_length)
        self.filler_structure = Structure.of(self.filler)

    def _rates(self) -> np.ndarray:
        p = self.settings.rates.probabilities()
        if not len(self.alphabet.unary):  # nothing to insert or remove
            p[[variation.OPERATORS.index("insert_unary"),
               variation.OPERATORS.index("remove_unary")]] = 0
        return p / p.sum()

    # ------------------------------------------------------------------ scoring

    def dispatch(self, genomes: Genomes, structure: Structure, problem: np.ndarray
                 ) -> list[tuple]:
        """Starts scoring rows in the calls ``_score_calls`` lays out; ``collect`` waits
        for the scores."""
        parts = []
        for first, stop, size in _score_calls(operator_counts(structure), *self.score_sizes,
                                              self.score_size.ops):
            rows = slice(first, stop)
            part, part_structure, part_problem = (genomes.take(rows), structure.take(rows),
                                                  problem[rows])
            if stop - first < size:  # padded with one-node rows (no operator nodes)
                pad = slice(0, size - (stop - first))
                part = Genomes.concatenate([part, self.filler.take(pad)])
                part_structure = Structure.concatenate([part_structure,
                                                        self.filler_structure.take(pad)])
                part_problem = np.r_[part_problem, np.zeros(pad.stop, part_problem.dtype)]
            parts.append((fitness.dispatch(part, part_problem, self.data, self.settings.dtype,
                                           part_structure, self.score_size), stop - first))
        self.clock.evaluations += genomes.size
        return parts

    def collect(self, parts: list[tuple]) -> fitness.Scores:
        started = time.perf_counter()
        scores = fitness.Scores.concatenate([p.result().take(slice(k)) for p, k in parts])
        self.clock.device += time.perf_counter() - started
        return scores

    def _population(self, genomes, problem, origin, structure=None,
                    pending=None) -> _Population:
        """Rows scored (``pending``: their scoring, already started)."""
        structure = Structure.given(genomes, structure)
        if pending is None:
            pending = self.dispatch(genomes, structure, problem)
        return _Population(genomes, structure, genomes.skeleton_keys(), self.collect(pending),
                           problem, origin, np.zeros(genomes.size, bool))

    # ------------------------------------------------------------------ start

    def initial(self, seeds, problems) -> _Population:
        """Each problem's best ``max_seeds`` seeds, its baselines and ``population_size``
        random trees, scored; the survivors, their best refined."""
        parts = []
        M, L = self.settings.population_size, self.settings.max_length
        for q, d in enumerate(self.n_variables):
            own, _ = Genomes.from_exprs(list(seeds[q]), L)
            base, _ = Genomes.from_exprs(_baselines(*problems[q], d), L)
            rand = self._random_genomes(M, d, small=False)
            genomes = Genomes.concatenate([own, base, rand])
            origin = np.r_[np.full(own.size, self.seed_origin), np.full(base.size, BASELINE),
                           np.full(rand.size, RANDOM_TREE)].astype(np.int8)
            parts.append((genomes, np.full(genomes.size, q), origin))
            self._add_fragments(q, own)
        genomes = Genomes.concatenate([p[0] for p in parts])
        population = self._population(genomes, np.concatenate([p[1] for p in parts]),
                                      np.concatenate([p[2] for p in parts]))
        population = population.take(self._without_extra_seeds(population))
        population = self.survive(population)
        return self.refine(population, INITIAL_REFINE_ITERATIONS)

    def _add_fragments(self, q: int, seeds: Genomes) -> None:
        """Replaces random trees of problem q's donor pool by the seeds' subtrees."""
        fragments = variation.subtrees(seeds, *FRAGMENT_NODES)
        n = min(fragments.size, int(FRAGMENT_SHARE * self.pool_size[q]))
        if not n:
            return
        fragments = fragments.take(self.rng.choice(fragments.size, n, replace=False))
        rows = self.pool_start[q] + np.arange(n)
        for field in ("kind", "arg", "value", "length"):
            getattr(self.pool, field)[rows] = getattr(fragments, field)

    def _without_extra_seeds(self, population: _Population) -> np.ndarray:
        """Rows to keep: all but the seeds beyond each problem's ``max_seeds`` best."""
        seeded = population.origin == self.seed_origin
        kept = _best_per_problem(population, seeded, self.settings.max_seeds)
        return np.sort(np.r_[np.flatnonzero(~seeded), kept])

    def _random_genomes(self, n: int, dimension: int, small: bool) -> Genomes:
        exprs = random_trees(self.rng, n, int(dimension), self.alphabet,
                             max_binary=2 if small else int(dimension) + 2)
        genomes, _ = Genomes.from_exprs(exprs, self.settings.max_length)
        return genomes

    # ------------------------------------------------------------------ one generation

    def generation(self, population: _Population, generation: int) -> _Population:
        """Makes this generation's children and starts scoring them, then merges the
        previous generation's children, scored meanwhile: the host builds a generation
        while the compiled calls score the one before (children thus come from parents one
        generation old). ``merge_in_flight`` merges the last children."""
        child, structure, problem = self.offspring_genomes(population)
        in_flight = (child, structure, problem, self.dispatch(child, structure, problem))
        population = self.merge_in_flight(population)
        self.in_flight = in_flight
        s = self.settings
        # Refinement and proposals are the long steps of a generation: skipped once time is
        # up, so that max_time is overrun by at most one scoring call.
        if s.refine_top and generation % s.refine_every == 0 and not self.clock.out_of_time():
            population = self.refine(population)
        asks_model = self.proposer is not None or self.seeder is not None
        if asks_model and s.proposal_every and not self.clock.out_of_time():
            population = self.ask_model_where_stuck(population, generation)
        return population

    def merge_in_flight(self, population: _Population) -> _Population:
        """The survivors of ``population`` and the children being scored, if any."""
        if self.in_flight is None:
            return population
        child, structure, problem, pending = self.in_flight
        self.in_flight = None
        children = self._population(child, problem, np.full(child.size, EVOLVED, np.int8),
                                    structure, pending)
        return self.survive(_Population.concatenate([population, children]))

    def offspring_genomes(self, population: _Population
                          ) -> tuple[Genomes, Structure, np.ndarray]:
        """``population_size`` children per problem (before scoring), their structure and
        their problems."""
        s, Q = self.settings, self.data.n_problems
        start, size = population.blocks(Q)
        pick = lambda: selection.tournament(self.rng, population.scores.nmse,
                                            population.complexity, start, size,
                                            s.population_size, s.tournament_size)
        parents, mates = pick(), pick()
        # Rows grouped by the operator they drew: each operator then works on views of one
        # contiguous slice instead of copies of scattered rows.
        op = self.rng.choice(len(variation.OPERATORS), size=len(parents), p=self.rates)
        order = np.argsort(op, kind="stable")
        parents, mates, op = parents[order], mates[order], op[order]
        child, structure = self.vary(population, parents, mates, op)
        return *variation.fold_constants(child, structure), population.problem[parents]

    def vary(self, population: _Population, parent_rows: np.ndarray, mate_rows: np.ndarray,
             op: np.ndarray) -> tuple[Genomes, Structure]:
        """Operator ``op[i]`` (an index into ``variation.OPERATORS``, sorted) applied to
        population row ``parent_rows[i]`` (crossover with row ``mate_rows[i]``); a child that
        does not fit ``max_length``, or equals its parent, is its parent point-mutated.
        Returns the children and their structure (computed only for the rows whose shape
        changed)."""
        problem = population.problem[parent_rows]
        parents = population.genomes.take(parent_rows)
        structure = population.structure.take(parent_rows)
        child = dataclasses.replace(parents, kind=parents.kind.copy(), arg=parents.arg.copy(),
                                    value=parents.value.copy(), length=parents.length.copy())
        reshaped = np.zeros(child.size, bool)
        bounds = np.searchsorted(op, np.arange(len(variation.OPERATORS) + 1))
        for k, name in enumerate(variation.OPERATORS):
            rows = slice(bounds[k], bounds[k + 1])
            if bounds[k] == bounds[k + 1]:
                continue
            # Only crossover reads its mates: their rows are gathered for its slice alone.
            mates = lambda rows=rows: (population.genomes.take(mate_rows[rows]),
                                       population.structure.take(mate_rows[rows]))
            made, fits = self._apply(name, parents.take(rows), mates, problem[rows],
                                     structure.take(rows))
            for field in ("kind", "arg", "value", "length"):
                getattr(child, field)[rows][fits] = getattr(made, field)[fits]
            reshaped[rows] = fits & (name not in variation.SHAPE_PRESERVING)
        # A child equal to its parent (nothing to change, or a result too long: 16% of
        # children, measured) would only be scored again: it gets a point mutation instead.
        same = np.flatnonzero(child.same_rows(parents))
        if len(same):
            made, _ = variation.point_mutation(self.rng, child.take(same), self.alphabet,
                                               self.n_variables[problem[same]])
            for field in ("kind", "arg", "value"):
                getattr(child, field)[same] = getattr(made, field)
        changed = np.flatnonzero(reshaped)
        return child, structure.replace_rows(changed, Structure.of(child.take(changed)))

    def _apply(self, name, parents, mates, problem, structure):
        """Variation ``name`` on rows whose problems and structures are given; ``mates()``
        returns the mates' genomes and structure."""
        rng, alphabet = self.rng, self.alphabet

        def crossover():
            mate_genomes, mate_structure = mates()
            return variation.crossover(rng, parents, mate_genomes, structure, mate_structure)

        table = {
            "crossover": crossover,
            "subtree": lambda: variation.subtree_mutation(rng, parents,
                                                          self._fresh_trees(problem), structure),
            "point": lambda: variation.point_mutation(rng, parents, alphabet,
                                                      self.n_variables[problem]),
            "constants": lambda: variation.jitter_constants(rng, parents),
            "insert_unary": lambda: variation.insert_unary(rng, parents, alphabet),
            "remove_unary": lambda: variation.remove_unary(rng, parents),
            "hoist": lambda: variation.hoist(rng, parents, structure),
        }
        return table[name]()

    def _fresh_trees(self, problem: np.ndarray) -> Genomes:
        """One random tree per row from its problem's pool."""
        draw = (self.rng.random(len(problem)) * self.pool_size[problem]).astype(int)
        return self.pool.take(self.pool_start[problem] + draw)

    def survive(self, population: _Population) -> _Population:
        unique = selection.unique_best(population.keys, population.problem,
                                       population.scores.nmse)
        nmse, problem = population.scores.nmse[unique], population.problem[unique]
        keep = unique[selection.survivors(nmse, population.complexity[unique], problem,
                                          self.settings.population_size,
                                          self.settings.selection)]
        # Rows stay grouped by problem: tournaments draw from each problem's block.
        return population.take(keep[np.argsort(population.problem[keep], kind="stable")])

    # ------------------------------------------------------------------ refinement

    def refine(self, population: _Population, iterations: int | None = None) -> _Population:
        """L-BFGS on each problem's best ``refine_top`` unrefined rows (constants of f, and
        the scaling a, b), written back."""
        k = self.settings.refine_top
        if not k or self.settings.refine_iterations == 0:
            return population
        rows = _best_unrefined(population, k)
        population.refined[rows] = True  # formulas without constants: scaling is optimal
        rows = rows[(population.genomes.kind[rows] == KIND_CONST).any(axis=1)]
        if not len(rows):
            return population
        genomes, scores = population.genomes.take(rows), population.scores.take(rows)
        terms = Terms.of(genomes, population.structure.take(rows), fitness.MAX_TERMS)
        free = FreeSum.of(genomes, terms, scores.intercept, scores.coefficients)
        refined = self._lbfgs(free.nodes(), population.problem[rows],
                              iterations or self.settings.refine_iterations)
        better = np.isfinite(refined.nmse) & (refined.nmse < scores.nmse)
        value, intercept, coefficients = free.split(refined.params, genomes.value)
        changed = rows[better]
        population.genomes.value[changed] = value[better]
        population.scores.intercept[changed] = intercept[better]
        population.scores.coefficients[changed] = coefficients[better]
        population.scores.nmse[changed] = refined.nmse[better]
        return population

    def _lbfgs(self, nodes: Nodes, problem: np.ndarray, iterations: int) -> Refined:
        started = time.perf_counter()
        settings = solver_settings(self.settings.dtype, max_iter=iterations)
        # The solver is synchronous (nothing to overlap) and its many small steps ran
        # faster with XLA's threads on every core (measured); so does its compilation.
        with cores.shared_cores():
            refined = refine_nodes(nodes, self.data, problem, settings,
                                   dtype=self.settings.dtype, min_size=self.refine_size)
        self.clock.device += time.perf_counter() - started
        return refined

    # ------------------------------------------------------------------ model proposals

    def ask_model_where_stuck(self, population: _Population, generation: int) -> _Population:
        """Seeds for the problems that still await them (``seeder``) and are unsolved after
        ``proposal_every`` generations; proposals for the others whose search has stalled,
        while proposals have taken at most ``proposal_share`` of the time. Seeds come once
        per problem, whatever the share."""
        s = self.settings
        self.stalls.update(population, generation)
        unsolved = self.stalls.best > 1.0 - s.target_r2
        to_seed = np.flatnonzero(self.awaiting_seeds & unsolved
                                 & (generation >= s.proposal_every))
        to_propose = self.stalls.stuck(generation)
        to_propose = to_propose[~self.awaiting_seeds[to_propose]]
        out_of_share = self.clock.proposing >= s.proposal_share * self.clock.elapsed()
        if self.proposer is None or out_of_share:
            to_propose = to_propose[:0]
        if not len(to_seed) and not len(to_propose):
            return population
        started = time.perf_counter()
        if len(to_seed):
            population = self.add_seeds(population, to_seed)
        if len(to_propose):
            population = self.propose(population, to_propose)
        population = self.survive(population)
        self.stalls.answered(to_propose, population)
        self.clock.proposing += time.perf_counter() - started
        self.stalls.asked[np.r_[to_seed, to_propose]] = generation
        return population

    def add_seeds(self, population: _Population, problems: np.ndarray) -> _Population:
        """The seeder's formulas for ``problems`` join the population as the first
        population's seeds do: each problem's ``max_seeds`` best kept, their subtrees in
        its donor pool, the best refined."""
        self.awaiting_seeds[problems] = False
        with cores.shared_cores():  # decoding uses every core it can
            found = self.seeder([int(q) for q in problems])
        parts = [(Genomes.from_exprs(list(exprs), self.settings.max_length)[0], q)
                 for q, exprs in zip(problems, found)]
        for genomes, q in parts:
            self._add_fragments(q, genomes)
        genomes = Genomes.concatenate([g for g, _ in parts])
        if not genomes.size:
            return population
        owner = np.concatenate([np.full(g.size, q) for g, q in parts])
        fresh = self._population(genomes, owner,
                                 np.full(genomes.size, self.seed_origin, np.int8))
        return self._join(population, fresh.take(self._without_extra_seeds(fresh)))

    def propose(self, population: _Population, problems: Sequence[int]) -> _Population:
        """Asks the proposer for g on y, on y - f and on y / f of the best f of each of
        ``problems``; adds the g, f + g and f * g that fit, refined."""
        s = self.settings
        start, size = population.blocks(self.data.n_problems)
        requests, bases = [], []
        for q in problems:
            n = int(np.sum(self.data.weight[q] > 0))
            y = self.data.y[q, :n]
            requests.append((q, y))
            bases.append(None)
            block = start[q] + np.argsort(population.scores.nmse[start[q]: start[q] + size[q]],
                                          kind="stable")[: s.proposal_members]
            for row in block:
                f = _formula(population, row)
                with np.errstate(all="ignore"):
                    values = f.evaluate(self.data.X[q, :n, : self.n_variables[q]])
                if not np.all(np.isfinite(values)):
                    continue
                requests.append((q, y - values))
                bases.append(("add", f))
                if np.all(np.abs(values) > 1e-12 * np.abs(values).max()):
                    requests.append((q, y / values))
                    bases.append(("mul", f))
        with cores.shared_cores():  # decoding uses every core it can
            proposals = self.proposer(requests, int(self.rng.integers(1 << 31)))
        exprs, owner = [], []
        for (q, _), base, found in zip(requests, bases, proposals):
            for g in found:
                exprs.append(g if base is None else Expr.op(base[0], base[1], g))
                owner.append(q)
        if not exprs:
            return population
        genomes, kept = Genomes.from_exprs(exprs, self.settings.max_length)
        if not genomes.size:
            return population
        problem = np.asarray(owner)[kept]
        return self._join(population, self._population(
            genomes, problem, np.full(genomes.size, MODEL_PROPOSAL, np.int8)))

    def _join(self, population: _Population, fresh: _Population) -> _Population:
        """``population`` with the scored rows ``fresh`` (the model's formulas), the best
        ``refine_top`` of each problem's refined first, as the first population's are (a
        batch of the usual size reuses the compiled solver)."""
        fresh = self.refine(fresh.take(np.argsort(fresh.problem, kind="stable")),
                            INITIAL_REFINE_ITERATIONS)
        merged = _Population.concatenate([population, fresh])
        return merged.take(np.argsort(merged.problem, kind="stable"))

    # ------------------------------------------------------------------ archive and output

    def update_archive(self, archive: _Population | None, population: _Population):
        # Only the population's own front can reach the archive's (a row dominated in the
        # population stays dominated): the rest of the work is on a few rows per problem.
        population = population.take(np.flatnonzero(selection.non_dominated(
            population.scores.nmse, population.complexity, population.problem)))
        merged = population if archive is None else _Population.concatenate([archive, population])
        keep = selection.unique_best(merged.keys, merged.problem, merged.scores.nmse)
        merged = merged.take(keep)
        ranks = selection.pareto_ranks(merged.scores.nmse, merged.complexity, merged.problem)
        front = merged.take(np.flatnonzero((ranks == 0) & np.isfinite(merged.scores.nmse)))
        # Members equal on both objectives share the front; one of them is enough.
        front = front.take(selection.unique_best(front.complexity, front.problem,
                                                 front.scores.nmse))
        return front.take(np.argsort(front.problem, kind="stable"))

    def best_r2(self, archive: _Population) -> np.ndarray:
        return 1.0 - _best_errors(archive, self.data.n_problems)

    def record(self, generation: int, archive: _Population) -> dict:
        elapsed = self.clock.elapsed()
        return {"generation": generation, "seconds": elapsed,
                "evaluations": self.clock.evaluations,
                "evaluations_per_second": self.clock.evaluations / max(elapsed, 1e-9),
                "best_r2": float(np.min(self.best_r2(archive))),
                "front_size": int(len(archive.problem))}

    def fronts(self, archive: _Population) -> list[list[Candidate]]:
        out = [[] for _ in range(self.data.n_problems)]
        order = np.lexsort((archive.complexity, archive.problem))
        for row in order:
            expr = _formula(archive, row)
            out[archive.problem[row]].append(Candidate(
                expr, float(archive.scores.nmse[row]), int(archive.complexity[row]),
                ORIGINS[archive.origin[row]]))
        return out


class _Stalls:
    """Per problem: the best error so far, the generation it last improved, the last
    generation the model was asked for proposals, and the generations to wait before it is
    asked again (``patience``)."""

    def __init__(self, n_problems: int, patience: int):
        self.best = np.full(n_problems, np.inf)
        self.improved = np.zeros(n_problems, int)
        self.asked = np.zeros(n_problems, int)
        self.base = patience
        self.patience = np.full(n_problems, patience)

    def update(self, population: _Population, generation: int) -> None:
        best = _best_errors(population, len(self.best))
        self.improved[self._progress(best)] = generation
        self.best = np.minimum(self.best, best)

    def stuck(self, generation: int) -> np.ndarray:
        """Problems without improvement, and not asked, for their ``patience``."""
        return np.flatnonzero((generation - self.improved >= self.patience)
                              & (generation - self.asked >= self.patience))

    def answered(self, problems: np.ndarray, population: _Population) -> None:
        """After a proposal round for ``problems`` (before the next ``update``): where it
        improved the best error, patience returns to its base; where it did not, it doubles.
        A problem the model's answers do not help is asked about ever less often, and its
        search keeps the time (on problems the model cannot solve, rounds took 10-15% of a
        5 s fit and never improved the best, measured)."""
        helped = self._progress(_best_errors(population, len(self.best)))[problems]
        self.patience[problems] = np.where(helped, self.base, 2 * self.patience[problems])

    def _progress(self, best: np.ndarray) -> np.ndarray:
        return best < (1.0 - STALL_IMPROVEMENT) * self.best - NMSE_RESOLUTION


def _best_errors(population: _Population, n_problems: int) -> np.ndarray:
    """(n_problems,) the lowest error of each problem's rows (inf where it has none)."""
    best = np.full(n_problems, np.inf)
    np.minimum.at(best, population.problem, population.scores.nmse)
    return best


def _best_unrefined(population: _Population, k: int) -> np.ndarray:
    """Each problem's ``k`` lowest-error rows not yet refined (finite errors only)."""
    return _best_per_problem(population, ~population.refined, k)


def _best_per_problem(population: _Population, among: np.ndarray, k: int) -> np.ndarray:
    """Each problem's ``k`` lowest-error rows where ``among`` holds (finite errors only),
    sorted."""
    candidates = np.flatnonzero(among & np.isfinite(population.scores.nmse))
    order = candidates[np.lexsort((population.scores.nmse[candidates],
                                   population.problem[candidates]))]
    p = population.problem[order]
    place = np.arange(len(order)) - np.searchsorted(p, p, side="left")
    return np.sort(order[place < k])


# ---------------------------------------------------------------------------- formulas


def _formula(population: _Population, row: int) -> Expr:
    """Row ``row`` with its fitted intercept and term coefficients written in."""
    genomes = population.genomes.take([row])
    terms = Terms.of(genomes, Structure.of(genomes), fitness.MAX_TERMS)
    return fitted_sum(terms.exprs(genomes, 0), population.scores.intercept[row],
                      population.scores.coefficients[row])


def fitted_sum(terms: Sequence[Expr], intercept: float, coefficients) -> Expr:
    """``a + b_1 t_1 + ...`` as it reads best: equal terms merged (x + x shares one weight
    between two copies in the least squares: 1.5 x + 1.5 x is written 3 x), b taken into a
    term's leading constant factor, terms without variables added into a, terms with b = 0
    left out."""
    merged: dict[Expr, float] = {}
    for t, b in zip(terms, coefficients):
        merged[t] = merged.get(t, 0.0) + float(b)
    body = None
    for t, b in merged.items():
        if b == 0.0:
            continue
        if not t.variables():
            with np.errstate(all="ignore"):
                value = float(np.asarray(t.evaluate(np.zeros((1, 1)))).reshape(-1)[0])
            intercept = intercept + b * value if np.isfinite(value) else intercept
            continue
        if t.token == "mul" and t.children[0].is_constant:
            t = Expr.op("mul", Expr.const(b * t.children[0].value), t.children[1])
        elif b != 1.0:
            t = Expr.op("mul", Expr.const(b), t)
        body = t if body is None else Expr.op("add", body, t)
    return Expr.const(intercept) if body is None else Expr.op("add", Expr.const(intercept), body)


def _baselines(X: np.ndarray, y: np.ndarray, weight, dimension: int) -> list[Expr]:
    """A constant, the linear model in every variable, each variable alone (the scaling
    supplies the coefficients) and, where logarithms apply, a power law."""
    X = np.asarray(X)
    linear = Expr.var(0)
    for k in range(1, dimension):
        linear = Expr.op("add", linear, Expr.op("mul", Expr.const(1.0), Expr.var(k)))
    power = _power_law(X[:, :dimension], np.asarray(y), weight)
    return [Expr.const(1.0), linear, *(Expr.var(k) for k in range(dimension)),
            *([power] if power is not None else [])]


# Power-law exponents are rounded to multiples of this (square roots included).
POWER_STEP = 0.5
MAX_POWER = 4


def _power_law(X: np.ndarray, y: np.ndarray, weight) -> Expr | None:
    """``prod_k x_k^e_k`` with the exponents of the least-squares fit of ``log |y|`` on the
    logs of the positive columns, rounded to halves (the scaling supplies the factor). A
    product of powers, common in physical laws, is linear after logarithms: one solve
    finds what the search would assemble factor by factor. None when y changes sign or no
    column is positive."""
    positive = np.flatnonzero(np.all(X > 0, axis=0))
    if not len(positive) or not (np.all(y > 0) or np.all(y < 0)):
        return None
    root = np.sqrt(np.ones(len(y)) if weight is None else np.asarray(weight, float))
    Z = np.column_stack([np.ones(len(y)), np.log(X[:, positive])])
    with np.errstate(all="ignore"):
        coef = np.linalg.lstsq(Z * root[:, None], np.log(np.abs(y)) * root, rcond=None)[0]
    powers = np.clip(np.round(coef[1:] / POWER_STEP) * POWER_STEP, -MAX_POWER, MAX_POWER)
    top = _product([_power(k, e) for k, e in zip(positive, powers) if e > 0])
    bottom = _product([_power(k, -e) for k, e in zip(positive, powers) if e < 0])
    if bottom is None:
        return top
    return Expr.op("div", top if top is not None else Expr.const(1.0), bottom)


def _power(k: int, e: float) -> Expr:
    """x_k^e for a positive multiple e of 1/2."""
    x = Expr.var(int(k))
    return _product([x] * int(e) + ([Expr.op("sqrt", x)] if e % 1 > 0 else []))


def _product(factors: list[Expr]) -> Expr | None:
    """The product of ``factors`` as a tree (None for none)."""
    out = None
    for f in factors:
        out = f if out is None else Expr.op("mul", out, f)
    return out


def random_trees(rng: np.random.Generator, n: int, dimension: int,
                 alphabet: variation.Alphabet, max_binary: int) -> list[Expr]:
    """``n`` random formulas from the training generator's tree sampler (uniform binary
    skeletons, variables at the leaves, unaries inserted above small subtrees, constants by
    its placement rules), restricted to the search's operators."""
    config = GeneratorConfig()
    binary = trees.OperatorSampler(tuple((operators.FUNCTIONS[c].name, 1.0)
                                         for c in alphabet.binary))
    unary = (trees.OperatorSampler(tuple((operators.FUNCTIONS[c].name, 1.0)
                                         for c in alphabet.unary))
             if len(alphabet.unary) else None)
    constants = trees.ConstantSampler(rng, config)
    out = []
    for _ in range(n):
        n_binary = int(rng.integers(0, max_binary + 1))
        root, leaves = trees.random_skeleton(rng, n_binary, binary)
        trees.assign_leaves(rng, leaves, dimension, config)
        if unary is not None:
            trees.insert_unaries(rng, root, int(rng.integers(0, 3)), unary,
                                 config.max_unary_depth)
        if rng.random() < 0.5:
            root = trees.place_constants(root, constants, config)
        out.append(trees.to_expr(root))
    return out
