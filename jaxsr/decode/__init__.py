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

STRATEGIES = ("greedy", "sampling", "search")


def generate(model, params, point_ids, point_mask, *, strategy: str, **options) -> Decoded:
    """Dispatches on the reference's ``beam_type`` names: "greedy", "sampling" (``sample``)
    or "search" (``beam_search``); ``options`` go to that function."""
    functions = {"greedy": greedy, "sampling": sample, "search": beam_search}
    if strategy not in functions:
        raise ValueError(f"unknown decoding strategy {strategy!r}; expected one of {STRATEGIES}")
    return functions[strategy](model, params, point_ids, point_mask, **options)


__all__ = ["Decoded", "Expressions", "DEFAULT_MAX_LEN", "STRATEGIES", "greedy", "sample",
           "beam_search", "generate", "to_expressions"]
