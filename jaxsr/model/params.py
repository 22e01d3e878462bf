"""Parameter trees: shapes, counts, random initialisation, flat '/'-joined names, checks."""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.model.config import ModelConfig
from jaxsr.model.modules import E2EModel

MODULES = ("embedder", "encoder", "decoder")


class ParamsMismatchError(ValueError):
    """Parameters do not fit a config: missing, unexpected or wrongly shaped arrays."""


def _dummy_inputs(config: ModelConfig):
    return (jnp.zeros((1, 1, config.tokens_per_point), jnp.int32), jnp.ones((1, 1), bool),
            jnp.zeros((1, 1), jnp.int32))


def abstract_params(config: ModelConfig) -> dict:
    """Shapes and dtypes of the parameters (``jax.ShapeDtypeStruct``); nothing allocated."""
    model = E2EModel(config)
    return jax.eval_shape(model.init, jax.random.key(0), *_dummy_inputs(config))["params"]


def count_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters per module and in total (the tied output matrix counts once)."""
    return dict(_param_counts(config))


@functools.lru_cache(maxsize=16)
def _param_counts(config: ModelConfig) -> tuple[tuple[str, int], ...]:
    shapes = abstract_params(config)
    counts = [(name, count_params(shapes[name])) for name in MODULES]
    return (*counts, ("total", sum(n for _, n in counts)))


def flatten_params(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"decoder/attentions_0/q_lin/kernel": array, ...}."""
    flat = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def check_params(params: dict, config: ModelConfig, what: str = "parameters") -> None:
    """Raise ParamsMismatchError naming every missing, unexpected or misshapen array."""
    expected = {k: tuple(v.shape) for k, v in flatten_params(abstract_params(config)).items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_params(params).items()}
    problems = [f"missing: {k} {expected[k]}" for k in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected: {k} {got[k]}" for k in sorted(got.keys() - expected.keys())]
    problems += [f"shape of {k}: {got[k]}, expected {expected[k]}"
                 for k in sorted(expected.keys() & got.keys()) if got[k] != expected[k]]
    if problems:
        raise ParamsMismatchError(f"{what} do not fit the model config "
                                  f"({len(problems)} problems):\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------- init


def init_params(config: ModelConfig, seed: int = 0) -> dict:
    """Random parameters with the reference's init distributions, drawn on the host.

    The distributions are those of the modules' initializers (``E2EModel.init`` gives the
    same laws): Linear weights and biases U(+-1/sqrt(fan_in)), embeddings N(0, dim^-1/2)
    with zero padding rows, LayerNorm scale 1 and bias 0. numpy draws them because XLA
    needs ~10 s on CPU to compile the ~100 separate threefry draws of a jitted init.
    Each array's draw depends only on (seed, its name), so configs share prefixes sanely.
    """
    pad_rows = {"embedder/embeddings": config.encoder_pad_id,
                "decoder/embeddings": config.decoder_pad_id}
    modules: dict[str, dict[str, tuple]] = {}
    for path, leaf in flatten_params(abstract_params(config)).items():
        module, name = path.rsplit("/", 1)
        modules.setdefault(module, {})[name] = leaf.shape
    params = {}
    for module, leaves in sorted(modules.items()):
        rng = np.random.default_rng([seed, zlib.crc32(module.encode())])
        for leaf, value in _init_module(leaves, rng, config, pad_rows.get(module)).items():
            params[f"{module}/{leaf}"] = jnp.asarray(value)
    return unflatten_params(params)


def _init_module(leaves: dict[str, tuple], rng: np.random.Generator, config: ModelConfig,
                 pad_row: int | None) -> dict[str, np.ndarray]:
    if "embedding" in leaves:
        rows, dim = leaves["embedding"]
        table = rng.standard_normal((rows, dim), np.float32) * dim**-0.5
        if pad_row is not None:
            table[pad_row] = 0
        return {"embedding": table}
    if "scale" in leaves:  # LayerNorm
        return {"scale": np.ones(leaves["scale"], np.float32),
                "bias": np.zeros(leaves["bias"], np.float32)}
    # A Linear (kernel + bias), or the output bias alone, whose fan-in is the decoder width.
    fan_in = leaves["kernel"][0] if "kernel" in leaves else config.decoder_dim
    bound = 1.0 / math.sqrt(fan_in)
    return {name: rng.uniform(-bound, bound, shape).astype(np.float32)
            for name, shape in sorted(leaves.items())}
