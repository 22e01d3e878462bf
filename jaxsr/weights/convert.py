"""Convert the reference's ``model1.pt`` into jaxsr weights, without torch and without
running anything the file asks for.

``model1.pt`` is ``torch.save`` of a whole ``ModelWrapper`` module: a zip archive holding a
pickled object graph (``*/data.pkl``) and the raw bytes of every tensor storage
(``*/data/<key>``). ``_RestrictedUnpickler`` rebuilds that graph with:

- tensors and parameters as numpy arrays, read from the raw storages (dtype, offset,
  shape and strides checked against the storage's size before any view is made);
- plain containers (``dict``, ``list``, ``tuple``, ``set``, ``OrderedDict``) as themselves;
- every other class or function named in the file (modules, the environment, ``getattr``,
  ``os.system``, ...) as an inert ``Opaque`` placeholder that only records its arguments and
  state. No constructor, function or import named by the file is ever run.

From the placeholders' recorded state the converter reads the three sub-modules'
``_parameters``/``_buffers``/``_modules``, ``env.params``, the two id -> word vocabularies
and the wrapper's decoding attributes, then maps the state dicts onto jaxsr's parameter tree.
``LEAF_NAMES`` and ``MODEL_OPTIONS`` are the name tables between the two models; the
exporter (``jaxsr.weights.reference_export``) writes through the same tables.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import functools
import io
import json
import math
import os
import pickle
import pickletools
import zipfile
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxsr.expr.tokens import decoder_vocab as jaxsr_decoder_vocab
from jaxsr.expr.tokens import encoder_vocab as jaxsr_encoder_vocab
from jaxsr.model.config import ModelConfig
from jaxsr.model.params import abstract_params, flatten_params, unflatten_params
from jaxsr.weights.format import DEFAULT_DECODING, save_weights, sha256_file

DECODING_ATTRIBUTES = ("beam_type", "beam_size", "beam_temperature", "beam_length_penalty",
                       "beam_early_stopping", "max_generated_output_len")
# Decoding settings that an options file (OUT.json) carries: the wrapper's, and the bag size
# (the reference's max_input_points, which the regressor reads under the same name).
OPTION_DECODING = (*DECODING_ATTRIBUTES, "max_input_points")
TIED_KEY = "decoder.proj.weight"
TIED_SOURCE = "decoder.embeddings.weight"


class CheckpointError(ValueError):
    """The file is not a readable reference checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model: unknown keys, missing keys, shapes."""


class VocabularyMismatchError(CheckpointError):
    """The checkpoint's vocabulary differs from jaxsr's."""


# ----------------------------------------------------------------------------- unpickling


class Opaque:
    """Inert stand-in for an instance of a class the converter does not trust.

    Records constructor arguments, pickled state and container items; has no behaviour.
    """

    pickle_module = "?"
    pickle_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args, obj._state, obj._items, obj._entries = args, None, [], []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args, **kwargs):
        # Calling a placeholder (e.g. the result of a placeholder function) stays inert.
        return _CallResult(self, *args)

    def append(self, item):
        self._items.append(item)

    def extend(self, items):
        self._items.extend(items)

    def __setitem__(self, key, value):
        self._entries.append((key, value))

    @classmethod
    def class_path(cls) -> str:
        return f"{cls.pickle_module}.{cls.pickle_name}"

    @property
    def attributes(self) -> dict:
        """The pickled ``__dict__`` (and slots) of the stood-in object; {} if none."""
        state = self._state
        if isinstance(state, tuple) and len(state) == 2:
            merged = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<opaque {self.class_path()}>"


class _CallResult(Opaque):
    """What calling a placeholder returns: another placeholder (args[0] is the callee)."""

    pickle_name = "<call result>"


@functools.lru_cache(maxsize=4096)
def _opaque_class(module: str, name: str) -> type:
    """A placeholder class per pickled global name (a class, so NEWOBJ accepts it)."""
    return type(f"Opaque[{module}.{name}]", (Opaque,),
                {"pickle_module": module, "pickle_name": name})


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` and friends stand for here: an element dtype."""

    name: str
    dtype: np.dtype


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}


