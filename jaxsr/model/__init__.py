"""The transformer: point embedder, encoder, decoder with a key/value cache, and configs.

>>> from jaxsr.model import E2EModel, get_config, init_params
>>> config = get_config("tiny")
>>> model = E2EModel(config)
>>> params = init_params(config, seed=0)
>>> enc = model.apply({"params": params}, ids, mask, method=E2EModel.encode)
"""

from __future__ import annotations

from jaxsr.model.config import CONFIGS, ModelConfig, get_config
from jaxsr.model.modules import (
    DecodeCache,
    E2EModel,
    MultiHeadAttention,
    PointEmbedder,
    TransformerDecoder,
    TransformerEncoder,
    TransformerFFN,
    dot_product_attention,
)
from jaxsr.model.params import (
    MODULES,
    abstract_params,
    count_params,
    flatten_params,
    init_params,
    param_counts,
    unflatten_params,
)

__all__ = [
    "CONFIGS", "ModelConfig", "get_config",
    "E2EModel", "DecodeCache", "PointEmbedder", "TransformerEncoder", "TransformerDecoder",
    "MultiHeadAttention", "TransformerFFN", "dot_product_attention",
    "init_params", "abstract_params", "count_params", "param_counts", "MODULES",
    "flatten_params", "unflatten_params",
]
