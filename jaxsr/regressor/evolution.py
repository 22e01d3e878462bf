"""``search="evolve"``: the model's samples seed ``jaxsr.search.evolve``, the model proposes
formulas during the run, and the formula is chosen on rows the search never saw.

    split rows -> sample (the paper's protocol, on the training part) -> evolve -> choose

Rows: a problem's fit rows are split into a training part (75%) and a validation part.
The search scores candidates on at most ``SEARCH_ROWS`` training rows. Its Pareto front,
with a linear fit, is then measured on all training rows and on the validation rows, and
``choose`` picks the simplest formula whose validation error is within tolerance of the
best one, preferring formulas that do not blow up between the training rows.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from jaxsr import decode
from jaxsr.expr import Expr, encode_points
from jaxsr.refine.reference import scipy_refine
from jaxsr.regressor import pipeline
from jaxsr.regressor.inputs import FitProblem
from jaxsr.regressor.models import LoadedModel
from jaxsr.search import SearchSettings, evolve
from jaxsr.search.engine import MODEL_SAMPLE

VALIDATION_FRACTION = 0.25
MIN_VALIDATION_ROWS = 4       # fewer rows than this: choose on the training rows
SEARCH_ROWS = 256             # training rows the search scores candidates on, at most
# The chosen formula is the simplest one whose validation NMSE (MSE / variance of y) is
# at most best * (1 + RELATIVE_TOLERANCE) + ABSOLUTE_TOLERANCE.
RELATIVE_TOLERANCE = 0.05
ABSOLUTE_TOLERANCE = 1e-10
SEEDING_SHARE = 0.1           # of max_time, for sampling the seeds
SEED_SAMPLES = 32             # samples per bag at most (n_candidates is the sampler's 100)
CHOOSING_SHARE = 0.1          # of the time left after seeding, for polishing the finalists
SEED_TOKENS = 96              # longest seed, in tokens (about the search's 32 nodes)
PROPOSALS_PER_TARGET = 16     # model samples per proposal request
PROPOSAL_TOKENS = 96          # longest proposal, in tokens (about the search's 32 nodes)
DEFAULT_GENERATIONS = 40      # when neither generations nor max_time is given
# Before the rule picks, the simplest POLISH_LIMIT finalists within POLISH_BAND x the lowest
# validation NMSE + POLISH_FLOOR get float64 BFGS (at most POLISH_ITERATIONS steps, until
# the gradient of the NMSE is below POLISH_GTOL) on all training rows.
POLISH_LIMIT = 8
PRUNE_ROUNDS = 2              # contenders' sums also compete without one term, twice
POLISH_BAND, POLISH_FLOOR = 1e3, 1e-6
POLISH_ITERATIONS, POLISH_GTOL = 100, 1e-14
# The rule prefers formulas that stay calm inside the training rows' bounding box: on
# PROBE_POINTS uniform points there, no value (NaN aside) farther than BLOW_UP x the range
# of y from the median of y. Where every formula within tolerance blows up, the rule is
# applied to the calm formulas whose validation NMSE is at most CALM_BAND x the lowest.
PROBE_POINTS = 4096
BLOW_UP = 100.0
CALM_BAND = 10.0
SOURCE_BASELINE = "baseline"
# When the model's seeds join the search (``seeds``): before it starts (the default), or
# for each problem still unsolved after its first generations (then a problem that random
# trees solve at once never waits for decoding; with the default model, measured no
# better than at the start: the model card's ablation).
SEEDS_AT_START, SEEDS_DEFERRED = "model", "model-deferred"
SEEDS = (SEEDS_AT_START, SEEDS_DEFERRED, "random")


@dataclasses.dataclass(frozen=True)
class Rows:
    """A problem's fit rows split for the search (seeded by the problem's generator)."""

    train: np.ndarray
    validation: np.ndarray
    search: np.ndarray

    @staticmethod
    def split(problem: FitProblem) -> Rows:
        rows = problem.fit_rows
        order = problem.rng.permutation(len(rows))
        n_val = int(round(VALIDATION_FRACTION * len(rows)))
        if n_val < MIN_VALIDATION_ROWS or len(rows) - n_val < 2:
            n_val = 0
        train = np.sort(rows[order[n_val:]])
        search = np.sort(rows[order[n_val:][:SEARCH_ROWS]])
        return Rows(train, np.sort(rows[order[:n_val]]), search)


# ---------------------------------------------------------------------------- proposals


class ModelProposer:
    """Asks the model for formulas fitting given targets on a problem's search rows (the
    search's ``Proposer``): one bag per request, ``PROPOSALS_PER_TARGET`` samples each,
    returned in the user's units and as written (see ``ModelSeeder``)."""

    def __init__(self, loaded: LoadedModel, problems: list[FitProblem], rows: list[Rows],
                 settings: pipeline.PipelineSettings, asked: list[int], requests_per_problem: int):
        self.loaded, self.problems, self.rows = loaded, problems, rows
        self.asked = set(asked)  # the problems the model can read; others get nothing
        # Every call decodes this many bags (unused ones are copies): one compiled decoder
        # for the whole search, whatever the number of requests.
        self.max_requests = requests_per_problem * len(asked)
        # Proposals longer than the search's formulas are dropped anyway: decoding fewer
        # tokens makes each call (whose cost is its number of steps) shorter.
        self.settings = dataclasses.replace(settings, n_candidates=PROPOSALS_PER_TARGET,
                                            decoding="sampling",
                                            max_len=min(settings.max_len, PROPOSAL_TOKENS))
        # One decoding call for all requests: a call costs about the same for 2 bags or 8.
        self.clock = pipeline.Clock(None, 0)

    def __call__(self, requests, seed: int) -> list[list[Expr]]:
        n_points = self.settings.max_input_points
        kept, ids = [], []
        for r, (q, target) in enumerate(requests):
            if q not in self.asked:
                continue
            p, rows = self.problems[q], self.rows[q].search
            take = np.linspace(0, len(rows) - 1, min(n_points, len(rows))).astype(int)
            try:
                ids.append(encode_points(p.standardised(rows[take]), target[take],
                                         max_dimension=self.loaded.max_features))
            except ValueError:  # a target the model cannot read (too large, not finite)
                continue
            kept.append(r)
        out = [[] for _ in requests]
        if not kept:
            return out
        n_bags = max(self.max_requests, len(kept))
        point_ids = np.zeros((n_bags, n_points, ids[0].shape[1]), np.int32)
        mask = np.zeros((n_bags, n_points), bool)
        for b in range(n_bags):
            a = ids[min(b, len(ids) - 1)]
            point_ids[b, : len(a)], mask[b, : len(a)] = a, True
        owners = [requests[r][0] for r in kept]
        bags = pipeline.Bags(point_ids, mask, np.array(owners + owners[-1:] * (n_bags - len(kept))))
        settings = dataclasses.replace(self.settings, seed=seed)
        tokens, lengths = pipeline.decode_bags(self.loaded, bags, settings, self.clock)
        for b, r in enumerate(kept[: len(tokens)]):
            p = self.problems[requests[r][0]]
            parsed = decode.to_expressions(tokens[b: b + 1], lengths[b: b + 1])
            usable = [e for e in parsed.exprs if max(e.variables(), default=-1) < p.n_selected]
            out[r] = [pipeline.unscale(e, p) for e in usable] + usable
        return out


