"""The reference architecture as Flax Linen modules.

Submodules and parameters carry the reference's names, so that a state-dict key maps onto a
parameter path mechanically: ``decoder.attentions.3.q_lin.weight`` is
``decoder/attentions_3/q_lin/kernel`` (transposed), ``*.layer_norm1.0.weight`` is
``*/layer_norm1_0/scale``, ``*.embeddings.weight`` is ``*/embeddings/embedding``;
``decoder.layer_norm15.i`` is the norm after cross-attention, and ``decoder.proj.weight``
is the token table itself (tied), so only ``decoder/proj/bias`` exists here.

Semantics follow the reference (XLM-style, post-LayerNorm with eps 1e-12): no positional
embedding in the encoder, learned positions in the decoder, padded positions zeroed after
every layer, masked scores excluded from a float32 softmax, logits = h E^T + b.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxsr.model.config import ModelConfig

LAYER_NORM_EPS = 1e-12
# A masked score: exp(MASKED - max) is exactly 0 as with -inf, but a row with every key
# masked (an empty point set) gives a uniform average instead of NaNs.
MASKED = float(jnp.finfo(jnp.float32).min)

Array = jax.Array


# ----------------------------------------------------------------------------- init


def _torch_linear_bias_init(fan_in: int):
    """PyTorch's default Linear bias init, U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# PyTorch's kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)), i.e. variance 1/(3 fan_in).
_torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _embedding_init(dim: int, pad_row: int | None = None):
    """N(0, dim^-1/2), with the padding row zero as in the reference's ``Embedding``."""

    def init(key, shape, dtype=jnp.float32):
        table = jax.random.normal(key, shape, dtype) * dim**-0.5
        return table if pad_row is None else table.at[pad_row].set(0)

    return init


def _linear(features: int, fan_in: int, dtype, name: str | None = None) -> nn.Dense:
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=_torch_linear_kernel_init, bias_init=_torch_linear_bias_init(fan_in),
    )


def _layer_norm(dtype, name: str | None = None) -> nn.LayerNorm:
    # Two-pass variance: E[x^2] - E[x]^2 loses digits that torch keeps.
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, use_fast_variance=False, name=name)


