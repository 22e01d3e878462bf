"""jaxsr's released-weights format: a directory with ``params.npz`` and ``model.json``.

- ``params.npz``: one float32 array per parameter, named by its '/'-joined path
  (``decoder/attentions_0/q_lin/kernel``); read with ``allow_pickle=False``.
- ``model.json``: the format name and version, the ``ModelConfig``, both id -> word
  vocabularies, the decoding defaults, free-form metadata (for a converted checkpoint: the
  source file and its training flags), an index of array shapes, and the sha256 of
  ``params.npz``, which ``load_weights`` checks before reading any array.

Nothing in either file is executable: no pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from jaxsr.expr.tokens import DEFAULT_MAX_LEN
from jaxsr.expr.tokens import decoder_vocab as jaxsr_decoder_vocab
from jaxsr.expr.tokens import encoder_vocab as jaxsr_encoder_vocab
from jaxsr.fileio import atomic_files
from jaxsr.model.config import ModelConfig
from jaxsr.model.modules import E2EModel
from jaxsr.model.params import (
    ParamsMismatchError,
    check_params,
    count_params,
    flatten_params,
    unflatten_params,
)

FORMAT = "jaxsr-weights"
VERSION = 1
ARRAYS_FILE = "params.npz"
META_FILE = "model.json"

# The reference's parsers.py defaults; a converted checkpoint stores its own ModelWrapper's.
DEFAULT_DECODING = {
    "beam_type": "sampling",
    "beam_size": 1,
    "beam_temperature": 0.1,
    "beam_length_penalty": 1.0,
    "beam_early_stopping": True,
    "max_generated_output_len": DEFAULT_MAX_LEN,
}


# The trained model that ships inside the package, in this format (docs/model_card.md). An
# installation without it (e.g. a stripped copy) still works: "default" then stands for the
# random-init FALLBACK_CONFIG, with a warning.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
FALLBACK_CONFIG = "tiny"


class UntrainedModelWarning(UserWarning):
    """The model asked for is not trained: its formulas are random."""


class WeightsFormatError(ValueError):
    """A weights directory is missing, unreadable, or not in jaxsr's format."""


class WeightsChecksumError(WeightsFormatError):
    """params.npz does not have the sha256 recorded in model.json."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """Everything a weights directory holds; ``params`` is a nested dict of numpy arrays."""

    params: dict
    config: ModelConfig
    encoder_vocab: tuple[str, ...]
    decoder_vocab: tuple[str, ...]
    decoding: dict
    metadata: dict

    @property
    def model(self) -> E2EModel:
        return E2EModel(self.config)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(out_dir: str | os.PathLike, params: dict, config: ModelConfig, *,
                 decoding: dict | None = None, encoder_vocab=None, decoder_vocab=None,
                 metadata: dict | None = None) -> Path:
    """Write ``params`` (+ config, vocabularies, decoding defaults) to ``out_dir``.

    Vocabularies default to jaxsr's (the reference's order). The parameters are checked
    against the config first, so a directory is never written with arrays that cannot load.
    """
    check_params(params, config)
    encoder_vocab = list(jaxsr_encoder_vocab() if encoder_vocab is None else encoder_vocab)
    decoder_vocab = list(jaxsr_decoder_vocab() if decoder_vocab is None else decoder_vocab)
    _check_vocab_sizes(encoder_vocab, decoder_vocab, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v, np.float32) for k, v in sorted(flatten_params(params).items())}
    # Both files are complete before either is renamed: a crash leaves the old pair, or at
    # worst new arrays beside the old model.json, which the sha256 check then refuses.
    with atomic_files() as files:
        written = files.write(out / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "sha256": sha256_file(written),
            "n_parameters": count_params(arrays),
            "config": config.to_dict(),
            "decoding": dict(DEFAULT_DECODING if decoding is None else decoding),
            "metadata": metadata or {},
            "arrays": {k: list(v.shape) for k, v in arrays.items()},
            "encoder_vocab": encoder_vocab,
            "decoder_vocab": decoder_vocab,
        }
        files.write(out / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
    return out


def load_weights(path: str | os.PathLike, *, verify_checksum: bool = True) -> Weights:
    """Read a weights directory (or its ``model.json``), checking the sha256 and all shapes."""
    meta_path = _meta_path(Path(path))
    meta = _read_meta(meta_path)
    arrays_path = meta_path.parent / ARRAYS_FILE
    if not arrays_path.is_file():
        raise WeightsFormatError(f"{arrays_path} is missing (model.json refers to it)")
    if verify_checksum:
        actual = sha256_file(arrays_path)
        if actual != meta["sha256"]:
            raise WeightsChecksumError(
                f"{arrays_path} has sha256 {actual}, but {meta_path.name} records "
                f"{meta['sha256']}: the file is corrupted or was modified")
    config = _config_from_meta(meta, meta_path)
    _check_vocab_sizes(meta["encoder_vocab"], meta["decoder_vocab"], config)
    arrays = _read_arrays(arrays_path)
    _check_layer_counts(config, len(arrays), arrays_path)
    params = unflatten_params(arrays)
    check_params(params, config, what=f"arrays in {arrays_path}")
    return Weights(
        params=params, config=config, encoder_vocab=tuple(meta["encoder_vocab"]),
        decoder_vocab=tuple(meta["decoder_vocab"]), decoding=dict(meta["decoding"]),
        metadata=dict(meta.get("metadata", {})),
    )


def read_weights_config(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The config and metadata of a weights directory, without reading the arrays."""
    meta_path = _meta_path(Path(path))
    meta = _read_meta(meta_path)
    return _config_from_meta(meta, meta_path), meta