# ---------------------------------------------------------------------------- the pass


def run(problems: list[FitProblem], loaded: LoadedModel, settings: pipeline.PipelineSettings,
        clock: pipeline.Clock) -> list[pipeline.FitOutcome]:
    """Seeds, evolves and chooses for all ``problems`` at once."""
    rows = [Rows.split(p) for p in problems]
    training = [dataclasses.replace(p, fit_rows=r.train) for p, r in zip(problems, rows)]
    seeder = ModelSeeder(training, loaded, settings, clock)
    seeds, deferred = None, None
    if settings.seeds == SEEDS_AT_START:
        seeds = seeder.at_start()
    elif settings.seeds == SEEDS_DEFERRED and seeder.asked:
        deferred = seeder
    with clock.stage("search"):
        search_settings = _search_settings(settings, clock, loaded.max_features)
        proposer, asked = None, readable(problems, loaded)
        if settings.model_proposals and settings.seeds != "random" and asked \
                and not loaded.untrained:
            proposer = ModelProposer(loaded, problems, rows, settings, asked,
                                     search_settings.max_requests)
        result = evolve(
            [(p.user_units(r.search), p.y[r.search], p.weight[r.search])
             for p, r in zip(problems, rows)],
            seeds=seeds, settings=search_settings, proposer=proposer,
            seed_origin=MODEL_SAMPLE, seeder=deferred)
    if result.stopped in ("max_time", "interrupted"):
        clock.stopped_early = True
    with clock.stage("select"):
        outcomes = []
        for i, p in enumerate(problems):
            counts = seeder.counts[i]
            counts.update(generations=result.generations, evaluations=result.evaluations,
                          stopped=result.stopped)
            finalists = [(c.expr, c.origin) for c in result.fronts[i]]
            finalists.append((linear_fit(p, rows[i].train), SOURCE_BASELINE))
            outcomes.append(choose(p, rows[i], finalists, counts, seeder.dropped[i], clock))
    return outcomes