# ----------------------------------------------------------------------------- attention


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Softmax(q k) v per head, scores and softmax in float32.

    q: (B, H, Q, d), already scaled; k: (B, H, d, K), keys stored transposed; v: (B, H, K, d);
    mask: bool, broadcastable to (B, Q, K), True where a query may attend to a key.
    Returns (B, Q, H * d). The layouts are the ones CPU and GPU matmuls read without a
    transpose, which matters when a cache of keys is re-read at every decoding step.
    """
    scores = jnp.einsum("bhqd,bhdk->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None], scores, MASKED)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    context = jnp.einsum("bhqk,bhkd->bqhd", weights, v)
    return context.reshape(*context.shape[:2], -1)


class MultiHeadAttention(nn.Module):
    """q/k/v/out projections with bias; keys and values may come from a cache."""

    dim: int
    num_heads: int
    source_dim: int  # width of the states keys and values are computed from
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.q_lin = _linear(self.dim, self.dim, self.dtype)
        self.k_lin = _linear(self.dim, self.source_dim, self.dtype)
        self.v_lin = _linear(self.dim, self.source_dim, self.dtype)
        self.out_lin = _linear(self.dim, self.dim, self.dtype)

    def _heads(self, x: Array) -> Array:
        """(B, S, dim) -> (B, H, S, d)."""
        x = x.reshape(*x.shape[:-1], self.num_heads, self.dim // self.num_heads)
        return jnp.swapaxes(x, 1, 2)

    def keys_values(self, source: Array) -> tuple[Array, Array]:
        """(B, S, source_dim) -> keys (B, H, d, S) and values (B, H, S, d)."""
        keys = self._heads(self.k_lin(source))
        return jnp.swapaxes(keys, 2, 3), self._heads(self.v_lin(source))

    def __call__(self, x: Array, mask: Array, keys: Array, values: Array) -> Array:
        q = self._heads(self.q_lin(x)) / math.sqrt(self.dim // self.num_heads)
        return self.out_lin(dot_product_attention(q, keys, values, mask))


class TransformerFFN(nn.Module):
    """lin1 -> ReLU -> lin2."""

    dim: int
    hidden_dim: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.lin1 = _linear(self.hidden_dim, self.dim, self.dtype)
        self.lin2 = _linear(self.dim, self.hidden_dim, self.dtype)

    def __call__(self, x: Array) -> Array:
        return self.lin2(nn.relu(self.lin1(x)))


# ----------------------------------------------------------------------------- embedder


class PointEmbedder(nn.Module):
    """The reference's ``LinearPointEmbedder``: 33 token embeddings per point, concatenated,
    then ``hidden_layers`` (Linear + ReLU) and ``fc`` (Linear) to the encoder width."""

    config: ModelConfig

    def setup(self):
        c, dtype = self.config, self.config.compute_dtype
        self.embeddings = nn.Embed(
            c.encoder_vocab_size, c.embedder_dim, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=_embedding_init(c.embedder_dim, c.encoder_pad_id),
        )
        widths = [c.embedder_input_dim] + [c.embedder_hidden_dim] * c.embedder_hidden_layers
        self.hidden_layers = [
            _linear(out, fan_in, dtype) for fan_in, out in zip(widths[:-1], widths[1:])
        ]
        self.fc = _linear(c.encoder_dim, c.embedder_hidden_dim, dtype)

    def __call__(self, point_ids: Array) -> Array:
        """(B, N, 33) encoder ids -> (B, N, encoder_dim)."""
        expected = self.config.tokens_per_point
        if point_ids.ndim != 3 or point_ids.shape[-1] != expected:
            raise ValueError(f"point_ids must have shape (batch, points, {expected}), "
                             f"got {tuple(point_ids.shape)}")
        h = self.embeddings(point_ids)
        h = h.reshape(*h.shape[:2], -1)
        for layer in self.hidden_layers:
            h = nn.relu(layer(h))
        return self.fc(h)


# ----------------------------------------------------------------------------- encoder


class TransformerEncoder(nn.Module):
    """Post-LN self-attention over a set of points: no positions, key padding mask."""

    config: ModelConfig

    def setup(self):
        c, dtype = self.config, self.config.compute_dtype
        dim, n = c.encoder_dim, c.encoder_layers
        self.layer_norm_emb = _layer_norm(dtype)
        self.attentions = [MultiHeadAttention(dim, c.encoder_heads, dim, dtype) for _ in range(n)]
        self.layer_norm1 = [_layer_norm(dtype) for _ in range(n)]
        self.ffns = [TransformerFFN(dim, c.encoder_ffn_dim, dtype) for _ in range(n)]
        self.layer_norm2 = [_layer_norm(dtype) for _ in range(n)]

    def __call__(self, x: Array, mask: Array) -> Array:
        """x: (B, N, D) embedded points; mask: (B, N) bool, True for real points."""
        keep = mask[..., None].astype(self.config.compute_dtype)
        h = self.layer_norm_emb(x) * keep
        key_mask = mask[:, None, :]
        for i in range(self.config.encoder_layers):
            keys, values = self.attentions[i].keys_values(h)
            h = self.layer_norm1[i](h + self.attentions[i](h, key_mask, keys, values))
            h = self.layer_norm2[i](h + self.ffns[i](h))
            h = h * keep
        return h


# ----------------------------------------------------------------------------- decoder


@struct.dataclass
class DecodeCache:
    """Static-shape state of incremental decoding; a pytree, so loops can carry it.

    One array per decoder layer (a tuple each; separate buffers are updated in place and
    read without copies): self-attention keys ``(B, H, d, max_len)`` (stored transposed)
    and values ``(B, H, max_len, d)``, filled as tokens arrive; cross-attention keys
    ``(B, H, d, N)`` and values ``(B, H, N, d)``, computed once from the encoder output;
    and the encoder's padding mask ``(B, N)``.
    """

    self_keys: tuple[Array, ...]
    self_values: tuple[Array, ...]
    cross_keys: tuple[Array, ...]
    cross_values: tuple[Array, ...]
    encoder_mask: Array

    @property
    def batch_size(self) -> int:
        return self.encoder_mask.shape[0]

    @property
    def max_len(self) -> int:
        return self.self_values[0].shape[2]

    def take(self, indices: Array) -> DecodeCache:
        """Rows ``indices`` of the batch (beam reordering, or repeating bags for sampling)."""
        return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), self)


class OutputBias(nn.Module):
    """The bias of the reference's ``proj`` Linear; its weight is the token table."""

    size: int
    fan_in: int

    @nn.compact
    def __call__(self, logits: Array) -> Array:
        bias = self.param("bias", _torch_linear_bias_init(self.fan_in), (self.size,))
        return logits + bias