def _strided_copy(storage: np.ndarray, offset, size, stride) -> np.ndarray:
    """A copy of the view (offset, size, stride) of a 1-D storage, bounds-checked first."""
    size, stride = tuple(size), tuple(stride)
    numbers = (offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        raise CheckpointError(f"bad tensor layout: offset {offset!r}, size {size!r}, "
                              f"stride {stride!r}")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in rank")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CheckpointError(f"tensor (offset {offset}, size {size}, stride {stride}) reads "
                              f"past its storage of {storage.size} elements")
    if math.prod(size) > storage.size:  # overlapping strides (0) could ask for any size
        raise CheckpointError(f"tensor of size {size} has more elements than its storage "
                              f"({storage.size})")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False)
    return np.array(view)


class _TorchZip:
    """The archive written by ``torch.save`` (torch >= 1.6): a pickle plus raw storages."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist or is not a file")
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is not a PyTorch zip checkpoint (torch >= 1.6 format); files saved "
                "with the legacy format must be re-saved with a newer torch first")
        self.zip = zipfile.ZipFile(path)
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint: "
                                  f"expected one <name>/data.pkl entry, found {pickles}")
        self.prefix = pickles[0][: -len("data.pkl")]
        self.big_endian = self._read_optional("byteorder") == b"big"
        self._storages: dict[str, np.ndarray] = {}

    def _read_optional(self, name: str) -> bytes | None:
        try:
            return self.zip.read(self.prefix + name).strip()
        except KeyError:
            return None

    def data_pickle(self) -> bytes:
        data = self.zip.read(self.prefix + "data.pkl")
        _check_memo_indices(data)
        return data

    def storage(self, key: str, storage_type: _StorageType, numel) -> np.ndarray:
        if key not in self._storages:
            try:
                raw = self.zip.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key!r} is missing from the archive") from None
            dtype = np.dtype(storage_type.dtype)
            if self.big_endian:
                dtype = dtype.newbyteorder(">")
            short = isinstance(numel, int) and numel * dtype.itemsize > len(raw)
            if len(raw) % dtype.itemsize or short:
                raise CheckpointError(f"storage {key!r} has {len(raw)} bytes, not {numel} "
                                      f"elements of {storage_type.name}")
            native = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=False)
            self._storages[key] = native  # read-only; tensors copy out of it
        return self._storages[key]


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_memo_indices(data: bytes) -> None:
    """Refuses a memo index beyond the number of opcodes read so far, before unpickling.

    A pickler numbers its memo entries 0, 1, 2, ... as it writes them, but the C unpickler
    grows its memo table to whatever index it is given: a 10-byte pickle could make it
    allocate gigabytes. ``pickletools.genops`` reads the opcodes without building anything
    (it raises ValueError on a malformed pickle, which the caller reports)."""
    for count, (op, arg, position) in enumerate(pickletools.genops(data), start=1):
        if op.name in _MEMO_PUTS and int(arg) > count:
            raise CheckpointError(f"the pickle stores memo entry {arg} at byte {position}, "
                                  f"after only {count} opcodes: not a pickle a pickler wrote")


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers; everything else becomes an ``Opaque``."""

    def __init__(self, archive: _TorchZip):
        super().__init__(io.BytesIO(archive.data_pickle()))
        self.archive = archive
        self.trusted = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("torch", "Size"): tuple,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
        }

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles name Python 2 modules (__builtin__); map them as pickle would.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.trusted:
            return self.trusted[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, np.dtype(_STORAGE_DTYPES[name]))
        return _opaque_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id in the pickle: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r}")
        return self.archive.storage(str(key), storage_type, numel)

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                        metadata=None):
        if not isinstance(storage, np.ndarray):
            raise CheckpointError(f"tensor rebuilt from {storage!r}, which is not a storage")
        return _strided_copy(storage, offset, size, stride)

    @staticmethod
    def _rebuild_parameter(data, requires_grad=True, hooks=None, state=None):
        if not isinstance(data, np.ndarray):
            raise CheckpointError(f"parameter rebuilt from {data!r}, which is not a tensor")
        return data


