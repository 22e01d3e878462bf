"""Released weights: jaxsr's safe format (npz + JSON + sha256) and the converter for the
reference's ``model1.pt``.

>>> from jaxsr.weights import convert_reference, load_weights
>>> convert_reference("model1.pt", "e2e-paper")      # once; no torch needed
>>> weights = load_weights("e2e-paper")               # checks sha256 and shapes
>>> weights.model, weights.params, weights.config, weights.decoding
>>> export_reference("default", "default.pt")        # back to the reference; no torch needed
"""

from jaxsr.model.params import ParamsMismatchError
from jaxsr.weights.convert import (
    CheckpointError,
    CheckpointMismatchError,
    Opaque,
    ReferenceCheckpoint,
    VocabularyMismatchError,
    check_vocabularies,
    config_from_reference,
    convert_reference,
    map_reference_state_dict,
    read_reference_checkpoint,
    to_reference_state_dict,
    unpickle_checkpoint,
)
from jaxsr.weights.format import (
    DEFAULT_DECODING,
    UntrainedModelWarning,
    Weights,
    WeightsChecksumError,
    WeightsFormatError,
    default_model_path,
    load_model,
    load_weights,
    read_weights_config,
    save_weights,
)
from jaxsr.weights.reference_export import ReferenceExportError, export_reference

__all__ = [
    "Weights", "load_model", "load_weights", "read_weights_config", "save_weights",
    "DEFAULT_DECODING", "default_model_path", "UntrainedModelWarning",
    "WeightsFormatError", "WeightsChecksumError", "ParamsMismatchError",
    "convert_reference", "read_reference_checkpoint", "unpickle_checkpoint",
    "config_from_reference", "check_vocabularies", "map_reference_state_dict",
    "to_reference_state_dict", "ReferenceCheckpoint", "Opaque",
    "CheckpointError", "CheckpointMismatchError", "VocabularyMismatchError",
    "export_reference", "ReferenceExportError",
]