def default_model_path() -> Path | None:
    """The directory of the shipped default model, or None when this installation lacks it."""
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / META_FILE).is_file() else None


def load_model(spec: str | os.PathLike, seed: int = 0) -> Weights:
    """A model by config name (``paper``/``small``/``tiny``: random weights, for training or
    tests), by path (a directory written by ``save_weights`` or ``jaxsr convert``), or
    ``"default"``: the shipped default model; when it is missing, the random-init
    ``FALLBACK_CONFIG`` with an ``UntrainedModelWarning`` (``metadata["fallback_for"]`` says so).
    """
    from jaxsr.model.config import CONFIGS, get_config
    from jaxsr.model.params import init_params

    if isinstance(spec, str) and spec == "default":
        path = default_model_path()
        if path is not None:
            return load_weights(path)
        warnings.warn(
            f"no trained default model in this installation ({DEFAULT_MODEL_DIR} is missing): "
            f"using the untrained {FALLBACK_CONFIG!r} config with random weights instead: it has "
            "learned nothing, so its formulas are random. Pass a weights directory to use "
            "trained weights.",
            UntrainedModelWarning, stacklevel=2)
        weights = load_model(FALLBACK_CONFIG, seed)
        return dataclasses.replace(weights, metadata={**weights.metadata,
                                                      "fallback_for": "default"})
    if isinstance(spec, str) and spec in CONFIGS:
        config = get_config(spec)
        return Weights(params=init_params(config, seed), config=config,
                       encoder_vocab=tuple(jaxsr_encoder_vocab()),
                       decoder_vocab=tuple(jaxsr_decoder_vocab()),
                       decoding=dict(DEFAULT_DECODING),
                       metadata={"random_init": {"config": spec, "seed": seed}})
    if not Path(spec).exists():
        raise WeightsFormatError(f"{spec!r} is neither a model config name "
                                 f"({', '.join(sorted(CONFIGS))}), 'default', nor an existing "
                                 "path")
    return load_weights(spec)


def _meta_path(path: Path) -> Path:
    meta_path = path / META_FILE if path.is_dir() else path
    if not meta_path.is_file():
        raise WeightsFormatError(
            f"no jaxsr weights at {path}: expected a directory with {META_FILE} and {ARRAYS_FILE}")
    return meta_path


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise WeightsFormatError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsFormatError(f"{meta_path} is not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise WeightsFormatError(
            f"{meta_path} has format version {meta.get('version')!r}; this jaxsr reads {VERSION}")
    required = ("sha256", "config", "decoding", "encoder_vocab", "decoder_vocab")
    missing = [key for key in required if key not in meta]
    if missing:
        raise WeightsFormatError(f"{meta_path} lacks the entries {missing}")
    _check_entries(meta, meta_path)
    return meta