def unpickle_checkpoint(path: str | os.PathLike):
    """The object graph of a torch zip checkpoint: arrays, containers and ``Opaque``s."""
    try:
        archive = _TorchZip(Path(path))
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as err:
        raise CheckpointError(f"{path} is a damaged zip archive: {err}") from None
    try:
        return _RestrictedUnpickler(archive).load()
    except CheckpointError:
        raise
    except Exception as err:  # malformed pickles raise anything from the pickle machinery
        raise CheckpointError(f"cannot unpickle {path}: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------- extraction


@dataclasses.dataclass(frozen=True)
class ReferenceCheckpoint:
    """What the converter reads out of a reference checkpoint."""

    state_dict: dict[str, np.ndarray]  # "embedder.fc.weight" -> array, prefixes stripped
    params: dict  # env.params: the training flags
    float_id2word: dict | None  # encoder vocabulary, if the file holds the environment
    equation_id2word: dict | None  # decoder vocabulary
    decoding: dict  # the wrapper's decoding attributes that are present
    root_class: str  # e.g. symbolicregression.model.model_wrapper.ModelWrapper


def _attributes(obj, what: str) -> dict:
    if not isinstance(obj, Opaque):
        raise CheckpointError(f"{what} is {type(obj).__name__}, expected a pickled object")
    return obj.attributes


def _module_state_dict(module, prefix: str, depth: int = 0) -> dict[str, np.ndarray]:
    """The state dict of a pickled ``nn.Module``, from its ``_parameters``, ``_buffers`` and
    ``_modules``."""
    attrs = _attributes(module, f"module {prefix or '<root>'}")
    if "_parameters" not in attrs or "_modules" not in attrs or depth > 32:
        raise CheckpointError(f"{prefix or 'the root'} ({module!r}) is not a torch module")
    parameters, buffers = attrs["_parameters"], attrs.get("_buffers") or {}
    if not (isinstance(parameters, dict) and isinstance(buffers, dict)
            and isinstance(attrs["_modules"], dict)):
        raise CheckpointError(f"{prefix or 'the root'} ({module!r}) has malformed module state")
    skip = attrs.get("_non_persistent_buffers_set") or set()
    tensors = dict(parameters)
    tensors.update({k: v for k, v in buffers.items() if k not in skip})
    state = {}
    for name, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{prefix}{name} is {value!r}, not a tensor")
        state[prefix + name] = value
    for name, child in attrs["_modules"].items():
        if child is not None:
            state.update(_module_state_dict(child, f"{prefix}{name}.", depth + 1))
    return state


def _strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove DDP's ``module.`` after the sub-module name, as the reference's loader does."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        while rest.startswith("module."):
            rest = rest[len("module."):]
        out[f"{head}.{rest}" if rest else key] = value
    return out


def read_reference_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """Read a whole pickled ``ModelWrapper`` (model1.pt), a training checkpoint dict
    (``{"embedder": state_dict, "encoder": ..., "decoder": ..., "params": Namespace}``) or a
    model file without ``params`` (``export_reference``'s OUT.pt), whose options are then
    read from OUT.json beside it."""
    root = unpickle_checkpoint(path)
    if isinstance(root, dict):
        return _from_training_checkpoint(root, path)
    attrs = _attributes(root, f"the top-level object of {path}")
    modules = attrs.get("_modules") or {}
    missing = [m for m in ("embedder", "encoder", "decoder") if modules.get(m) is None]
    if missing:
        raise CheckpointError(f"{path}: the top-level object {root!r} is not a reference "
                              f"ModelWrapper (no sub-modules {missing})")
    state = {}
    for name in ("embedder", "encoder", "decoder"):
        state.update(_module_state_dict(modules[name], f"{name}."))
    env = _attributes(attrs.get("env"), "the wrapper's env")
    return ReferenceCheckpoint(
        state_dict=_strip_module_prefix(state),
        params=_namespace_dict(env.get("params"), "env.params"),
        float_id2word=env.get("float_id2word"),
        equation_id2word=env.get("equation_id2word"),
        decoding={k: attrs[k] for k in DECODING_ATTRIBUTES if k in attrs},
        root_class=type(root).class_path(),
    )


def _from_training_checkpoint(root: dict, path) -> ReferenceCheckpoint:
    missing = [m for m in ("embedder", "encoder", "decoder") if m not in root]
    if missing:
        raise CheckpointError(f"{path}: a dict checkpoint without the entries {missing}")
    state = {}
    for name in ("embedder", "encoder", "decoder"):
        if not isinstance(root[name], dict):
            raise CheckpointError(f"{path}: entry {name!r} is not a state dict")
        for key, value in root[name].items():
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{path}: {name}.{key} is {value!r}, not a tensor")
            state[f"{name}.{key}"] = value
    if "params" in root:
        params, decoding = _namespace_dict(root["params"], "params"), {}
    else:  # a model file (the reference's --reload_model): its options lie beside it
        params = read_reference_options(path)
        decoding = {k: params[k] for k in OPTION_DECODING if k in params}
    return ReferenceCheckpoint(
        state_dict=_strip_module_prefix(state), params=params, float_id2word=None,
        equation_id2word=None, decoding=decoding, root_class="dict",
    )


def options_path(model_path: str | os.PathLike) -> Path:
    """Where a reference model file's options are kept: OUT.json beside OUT.pt."""
    return Path(model_path).with_suffix(".json")


def read_reference_options(model_path: str | os.PathLike) -> dict:
    """The reference options (JSON) that ``export_reference`` writes beside a model file."""
    path = options_path(model_path)
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{model_path} holds state dicts without the training flags; "
                              f"they are expected in {path.name} beside it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the reference options {path}: {err}") from None
    if not isinstance(options, dict):
        raise CheckpointError(f"{path} is not a JSON object of reference options")
    return options