class ModelSeeder:
    """The model's samples as seeds of the search: per problem, its unique samples (one per
    skeleton) twice, in the user's units and as the model wrote them (formulas of the
    standardised features, read as formulas of the raw ones: the unscaled forms are often
    too long for the search, while these keep the model's skeleton for refinement to fit).
    No seeds (empty lists) for problems the model cannot read (``readable``), and none at
    all with seeds="random".

    Asked before the search (``at_start``, seeds="model") or by the search for each problem
    unsolved after its first generations (``__call__``, the search's ``Seeder``,
    seeds="model-deferred"); either way decoding takes at most ``SEEDING_SHARE`` of
    max_time per call. The samples are
    neither scored nor refined here: the search scores them in one call and refines the
    best with its own compiled solver. ``counts`` and ``dropped`` record, per problem,
    what was sampled and why sequences were dropped.
    """

    def __init__(self, training: list[FitProblem], loaded: LoadedModel,
                 settings: pipeline.PipelineSettings, clock: pipeline.Clock):
        self.training, self.loaded, self.clock = training, loaded, clock
        self.asked = set(readable(training, loaded)) if settings.seeds != "random" else set()
        # Longer samples do not fit the search, and decoding time is search time lost: with
        # the sampler's 100 samples per bag and 35% of the budget, a 5 s fit solved fewer
        # problems than the search seeded by random trees alone (the model card's ablation).
        self.settings = dataclasses.replace(settings, max_len=min(settings.max_len, SEED_TOKENS),
                                            n_candidates=min(settings.n_candidates, SEED_SAMPLES))
        self.cap = None if settings.max_time is None else SEEDING_SHARE * settings.max_time
        self.counts = [pipeline.new_counts() for _ in training]
        self.dropped = [Counter() for _ in training]

    def at_start(self) -> list[list[Expr]]:
        """Every problem's seeds, decoded on the fit's clock (its stages timed)."""
        with self.clock.until(self.cap):
            return self._seeds(range(len(self.training)), self.clock)

    def __call__(self, problems: list[int]) -> list[list[Expr]]:
        """The seeds of ``problems``, decoded during the search (timed as search), within
        ``SEEDING_SHARE`` of max_time from now."""
        return self._seeds(problems, pipeline.Clock(self.cap, 0))

    def _seeds(self, problems, clock: pipeline.Clock) -> list[list[Expr]]:
        seeds = {i: [] for i in problems}
        asked = [i for i in problems if i in self.asked]
        if not asked:
            return list(seeds.values())
        readable_problems = [self.training[i] for i in asked]
        bags, tokens, lengths = pipeline.tokenise_and_decode(readable_problems, self.loaded,
                                                             self.settings, clock)
        if not len(bags.problem):
            return list(seeds.values())
        with clock.stage("parse"):
            pool, parsed, dropped = pipeline.parse(tokens, lengths, bags, readable_problems)
        counts = pipeline.sampled_counts(bags, len(tokens), parsed, len(asked))
        for k, (i, p) in enumerate(zip(asked, readable_problems)):
            unique = {}
            for j in np.flatnonzero(pool.problem == k):
                unique.setdefault(pool.exprs[j].skeleton(), pool.exprs[j])
            written = list(unique.values())
            seeds[i] = [pipeline.unscale(e, p) for e in written] + written
            self.counts[i] = {**counts[k], "unique": len(unique)}
            self.dropped[i] = dropped[k]
        return list(seeds.values())


