"""The train state, the optimiser, the loss and the per-device train step.

The step runs under ``pmap_step``: each device holds a slice of the batch and a copy of
the state. The loss is the cross-entropy summed over every non-padding target token of the
*global* batch and divided by the global count of such tokens, so one device and eight
devices with the same global batch compute the same loss and the same update.

The model has no dropout (the reference trains with dropout 0), so the step needs no
random key and a run is a deterministic function of (config, step). Should dropout be
added, derive its key as ``fold_in(key(seed), step)`` inside the step, never from a key
carried between steps, so that resuming stays exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxsr import parallel
from jaxsr.model import E2EModel, ModelConfig, init_params

# The reference's Adam (docs/reference.md 4.2): bias-corrected, no weight decay.
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


class TrainState(struct.PyTreeNode):
    """What a checkpoint holds besides the data position: updates done, params, Adam."""

    step: jax.Array  # () int32: optimizer updates done so far
    params: dict
    opt_state: optax.OptState

    def to_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        return cls(step=values["step"], params=values["params"], opt_state=values["opt_state"])


class StepBatch(NamedTuple):
    """The arrays of a ``jaxsr.data.Batch`` that the step reads (host batch or a slice)."""

    points: np.ndarray     # (B, N_pad, 33) int32 encoder ids
    n_points: np.ndarray   # (B,) int32
    tokens: np.ndarray     # (B, T_pad) int32: <EOS> prefix <EOS> <PAD>...
    n_tokens: np.ndarray   # (B,) int32, both <EOS> included

    @classmethod
    def from_data(cls, batch) -> StepBatch:
        return cls(batch.points, batch.n_points, batch.tokens, batch.n_tokens)


def make_optimizer(clip_norm: float) -> optax.GradientTransformation:
    """Clip the global gradient norm, then Adam's direction; the step scales it by -lr.

    The learning rate enters the step as an argument (from ``schedule.py``, on the host)
    rather than as an optax schedule, so one compiled step serves any lr and warm-up.
    """
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS))


def init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
    """Fresh parameters (``init_params``: the reference's init laws), Adam at zero, step 0."""
    params = init_params(model_config, seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def token_losses(model: E2EModel, params, batch: StepBatch) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy summed over the batch's non-padding targets, and their count.

    Teacher forcing: the decoder reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``;
    a target counts while its position is below ``n_tokens - 1`` (the reference's
    ``pred_mask``: every token after the first ``<EOS>``, the closing ``<EOS>`` included).
    """
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
    mask = target_mask(batch)
    point_mask = jnp.arange(batch.points.shape[1])[None, :] < batch.n_points[:, None]
    logits = model.apply({"params": params}, batch.points, point_mask, inputs, mask)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def target_mask(batch: StepBatch) -> jax.Array:
    """(B, T_pad - 1) bool: True where ``tokens[:, 1:]`` holds a target to predict."""
    positions = jnp.arange(batch.tokens.shape[1] - 1)[None, :]
    return positions < (batch.n_tokens - 1)[:, None]


# On CPU a micro-batch's logits stay under this size: buffers this small are reused by the
# allocator, where the whole batch's (hundreds of MB) are mapped and page-faulted afresh at
# every step (3-4x slower for the small model).
CPU_LOGITS_BYTES = 32 << 20


def micro_batch_rows(setting: int | None, rows: int, target_len: int, vocab: int) -> int:
    """Rows per micro-batch for a device batch of ``rows`` x ``target_len`` targets.

    ``setting`` is ``TrainConfig.micro_batch``: 0 for the whole batch, a row count, or None
    for automatic (on CPU, as many rows as keep the logits within CPU_LOGITS_BYTES; on
    accelerators the whole batch). The result divides ``rows``.
    """
    if setting == 0 or (setting is None and jax.default_backend() != "cpu"):
        return rows
    wanted = setting or max(1, CPU_LOGITS_BYTES // (4 * max(target_len, 1) * vocab))
    return max(d for d in range(1, min(wanted, rows) + 1) if rows % d == 0)


def summed_loss_and_grads(model: E2EModel, params, batch: StepBatch, rows: int):
    """``token_losses``' sum and its gradient, ``rows`` batch rows at a time: a scan
    accumulates micro-batches, so that activations and logits of one micro-batch only
    are alive at once. Same result as one pass, up to float rounding."""
    def loss_and_grads(chunk: StepBatch):
        return jax.value_and_grad(lambda p: token_losses(model, p, chunk)[0])(params)

    total_rows = batch.points.shape[0]
    if rows >= total_rows:
        return loss_and_grads(batch)
    chunks = jax.tree.map(lambda x: x.reshape(total_rows // rows, rows, *x.shape[1:]), batch)

    def accumulate(carry, chunk):
        total, grads = loss_and_grads(chunk)
        return jax.tree.map(jnp.add, carry, (total, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.scan(accumulate, zero, chunks)[0]


def pmap_step(step):
    """``step`` on every local device: the state replicated and its buffers reused for the
    new state (donated), the batch split along the device axis, the learning rate sent
    whole to every device."""
    return parallel.pmap(step, in_axes=(0, 0, None), donate_argnums=(0,))


def make_train_step(model: E2EModel, optimizer: optax.GradientTransformation,
                    micro_batch: int | None = None):
    """``step(state, batch, lr) -> (state, metrics)`` for one device under ``pmap_step``.

    ``lr`` is this update's learning rate (a float32 scalar, the same on every device);
    ``micro_batch`` is ``TrainConfig.micro_batch`` (see ``micro_batch_rows``).
    Metrics (identical on every device): ``loss`` (mean over the global batch's target
    tokens), ``grad_norm`` (global norm before clipping), and the global ``samples``,
    ``points`` (real ones) and ``tokens`` (targets) of the batch.
    """

    def step(state: TrainState, batch: StepBatch, lr: jax.Array):
        local_count = jnp.sum(target_mask(batch), dtype=jnp.float32)
        # Dividing each device's sum by the mean count over devices and averaging the
        # gradients (pmean) gives the gradient of (global sum / global count).
        mean_count = parallel.pmean(local_count)
        rows = micro_batch_rows(micro_batch, batch.tokens.shape[0], batch.tokens.shape[1] - 1,
                                model.config.decoder_vocab_size)
        total, grads = summed_loss_and_grads(model, state.params, batch, rows)
        loss, grads = parallel.pmean(jax.tree.map(lambda x: x / mean_count, (total, grads)))
        directions, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda d: -lr * d, directions)
        new_state = TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "samples": parallel.psum(jnp.float32(batch.n_points.shape[0])),
            "points": parallel.psum(jnp.sum(batch.n_points, dtype=jnp.float32)),
            "tokens": parallel.psum(local_count),
        }
        return new_state, metrics

    return step
