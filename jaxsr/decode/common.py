"""What every decoding strategy shares: the result type, input checks and the encoder pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxsr.expr import Vocab
from jaxsr.expr.tokens import DEFAULT_MAX_LEN  # noqa: F401 (re-exported by jaxsr.decode)
from jaxsr.model import DecodeCache, E2EModel

Array = jax.Array

EOS = Vocab.decoder().eos  # 74; also the first decoder input (EOS doubles as BOS)
PAD = Vocab.decoder().pad  # 82; fills every position after a sequence's end


@struct.dataclass
class Decoded:
    """Decoded candidates, ``n`` per bag (point set), best first for beam search.

    Attributes:
      tokens: (B, n, max_len) int32 decoder ids, without the leading ``<EOS>`` (BOS): the
        expression's tokens, then ``<EOS>`` if the sequence ended, then ``<PAD>``.
      lengths: (B, n) int32 number of expression tokens, the final ``<EOS>`` excluded
        (``max_len`` for a sequence cut off without ``<EOS>``).
      scores: (B, n) float32. Greedy and sampling: the sum of the model's log-probabilities
        (temperature 1, no top-k/top-p) of the emitted tokens, ``<EOS>`` included. Beam
        search: that sum divided by ``(lengths + 1) ** length_penalty``, as the reference.
      finished: (B, n) bool, True where the sequence ended with ``<EOS>``.
    """

    tokens: Array
    lengths: Array
    scores: Array
    finished: Array

    @property
    def num_bags(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.tokens.shape[1]


def check_inputs(model: E2EModel, point_ids, point_mask, max_len: int) -> None:
    """Raises ValueError naming the problem with shapes, types or ``max_len``."""
    if not isinstance(model, E2EModel):
        raise TypeError(f"model must be a jaxsr.model.E2EModel, got {type(model).__name__}")
    per_point = model.config.tokens_per_point
    if point_ids.ndim != 3 or point_ids.shape[-1] != per_point:
        raise ValueError(f"point_ids must have shape (bags, points, {per_point}), "
                         f"got {tuple(point_ids.shape)}")
    if tuple(point_mask.shape) != tuple(point_ids.shape[:2]):
        raise ValueError(f"point_mask must have shape {tuple(point_ids.shape[:2])} "
                         f"(bags, points), got {tuple(point_mask.shape)}")
    if point_ids.shape[0] < 1:
        raise ValueError("point_ids holds no bag (its first axis is 0)")
    if not jnp.issubdtype(point_ids.dtype, jnp.integer):
        raise ValueError(f"point_ids must be integer encoder ids, got dtype {point_ids.dtype}")
    if not isinstance(max_len, int) or not 1 <= max_len <= model.config.max_positions:
        raise ValueError(f"max_len must be an int in [1, {model.config.max_positions}], "
                         f"got {max_len!r}")


def encode_and_cache(model: E2EModel, params, point_ids: Array, point_mask: Array,
                     max_len: int) -> DecodeCache:
    """Encoder pass and cross-attention keys/values, once per bag: a cache with B rows."""
    variables = {"params": params}
    point_mask = point_mask.astype(bool)
    encoder_out = model.apply(variables, point_ids, point_mask, method=E2EModel.encode)
    return model.apply(variables, encoder_out, point_mask, max_len, method=E2EModel.init_cache)


def decode_step(model: E2EModel, params, token: Array, position: Array,
                cache: DecodeCache) -> tuple[Array, DecodeCache]:
    """Log-probabilities (rows, V) of the next token, and the updated cache."""
    logits, cache = model.apply({"params": params}, token, position, cache,
                                method=E2EModel.decode_step)
    return jax.nn.log_softmax(logits, axis=-1), cache
