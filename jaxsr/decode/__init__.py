"""Decoding: greedy, sampling and beam search as compiled loops with a key/value cache.

Each strategy is one jit-compiled ``lax.while_loop`` over a static-shape ``DecodeCache``,
batched over bags (point sets) and candidates at once, stopping as soon as every sequence
has ended (``<EOS>``) or ``max_len`` tokens exist. With several local devices, bags are
split over them with ``pmap`` (``jaxsr.parallel.map_rows``; the last bag is repeated to fill
the last device). Results do not depend on the split: every strategy treats bags
independently (sampling keys are per bag, beam search freezes a finished bag).

>>> from jaxsr import decode
>>> out = decode.sample(model, params, point_ids, point_mask, key=jax.random.key(0), n=16,
...                     temperature=0.1)            # out.tokens: (B, 16, 200)
>>> exprs, index, dropped = decode.to_expressions(out)
"""

from __future__ import annotations

from jaxsr.decode.beam import beam_search
from jaxsr.decode.common import DEFAULT_MAX_LEN, Decoded
from jaxsr.decode.expressions import Expressions, to_expressions
from jaxsr.decode.loops import greedy, sample

# The decoding strategies, by the names the regressor's ``decoding`` takes.
STRATEGIES = ("sampling", "beam", "greedy")
# The reference's ``beam_type`` for beam search (a weights file may record it).
_REFERENCE_NAMES = {"search": "beam"}


def generate(model, params, point_ids, point_mask, *, strategy: str, n: int | None = None,
             key=None, temperature: float = 1.0, **options) -> Decoded:
    """One strategy of ``STRATEGIES`` (or the reference's "search" for "beam").

    ``n`` is the candidates per bag: ``sample``'s ``n``, ``beam_search``'s ``beam_size``
    (greedy always gives one). ``key`` and ``temperature`` go to sampling only, the only
    random strategy; ``options`` (``max_len``, ``devices``, ...) to the function itself.
    """
    strategy = _REFERENCE_NAMES.get(strategy, strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r}; expected one of {STRATEGIES}")
    args = (model, params, point_ids, point_mask)
    if strategy == "greedy":
        return greedy(*args, **options)
    if n is not None:
        options["n" if strategy == "sampling" else "beam_size"] = n
    if strategy == "beam":
        return beam_search(*args, **options)
    return sample(*args, key=key, temperature=temperature, **options)


__all__ = ["Decoded", "Expressions", "DEFAULT_MAX_LEN", "STRATEGIES", "greedy", "sample",
           "beam_search", "generate", "to_expressions"]