class TransformerDecoder(nn.Module):
    """Post-LN decoder: causal self-attention, cross-attention, FFN; tied output table."""

    config: ModelConfig

    def setup(self):
        c, dtype = self.config, self.config.compute_dtype
        dim, n = c.decoder_dim, c.decoder_layers
        self.position_embeddings = nn.Embed(
            c.max_positions, dim, dtype=dtype, embedding_init=_embedding_init(dim))
        self.embeddings = nn.Embed(
            c.decoder_vocab_size, dim, dtype=dtype,
            embedding_init=_embedding_init(dim, c.decoder_pad_id))
        self.layer_norm_emb = _layer_norm(dtype)
        self.attentions = [MultiHeadAttention(dim, c.decoder_heads, dim, dtype) for _ in range(n)]
        self.layer_norm1 = [_layer_norm(dtype) for _ in range(n)]
        self.encoder_attn = [
            MultiHeadAttention(dim, c.decoder_heads, c.encoder_dim, dtype) for _ in range(n)]
        self.layer_norm15 = [_layer_norm(dtype) for _ in range(n)]
        self.ffns = [TransformerFFN(dim, c.decoder_ffn_dim, dtype) for _ in range(n)]
        self.layer_norm2 = [_layer_norm(dtype) for _ in range(n)]
        self.proj = OutputBias(c.decoder_vocab_size, dim)

    def _embed(self, tokens: Array, positions: Array) -> Array:
        return self.layer_norm_emb(self.embeddings(tokens) + self.position_embeddings(positions))

    def _layer(self, i: int, h: Array, self_kv, self_mask, cross_kv, cross_mask) -> Array:
        h = self.layer_norm1[i](h + self.attentions[i](h, self_mask, *self_kv))
        h = self.layer_norm15[i](h + self.encoder_attn[i](h, cross_mask, *cross_kv))
        return self.layer_norm2[i](h + self.ffns[i](h))

    def _logits(self, h: Array) -> Array:
        table = self.embeddings.embedding.astype(h.dtype)
        return self.proj(jnp.einsum("...d,vd->...v", h, table, preferred_element_type=jnp.float32))

    def __call__(self, tokens: Array, encoder_out: Array, encoder_mask: Array,
                 token_mask: Array | None = None) -> Array:
        """Teacher-forced logits (B, T, V), float32; ``token_mask`` zeroes padded positions."""
        length = tokens.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"{length} tokens exceed the {self.config.max_positions} positions")
        h = self._embed(tokens, jnp.arange(length)[None, :])
        keep = 1 if token_mask is None else token_mask[..., None].astype(h.dtype)
        h = h * keep
        causal = jnp.tril(jnp.ones((length, length), bool))[None]
        cross_mask = encoder_mask[:, None, :]
        for i in range(self.config.decoder_layers):
            self_kv = self.attentions[i].keys_values(h)
            cross_kv = self.encoder_attn[i].keys_values(encoder_out)
            h = self._layer(i, h, self_kv, causal, cross_kv, cross_mask) * keep
        return self._logits(h)

    def init_cache(self, encoder_out: Array, encoder_mask: Array, max_len: int) -> DecodeCache:
        c = self.config
        if max_len > c.max_positions:
            raise ValueError(f"max_len {max_len} exceeds the {c.max_positions} positions")
        cross = [self.encoder_attn[i].keys_values(encoder_out) for i in range(c.decoder_layers)]
        batch, heads = encoder_out.shape[0], c.decoder_heads
        head_dim = c.decoder_dim // heads
        dtype = c.compute_dtype
        return DecodeCache(
            self_keys=tuple(jnp.zeros((batch, heads, head_dim, max_len), dtype) for _ in cross),
            self_values=tuple(jnp.zeros((batch, heads, max_len, head_dim), dtype) for _ in cross),
            cross_keys=tuple(k.astype(dtype) for k, _ in cross),
            cross_values=tuple(v.astype(dtype) for _, v in cross),
            encoder_mask=encoder_mask.astype(bool),
        )

    def step(self, token: Array, position: Array, cache: DecodeCache) -> tuple[Array, DecodeCache]:
        """Logits (B, V) for ``token`` (B,) at ``position`` (B,), attending to the cache."""
        rows = jnp.arange(cache.batch_size)
        h = self._embed(token[:, None], position[:, None])
        self_mask = (jnp.arange(cache.max_len)[None, :] <= position[:, None])[:, None, :]
        cross_mask = cache.encoder_mask[:, None, :]
        keys, values = list(cache.self_keys), list(cache.self_values)
        for i in range(self.config.decoder_layers):
            k_new, v_new = self.attentions[i].keys_values(h)
            keys[i] = keys[i].at[rows, :, :, position].set(k_new[..., 0].astype(keys[i].dtype))
            values[i] = values[i].at[rows, :, position].set(v_new[:, :, 0].astype(values[i].dtype))
            cross_kv = (cache.cross_keys[i], cache.cross_values[i])
            h = self._layer(i, h, (keys[i], values[i]), self_mask, cross_kv, cross_mask)
        new_cache = cache.replace(self_keys=tuple(keys), self_values=tuple(values))
        return self._logits(h[:, 0]), new_cache