def _namespace_dict(namespace, what: str) -> dict:
    if isinstance(namespace, dict):
        return dict(namespace)
    values = _attributes(namespace, what)
    if not values:
        raise CheckpointError(f"{what} ({namespace!r}) holds no training parameters")
    return values


# ----------------------------------------------------------------------------- config


_UNSUPPORTED = {  # reference flag -> (accepted values, why others cannot be mapped)
    "norm_attention": ((False,), "normalized attention has an extra learned scale"),
    "share_inout_emb": ((True,), "jaxsr ties the output projection to the token table"),
    "enc_positional_embeddings": ((None, "None", ""), "the encoder has no positional table"),
    "dec_positional_embeddings": (("learnable", "sinusoidal"),
                                  "the decoder needs a position table"),
    "n_enc_hidden_layers": ((1,), "the FFN is lin1 -> ReLU -> lin2"),
    "n_dec_hidden_layers": ((1,), "the FFN is lin1 -> ReLU -> lin2"),
}


# ModelConfig field -> (the reference's option, its value when a file lacks it; None: the
# option is required). The converter reads options through this table and export_reference
# writes them through it. tokens_per_float is 2 + mantissa_len; the vocabulary sizes, pad
# ids and the position table's size are read from the file itself.
MODEL_OPTIONS = {
    "max_input_dimension": ("max_input_dimension", None),
    "max_output_dimension": ("max_output_dimension", None),
    "embedder_dim": ("emb_emb_dim", None),
    "embedder_hidden_layers": ("n_emb_layers", 1),
    "embedder_expansion": ("emb_expansion_factor", 1),
    "encoder_dim": ("enc_emb_dim", None),
    "decoder_dim": ("dec_emb_dim", None),
    "encoder_layers": ("n_enc_layers", None),
    "decoder_layers": ("n_dec_layers", None),
    "encoder_heads": ("n_enc_heads", None),
    "decoder_heads": ("n_dec_heads", None),
}