def readable(problems: list[FitProblem], loaded: LoadedModel) -> list[int]:
    """The problems the model is asked about: those with no more variables than the
    formulas it was trained on. Beyond them its samples are noise whose decoding costs
    search time (the default model, trained on 1-3 variables, solves none of the Feynman
    problems with 4 or more)."""
    return [i for i, p in enumerate(problems) if p.n_selected <= loaded.trained_dimension]


def _search_settings(settings: pipeline.PipelineSettings, clock: pipeline.Clock,
                     width: int) -> SearchSettings:
    generations = settings.generations
    remaining = None if clock.deadline is None else max(0.0, clock.remaining())
    if generations is None and remaining is None:
        generations = DEFAULT_GENERATIONS
    search_time = None if remaining is None else (1.0 - CHOOSING_SHARE) * remaining
    return SearchSettings(population_size=settings.population_size, generations=generations,
                          max_time=search_time, seed=settings.seed, verbose=settings.verbose,
                          width=width)


# ---------------------------------------------------------------------------- choosing


def choose(p: FitProblem, rows: Rows, finalists, counts, dropped,
           clock: pipeline.Clock | None = None) -> pipeline.FitOutcome:
    """The finalists measured on the training and validation rows, in the original
    columns, simplest first; ``selected`` is the simplest within tolerance of the best
    validation error (the training error where there are no validation rows).

    The rule prefers formulas that do not blow up between the rows (``_Probe``): a search
    can fit a pole that no training or validation row comes near (a tiny term c / sin(u)**4,
    or b / x where the rows skip x = 0) and a test row then hits. It takes the simplest
    calm formula within tolerance; where every formula within tolerance blows up, it
    applies the same rule to the calm formulas within ``CALM_BAND`` x the lowest error
    (the simplest within tolerance of the best calm one); where none is calm there either
    (a true pole), the simplest within tolerance. The outcome's ``calm`` holds the
    probe's verdict for every finalist.

    Before the rule compares them, the formulas that may win are polished in float64, and
    their sums also compete without each of their terms (``PRUNE_ROUNDS`` times): the
    search's float32 constants leave exact formulas an error of 1e-12 to 1e-8, and a term
    with a tiny coefficient that fits float32 noise would otherwise keep a longer formula
    ahead of the exact one. Polishing stops at ``clock``'s deadline (the search leaves it
    ``CHOOSING_SHARE`` of the time it had).
    """
    judged = rows.validation if len(rows.validation) else rows.train
    pool = _Finalists(p, rows.train, judged, clock)
    for expr, source in finalists:
        pool.add(expr, source)
    if not pool.exprs:  # nothing finite at all: the mean
        return pipeline.select(pipeline.Pool([], np.zeros(0, int)), [p], [counts],
                               [dropped])[0]
    for _ in range(PRUNE_ROUNDS):
        for k in pool.polish_contenders():
            for shorter in _without_one_term(pool.exprs[k]):
                pool.add(shorter, pool.sources[k])
    pool.polish_contenders()
    order = pool.order()
    mse, r2 = (np.array([pool.train[k][j] for k in order]) for j in (0, 1))
    val_r2 = np.array([pool.valid[k][1] for k in order])
    probe = _Probe(p, rows.train)
    calm = np.array([probe.calm(pool.exprs[k]) for k in order])
    return pipeline.FitOutcome(
        exprs=[pipeline.to_columns(pool.exprs[k], p) for k in order], r2=r2, mse=mse,
        complexity=np.array([pool.exprs[k].complexity() for k in order]),
        refined=np.ones(len(order), bool), source=[pool.sources[k] for k in order],
        fallback=None, counts=counts, dropped=dict(dropped),
        selected=_simplest_within_tolerance(1.0 - val_r2, calm), r2_validation=val_r2,
        calm=calm)