# ----------------------------------------------------------------------------- model


class E2EModel(nn.Module):
    """Point embedder + encoder + decoder. Call methods through ``apply(..., method=...)``.

    ``__call__`` (used by ``init`` and training) runs everything teacher-forced.
    """

    config: ModelConfig

    def setup(self):
        self.embedder = PointEmbedder(self.config)
        self.encoder = TransformerEncoder(self.config)
        self.decoder = TransformerDecoder(self.config)

    def __call__(self, point_ids: Array, point_mask: Array, tokens: Array,
                 token_mask: Array | None = None) -> Array:
        encoder_out = self.encode(point_ids, point_mask)
        return self.decode(tokens, encoder_out, point_mask, token_mask)

    def embed(self, point_ids: Array) -> Array:
        """(B, N, 33) encoder ids -> (B, N, encoder_dim): the embedder alone."""
        return self.embedder(point_ids)

    def encode(self, point_ids: Array, point_mask: Array) -> Array:
        """(B, N, 33) ids and (B, N) mask (True for real points) -> (B, N, encoder_dim)."""
        if point_mask.shape != point_ids.shape[:2]:
            raise ValueError(f"point_mask shape {tuple(point_mask.shape)} does not match "
                             f"point_ids {tuple(point_ids.shape)}")
        return self.encoder(self.embedder(point_ids), point_mask.astype(bool))

    def decode(self, tokens: Array, encoder_out: Array, encoder_mask: Array,
               token_mask: Array | None = None) -> Array:
        """Teacher-forced, causal: tokens (B, T) -> logits (B, T, decoder_vocab) float32.

        Logits at position t predict token t + 1. ``token_mask`` (B, T), True for real
        tokens, reproduces the reference's zeroing of padded positions; logits at real
        positions do not depend on it.
        """
        _check_decoder_inputs(tokens, encoder_out, encoder_mask, self.config)
        return self.decoder(tokens, encoder_out, encoder_mask.astype(bool), token_mask)

    def init_cache(self, encoder_out: Array, encoder_mask: Array, max_len: int) -> DecodeCache:
        """An empty cache for ``max_len`` steps, with cross-attention keys/values computed."""
        _check_decoder_inputs(None, encoder_out, encoder_mask, self.config)
        return self.decoder.init_cache(encoder_out, encoder_mask, max_len)

    def decode_step(self, token: Array, position: Array | int,
                    cache: DecodeCache) -> tuple[Array, DecodeCache]:
        """One incremental step: token (B,) at position (B,) or scalar -> (logits (B, V), cache).

        Position t must be < ``cache.max_len``; the first step feeds ``<EOS>`` at position 0.
        """
        position = jnp.broadcast_to(jnp.asarray(position, jnp.int32), (cache.batch_size,))
        return self.decoder.step(jnp.asarray(token, jnp.int32), position, cache)


def _check_decoder_inputs(tokens, encoder_out, encoder_mask, config: ModelConfig) -> None:
    if tokens is not None and tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
    if encoder_out.ndim != 3 or encoder_out.shape[-1] != config.encoder_dim:
        raise ValueError(f"encoder_out must have shape (batch, points, {config.encoder_dim}), "
                         f"got {tuple(encoder_out.shape)}")
    if encoder_mask.shape != encoder_out.shape[:2]:
        raise ValueError(f"encoder_mask shape {tuple(encoder_mask.shape)} does not match "
                         f"encoder_out {tuple(encoder_out.shape)}")
