"""jaxsr weights -> the reference's model file, the inverse of ``convert_reference``.

``export_reference(weights, "OUT.pt")`` writes

- ``OUT.pt``: ``{"embedder": state_dict, "encoder": state_dict, "decoder": state_dict}``
  with the reference's parameter names, shapes (Linear weights transposed back), float32
  tensors and the tied ``decoder.proj.weight``, in PyTorch's zip format (written without
  torch, ``jaxsr.weights.torch_zip``). The reference reads it with ``--reload_model OUT.pt``
  (``torch.load`` then ``load_state_dict`` per module); ``torch.load(..., weights_only=True)``
  accepts it.
- ``OUT.json``: the reference options that build that model (sizes, architecture flags,
  vocabulary settings) and its decoding settings, under the reference's option names.

Both names go through the tables of ``jaxsr.weights.convert`` (``LEAF_NAMES``,
``MODEL_OPTIONS``, ``_UNSUPPORTED``), so ``convert_reference("OUT.pt", DIR)`` gives back the
same arrays and config. Weights that the reference cannot express (a bfloat16 compute
dtype, a feed-forward multiplier other than 4, another vocabulary, ...) raise
``ReferenceExportError`` naming the setting.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

from jaxsr.data.config import GeneratorConfig, with_current_names
from jaxsr.expr import tokens
from jaxsr.fileio import atomic_files
from jaxsr.model.config import ModelConfig
from jaxsr.model.params import MODULES
from jaxsr.weights.convert import (
    _UNSUPPORTED,
    MODEL_OPTIONS,
    OPTION_DECODING,
    options_path,
    to_reference_state_dict,
)
from jaxsr.weights.format import Weights, load_model
from jaxsr.weights.torch_zip import write_torch_zip

# The reference's N_MAX_POSITIONS and its feed-forward width (4 x the model width).
REFERENCE_POSITIONS = 4096
REFERENCE_FFN_MULTIPLIER = 4
# Options of the reference that jaxsr's fixed vocabulary implies (tokens.py): 4 significant
# digits, exponents -100..100, integers -10..10, variables x_0..x_9.
VOCABULARY_OPTIONS = {"float_precision": tokens.PRECISION, "mantissa_len": 1,
                      "max_exponent": tokens.MAX_EXPONENT, "max_int": 10}


class ReferenceExportError(ValueError):
    """The weights use a setting that the reference's model cannot express."""


def export_reference(weights: str | os.PathLike | Weights, out_path: str | os.PathLike) -> Path:
    """Writes ``weights`` (a weights directory, a model name such as ``"default"`` resolved as
    ``load_model`` does, or a ``Weights``) as the reference's model file ``out_path`` and its
    options as the JSON beside it (same name, ``.json``); returns ``out_path``.

    Both files are written to temporary names in their directory and renamed when complete.
    """
    if not isinstance(weights, Weights):
        weights = load_model(weights)
    out_path = Path(out_path)
    if out_path.suffix == ".json":
        raise ReferenceExportError(f"{out_path}: the model file needs another suffix than "
                                   ".json (its options are written to NAME.json beside it)")
    options = reference_options(weights)
    state_dicts = reference_state_dicts(weights.params)
    with atomic_files() as files:
        files.write(out_path, lambda f: write_torch_zip(f, state_dicts))
        files.write(options_path(out_path), json.dumps(options, indent=1) + "\n")
    return out_path


def reference_state_dicts(params: dict) -> dict[str, collections.OrderedDict]:
    """jaxsr params -> the reference's three state dicts, keyed without the module prefix
    (as ``module.state_dict()`` and ``--reload_model`` have them)."""
    parts = {name: collections.OrderedDict() for name in MODULES}
    for key, value in to_reference_state_dict(params).items():
        module, _, rest = key.partition(".")
        parts[module][rest] = value
    return parts


def reference_options(weights: Weights) -> dict:
    """The reference's options that build the model of ``weights``, and its decoding
    settings; raises ReferenceExportError naming the first setting it has no equivalent for."""
    check_exportable(weights)
    config = weights.config
    options = {"embedder_type": "LinearPoint", "fp16": False}
    options.update({option: getattr(config, field)
                    for field, (option, _) in MODEL_OPTIONS.items()})
    # jaxsr's architecture is the first accepted value of each flag the converter checks.
    options.update({flag: accepted[0] for flag, (accepted, _) in _UNSUPPORTED.items()})
    options.update(VOCABULARY_OPTIONS)
    options["max_len"] = _training_max_len(weights)
    options.update({k: weights.decoding[k] for k in OPTION_DECODING if k in weights.decoding})
    return options


def _training_max_len(weights: Weights) -> int:
    """The most points per set the model was trained on (the reference's max_len, which its
    embedder checks): as recorded by ``jaxsr train``'s export or by the converter (the
    reference's own flags), else the reference's default."""
    converted = weights.metadata.get("training_params") or {}
    if isinstance(converted.get("max_len"), int):
        return converted["max_len"]
    train_config = weights.metadata.get("source", {}).get("train_config") or {}
    generator = with_current_names(train_config.get("generator") or {})
    return int(generator.get("max_points", GeneratorConfig().max_points))


# ModelConfig field -> (the only value the reference can build, why).
_FIXED = {
    "dtype": ("float32", "the reference computes in float32 (its only other mode, --fp16, "
                         "is float16 on a GPU); it has no bfloat16 model"),
    "ffn_multiplier": (REFERENCE_FFN_MULTIPLIER,
                       "the reference's feed-forward width is 4 x the model width"),
    "max_positions": (REFERENCE_POSITIONS,
                      "the reference's decoder has N_MAX_POSITIONS = 4096 positions"),
    "tokens_per_float": (3, "the shared vocabulary encodes a float in 3 tokens "
                            "(mantissa_len 1 with float_precision 3)"),
    "max_input_dimension": (tokens.MAX_INPUT_DIMENSION,
                            "the reference's output vocabulary has one variable per input "
                            "dimension, and jaxsr's has x_0..x_9"),
}


def check_exportable(weights: Weights) -> None:
    """Raises ReferenceExportError for the first setting of ``weights`` the reference lacks.

    The fixed fields above must have their one value; the other fields read through
    MODEL_OPTIONS export as they are; any other ModelConfig field (the vocabulary sizes and pad ids, or an
    option added to jaxsr later) must keep its default, which is the reference's.
    """
    config, default = weights.config, ModelConfig()
    for field in dataclasses.fields(ModelConfig):
        value = getattr(config, field.name)
        if field.name in _FIXED:
            wanted, why = _FIXED[field.name]
        elif field.name in MODEL_OPTIONS:
            continue
        else:
            wanted, why = getattr(default, field.name), "the reference has no option for it"
        if value != wanted:
            raise ReferenceExportError(f"cannot export {field.name}={value!r} to the reference "
                                       f"(needs {wanted!r}): {why}")
    _check_vocabulary(weights)


def _check_vocabulary(weights: Weights) -> None:
    for side, theirs, ours in (("encoder", weights.encoder_vocab, tokens.encoder_vocab()),
                               ("decoder", weights.decoder_vocab, tokens.decoder_vocab())):
        if tuple(theirs) != tuple(ours):
            differ = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b),
                          min(len(theirs), len(ours)))
            raise ReferenceExportError(
                f"cannot export the {side} vocabulary: it differs from the reference's at id "
                f"{differ} ({len(theirs)} words, the reference builds {len(ours)})")