class _Finalists:
    """Distinct formulas (by skeleton) with their training and validation metrics."""

    def __init__(self, p: FitProblem, train_rows, judged_rows, clock=None):
        self.p, self.train_rows, self.judged_rows = p, train_rows, judged_rows
        self.clock = clock
        self.exprs, self.sources, self.train, self.valid = [], [], [], []
        self.seen, self.polished = set(), set()

    def add(self, expr: Expr, source: str) -> None:
        key = expr.skeleton()
        if key in self.seen:
            return
        self.seen.add(key)
        self.exprs.append(expr)
        self.sources.append(source)
        self.train.append(None)
        self.valid.append(None)
        self._measure(len(self.exprs) - 1)

    def _measure(self, k: int) -> None:
        self.train[k] = _metrics(self.exprs[k], self.p, self.train_rows)
        self.valid[k] = _metrics(self.exprs[k], self.p, self.judged_rows)

    def order(self) -> np.ndarray:
        """Indices, simplest first (ties: lower training error first)."""
        complexity = [e.complexity() for e in self.exprs]
        return np.lexsort(([t[0] for t in self.train], complexity))

    def polish_contenders(self) -> list[int]:
        """Polishes the contenders not polished yet (see ``_contenders``) while time is left;
        returns those it polished."""
        order = self.order()
        fresh = [k for k in _contenders([1.0 - self.valid[k][1] for k in order], order)
                 if k not in self.polished]
        done = []
        for k in fresh:
            if self._out_of_time():
                break
            self.exprs[k] = _polish(self.exprs[k], self.p, self.train_rows)
            self._measure(k)
            self.polished.add(k)
            done.append(k)
        return done

    def _out_of_time(self) -> bool:
        remaining = None if self.clock is None else self.clock.remaining()
        return remaining is not None and remaining <= 0


def _signed_terms(expr: Expr, sign: float = 1.0) -> list[tuple[float, Expr]]:
    """The top-level terms of a sum, each with its sign (a formula that is not a sum is its
    own single term)."""
    if expr.token in ("add", "sub"):
        second = sign if expr.token == "add" else -sign
        return _signed_terms(expr.children[0], sign) + _signed_terms(expr.children[1], second)
    return [(sign, expr)]


def _without_one_term(expr: Expr) -> list[Expr]:
    """``expr`` without each of its top-level terms in turn (none for a single term)."""
    terms = _signed_terms(expr)
    if len(terms) < 2:
        return []
    out = []
    for i in range(len(terms)):
        total = None
        for sign, term in terms[:i] + terms[i + 1:]:
            if total is None:
                total = term if sign > 0 else Expr.op("mul", Expr.const(-1.0), term)
            else:
                total = Expr.op("add" if sign > 0 else "sub", total, term)
        out.append(total)
    return out


def linear_fit(p: FitProblem, rows) -> Expr:
    """Weighted least squares of y on the selected columns (user units) over ``rows``: it
    always competes in the final choice, whatever the search's length limit."""
    Z = np.column_stack([np.ones(len(rows)), p.user_units(rows)])
    root = np.sqrt(p.weight[rows])
    coef = np.linalg.lstsq(Z * root[:, None], p.y[rows] * root, rcond=None)[0]
    tree = Expr.const(coef[0])
    for k, a in enumerate(coef[1:]):
        tree = Expr.op("add", tree, Expr.op("mul", Expr.const(a), Expr.var(k)))
    return tree