# The type of each model.json entry a load reads, and of each decoding default the
# regressor reads (an edited file must fail here, by name, rather than deep in a fit).
_ENTRY_TYPES = {"sha256": str, "config": dict, "decoding": dict, "encoder_vocab": list,
                "decoder_vocab": list, "metadata": dict}
_DECODING_CHECKS = {
    "beam_type": (lambda v: isinstance(v, str), "a string"),
    "beam_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "beam_temperature": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "beam_length_penalty": (lambda v: _is_number(v), "a number"),
    "beam_early_stopping": (lambda v: isinstance(v, bool), "true or false"),
    "max_generated_output_len": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "max_input_points": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _check_entries(meta: dict, meta_path: Path) -> None:
    for key, kind in _ENTRY_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise WeightsFormatError(f"{meta_path}: {key} must be a JSON "
                                     f"{'object' if kind is dict else kind.__name__}, got "
                                     f"{type(meta[key]).__name__}")
    for key, (valid, wanted) in _DECODING_CHECKS.items():
        if key in meta["decoding"] and not valid(meta["decoding"][key]):
            raise WeightsFormatError(f"{meta_path}: decoding.{key} must be {wanted}, got "
                                     f"{meta['decoding'][key]!r}")
    # Decoding reads tokens with jaxsr's vocabulary, whatever the file lists.
    for side, theirs, ours in (("encoder", meta["encoder_vocab"], jaxsr_encoder_vocab()),
                               ("decoder", meta["decoder_vocab"], jaxsr_decoder_vocab())):
        if theirs != ours:
            first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b),
                         min(len(theirs), len(ours)))
            raise WeightsFormatError(
                f"{meta_path}: the {side} vocabulary is not jaxsr's ({len(theirs)} words, "
                f"jaxsr has {len(ours)}; first difference at id {first})")


# The largest sizes a weights file may declare. Checking the arrays against a config means
# tracing the model it describes, which takes time and memory in proportion to these: an
# edited model.json (the sha256 covers params.npz only) must not make a load hang.
CONFIG_LIMITS = {"encoder_vocab_size": 1 << 20, "decoder_vocab_size": 1 << 20,
                 "max_input_dimension": 1024, "max_output_dimension": 1024,
                 "tokens_per_float": 16, "embedder_dim": 1 << 16, "embedder_hidden_layers": 64,
                 "embedder_expansion": 64, "encoder_dim": 1 << 16, "decoder_dim": 1 << 16,
                 "encoder_layers": 512, "decoder_layers": 512, "ffn_multiplier": 64,
                 "max_positions": 1 << 20}


def _config_from_meta(meta: dict, meta_path: Path) -> ModelConfig:
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise WeightsFormatError(f"{meta_path} has an invalid model config: {err}") from None
    for field, limit in CONFIG_LIMITS.items():
        if getattr(config, field) > limit:
            raise WeightsFormatError(f"{meta_path}: config.{field} = {getattr(config, field)} "
                                     f"is beyond what jaxsr loads ({limit})")
    return config


def _check_layer_counts(config: ModelConfig, n_arrays: int, arrays_path: Path) -> None:
    """Every layer has arrays of its own: more layers than arrays cannot fit (and would be
    traced for nothing)."""
    layers = config.encoder_layers + config.decoder_layers + config.embedder_hidden_layers
    if layers > n_arrays:
        raise ParamsMismatchError(f"arrays in {arrays_path} do not fit the model config: "
                                  f"{layers} layers, but only {n_arrays} arrays")


def _read_arrays(arrays_path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise WeightsFormatError(f"cannot read {arrays_path}: {err}") from None


def _check_vocab_sizes(encoder_vocab, decoder_vocab, config: ModelConfig) -> None:
    for side, vocab, size in (("encoder", encoder_vocab, config.encoder_vocab_size),
                              ("decoder", decoder_vocab, config.decoder_vocab_size)):
        if len(vocab) != size:
            raise WeightsFormatError(
                f"the {side} vocabulary has {len(vocab)} words but the config says {size}")