def config_from_reference(checkpoint: ReferenceCheckpoint) -> ModelConfig:
    """The ModelConfig a reference checkpoint was trained with (from ``env.params``)."""
    p = checkpoint.params
    for flag, (accepted, why) in _UNSUPPORTED.items():
        if flag in p and p[flag] not in accepted:
            raise CheckpointError(f"unsupported reference setting {flag}={p[flag]!r}: {why}")
    missing = [option for option, default in MODEL_OPTIONS.values()
               if default is None and option not in p]
    if missing:
        raise CheckpointError(f"env.params lacks the model flags {missing}")
    sizes = {field: p.get(option, default) for field, (option, default) in MODEL_OPTIONS.items()}
    encoder_vocab, decoder_vocab = _vocab_lists(checkpoint)
    positions = checkpoint.state_dict.get("decoder.position_embeddings.weight")
    try:
        return ModelConfig(
            encoder_vocab_size=len(encoder_vocab), decoder_vocab_size=len(decoder_vocab),
            encoder_pad_id=_last_index(encoder_vocab, "<PAD>"),
            decoder_pad_id=_last_index(decoder_vocab, "<PAD>"),
            tokens_per_float=2 + p.get("mantissa_len", 1),
            max_positions=positions.shape[0] if positions is not None else 4096,
            **sizes,
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"env.params does not describe a valid model: {err}") from None


def _last_index(words: list[str], word: str) -> int:
    """The reference's word2id keeps the later id of a duplicated word."""
    if word not in words:
        raise CheckpointError(f"the vocabulary has no {word!r}")
    return len(words) - 1 - words[::-1].index(word)


def _id2word_list(id2word: dict, what: str) -> list[str]:
    if not isinstance(id2word, dict) or sorted(id2word) != list(range(len(id2word))):
        raise CheckpointError(f"{what} is not an id -> word dict with ids 0..n-1")
    return [id2word[i] for i in range(len(id2word))]


def _vocab_lists(checkpoint: ReferenceCheckpoint) -> tuple[list[str], list[str]]:
    """Both vocabularies; jaxsr's where the file holds none (a training checkpoint)."""
    if checkpoint.float_id2word is None or checkpoint.equation_id2word is None:
        return jaxsr_encoder_vocab(), jaxsr_decoder_vocab()
    return (_id2word_list(checkpoint.float_id2word, "env.float_id2word"),
            _id2word_list(checkpoint.equation_id2word, "env.equation_id2word"))


def check_vocabularies(checkpoint: ReferenceCheckpoint) -> None:
    """Raise VocabularyMismatchError naming the ids whose words differ from jaxsr's."""
    encoder_vocab, decoder_vocab = _vocab_lists(checkpoint)
    problems = []
    sides = (("encoder (env.float_id2word)", encoder_vocab, jaxsr_encoder_vocab()),
             ("decoder (env.equation_id2word)", decoder_vocab, jaxsr_decoder_vocab()))
    for name, theirs, ours in sides:
        if len(theirs) != len(ours):
            problems.append(f"{name}: {len(theirs)} words, jaxsr has {len(ours)}")
        differ = [i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b]
        if differ:
            shown = ", ".join(f"{i}: {theirs[i]!r} vs {ours[i]!r}" for i in differ[:10])
            problems.append(f"{name}: {len(differ)} ids differ (checkpoint vs jaxsr) {shown}")
    if problems:
        raise VocabularyMismatchError("the checkpoint's vocabulary is not jaxsr's:\n  "
                                      + "\n  ".join(problems))


# ----------------------------------------------------------------------------- mapping


# jaxsr leaf name -> (the reference's tensor name, stored transposed there?). With module
# names "attentions_3" <-> "attentions.3", this is the whole correspondence between the two
# parameter trees; the converter inverts it over a config's parameters and the exporter
# (``to_reference_state_dict``) applies it, so the two directions cannot drift apart.
LEAF_NAMES = {"kernel": ("weight", True), "scale": ("weight", False),
              "embedding": ("weight", False), "bias": ("bias", False)}


def reference_name(path: str) -> tuple[str, bool]:
    """jaxsr path -> (reference key, transposed?):
    "decoder/attentions_3/q_lin/kernel" -> ("decoder.attentions.3.q_lin.weight", True)."""
    *modules, leaf = path.split("/")
    parts = []
    for name in modules:
        head, _, index = name.rpartition("_")
        parts += [head, index] if index.isdigit() and head else [name]
    reference_leaf, transposed = LEAF_NAMES[leaf]
    return ".".join([*parts, reference_leaf]), transposed