def _contenders(nmse, order) -> list[int]:
    """The simplest ``POLISH_LIMIT`` finalists (indices from ``order``, simplest first)
    whose validation NMSE is within ``POLISH_BAND`` of the lowest."""
    nmse = np.asarray(nmse, float)
    finite = np.isfinite(nmse)
    if not finite.any():
        return []
    bound = POLISH_BAND * np.min(nmse[finite]) + POLISH_FLOOR
    return [order[i] for i in np.flatnonzero(finite & (nmse <= bound))[:POLISH_LIMIT]]


def _polish(expr: Expr, p: FitProblem, rows) -> Expr:
    """The constants refined in float64 on all training rows: the search refines in float32
    on a subset, which leaves about 7 correct digits (3 prints as 2.9999998). One formula
    with scipy's BFGS: milliseconds, nothing to compile. Never worse on those rows."""
    if not expr.n_constants:
        return expr
    y, weight = p.y[rows], p.weight[rows]
    mean = np.average(y, weights=weight)
    variance = np.average((y - mean) ** 2, weights=weight)
    with np.errstate(all="ignore"):
        polished, _, _ = scipy_refine(expr, p.user_units(rows), y, weight,
                                      max_iter=POLISH_ITERATIONS,
                                      gtol=POLISH_GTOL * max(variance, 1e-300))
    return polished


def _metrics(expr: Expr, p: FitProblem, rows) -> tuple[float, float]:
    with np.errstate(all="ignore"):
        prediction = expr.evaluate(p.user_units(rows))
    return pipeline.weighted_metrics(prediction, p.y[rows], p.weight[rows])


def _simplest_within_tolerance(nmse: np.ndarray, calm: np.ndarray | None = None) -> int:
    """Index of the first (simplest) entry within tolerance of the lowest finite error. With
    ``calm`` (a bool per entry): the first calm one within tolerance; where there is none,
    the same rule among the calm entries within ``CALM_BAND`` of the lowest error; where
    there are none either, the first within tolerance."""
    finite = np.isfinite(nmse)
    if not finite.any():
        return 0
    tolerated = _within(nmse, np.flatnonzero(finite), 1 + RELATIVE_TOLERANCE)
    if calm is None:
        return int(tolerated[0])
    # Within tolerance, the rule re-applied to the calm entries keeps all of them (their
    # lowest error is at least the overall lowest): it picks the first calm one.
    for candidates in (tolerated, _within(nmse, np.flatnonzero(finite), CALM_BAND)):
        candidates = candidates[calm[candidates]]
        if len(candidates):
            return int(_within(nmse, candidates, 1 + RELATIVE_TOLERANCE)[0])
    return int(tolerated[0])


def _within(nmse: np.ndarray, among: np.ndarray, factor: float) -> np.ndarray:
    """The entries of ``among`` (in order) whose error is at most ``factor`` x the lowest
    among them + ``ABSOLUTE_TOLERANCE``."""
    bound = np.min(nmse[among]) * factor + ABSOLUTE_TOLERANCE
    return among[nmse[among] <= bound]


class _Probe:
    """Uniform points in the bounding box of a problem's training rows (user units, a fixed
    seed), and the limit a calm formula stays within there."""

    def __init__(self, p: FitProblem, rows):
        X, y = p.user_units(rows), p.y[rows]
        rng = np.random.default_rng(0)
        self.points = rng.uniform(X.min(0), X.max(0), (PROBE_POINTS, X.shape[1]))
        self.center = float(np.median(y))
        self.limit = BLOW_UP * max(float(np.ptp(y)), np.finfo(float).tiny)

    def calm(self, expr: Expr) -> bool:
        with np.errstate(all="ignore"):
            values = np.asarray(expr.evaluate(self.points), float)
        deviation = np.abs(values - self.center)
        return not np.any(deviation[~np.isnan(deviation)] > self.limit)