def _jaxsr_names(paths) -> dict[str, tuple[str, bool]]:
    """Reference key -> (jaxsr path, transposed?) for the given jaxsr paths."""
    return {key: (path, transposed)
            for path in paths for key, transposed in [reference_name(path)]}


def map_reference_state_dict(state_dict: dict[str, np.ndarray], config: ModelConfig) -> dict:
    """Reference state dict -> jaxsr params (nested dict of float32 arrays).

    Raises CheckpointMismatchError listing every unknown key, missing parameter and shape
    mismatch; the tied ``decoder.proj.weight`` must equal ``decoder.embeddings.weight``.
    """
    expected = {k: tuple(v.shape) for k, v in flatten_params(abstract_params(config)).items()}
    names = _jaxsr_names(expected)
    problems, flat = [], {}
    for key, value in sorted(state_dict.items()):
        if key == TIED_KEY:
            problems += _check_tied(state_dict)
            continue
        target = names.get(key)
        if target is None:
            problems.append(f"unknown key {key} {tuple(value.shape)}")
            continue
        path, transpose = target
        if not np.issubdtype(value.dtype, np.floating) and value.dtype != ml_dtypes.bfloat16:
            problems.append(f"{key} has dtype {value.dtype}, expected floating point")
            continue
        array = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
        if array.shape != expected[path]:
            problems.append(f"shape of {key}: {tuple(value.shape)}, expected "
                            f"{expected[path][::-1] if transpose else expected[path]}")
        flat[path] = array
    problems += [f"missing key {reference_name(path)[0]} (for {path} {expected[path]})"
                 for path in sorted(expected.keys() - flat.keys())]
    if problems:
        raise CheckpointMismatchError(f"the checkpoint does not fit the model config "
                                      f"({len(problems)} problems):\n  " + "\n  ".join(problems))
    return unflatten_params(flat)


def _check_tied(state_dict: dict[str, np.ndarray]) -> list[str]:
    tied, source = state_dict[TIED_KEY], state_dict.get(TIED_SOURCE)
    if source is None or tied is source:
        return []
    if tied.shape != source.shape or not np.array_equal(tied, source):
        return [f"{TIED_KEY} differs from {TIED_SOURCE}: jaxsr needs the output projection "
                "tied to the token table (share_inout_emb)"]
    return []


def to_reference_state_dict(params: dict) -> dict[str, np.ndarray]:
    """jaxsr params -> the reference's state dict (Linear weights transposed back), including
    the tied ``decoder.proj.weight``. Useful to load jaxsr weights into the reference."""
    state = {}
    for path, value in flatten_params(params).items():
        key, transposed = reference_name(path)
        value = np.asarray(value)
        state[key] = value.T if transposed else value
    state[TIED_KEY] = state[TIED_SOURCE]  # the same array: one storage when exported
    return state


# ----------------------------------------------------------------------------- convert


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def convert_reference(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert the reference's ``model1.pt`` (or a training checkpoint) to jaxsr weights.

    Checks: the file is a torch zip checkpoint whose pickle rebuilds to a ModelWrapper
    (nothing in it is executed); the model flags are supported; both vocabularies equal
    jaxsr's id for id; every tensor maps to a jaxsr parameter with the right shape and
    every parameter is present; the output projection is tied. Writes ``out_dir`` in
    jaxsr's weights format and returns it.
    """
    path = Path(path)
    checkpoint = read_reference_checkpoint(path)
    check_vocabularies(checkpoint)
    config = config_from_reference(checkpoint)
    params = map_reference_state_dict(checkpoint.state_dict, config)
    found = {k: _jsonable(v) for k, v in checkpoint.decoding.items()}
    metadata = {
        "source": {"file": path.name, "sha256": sha256_file(path), "class": checkpoint.root_class,
                   "vocabulary_checked": checkpoint.float_id2word is not None,
                   "decoding_from_file": sorted(found)},
        "training_params": _jsonable(checkpoint.params),
    }
    return save_weights(out_dir, params, config, decoding={**DEFAULT_DECODING, **found},
                        metadata=metadata)
