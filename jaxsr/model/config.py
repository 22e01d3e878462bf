"""Model configurations: typed, frozen, and named (``paper``, ``small``, ``tiny``).

The field names say what each size means in this package; the reference's flag names
(``parsers.py``) are given in the comments because the converter reads them from
``model1.pt``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxsr.checks import from_known_fields, int_problem

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the point embedder, the encoder and the decoder.

    Parameters are always stored in float32; ``dtype`` is the compute dtype (``bfloat16``
    for speed on GPU/TPU). Attention softmax and the output logits are float32 regardless.
    """

    # Vocabulary sizes: 10,218 float words on the input side, 10,292 equation words out.
    encoder_vocab_size: int = 10218
    decoder_vocab_size: int = 10292
    # Row of <PAD> in each table; it only matters at initialisation (a zero row).
    encoder_pad_id: int = 8
    decoder_pad_id: int = 82
    # A point is (x_1..x_D, y), each float 3 tokens: 3 * (10 + 1) = 33 ids per point.
    max_input_dimension: int = 10  # max_input_dimension
    max_output_dimension: int = 1  # max_output_dimension
    tokens_per_float: int = 3  # 2 + mantissa_len
    # Point embedder: ids -> embedder_dim each, concatenated, MLP -> encoder_dim.
    embedder_dim: int = 64  # emb_emb_dim
    embedder_hidden_layers: int = 1  # n_emb_layers
    embedder_expansion: int = 1  # emb_expansion_factor
    # Transformer sizes; feed-forward width is ffn_multiplier * dim, as in the reference.
    encoder_dim: int = 512  # enc_emb_dim
    decoder_dim: int = 512  # dec_emb_dim
    encoder_layers: int = 4  # n_enc_layers
    decoder_layers: int = 16  # n_dec_layers
    encoder_heads: int = 16  # n_enc_heads
    decoder_heads: int = 16  # n_dec_heads
    ffn_multiplier: int = 4
    # Rows of the decoder's learned position table (N_MAX_POSITIONS).
    max_positions: int = 4096
    # Compute dtype: "float32", "bfloat16" or "float16".
    dtype: str = "float32"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            problem = int_problem(getattr(self, field.name), python_int=True)
            if field.type == "int" and problem:
                raise ValueError(f"ModelConfig.{field.name} {problem}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"ModelConfig.dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
        for side in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{side}_dim"), getattr(self, f"{side}_heads")
            if dim % heads:
                raise ValueError(f"{side}_dim {dim} is not a multiple of {side}_heads {heads}")
        for name in ("encoder", "decoder"):
            vocab = getattr(self, f"{name}_vocab_size")
            if getattr(self, f"{name}_pad_id") >= vocab:
                raise ValueError(f"{name}_pad_id is outside the {name} vocabulary ({vocab} words)")

    @property
    def tokens_per_point(self) -> int:
        """Encoder ids per point: 33 for the reference."""
        return self.tokens_per_float * (self.max_input_dimension + self.max_output_dimension)

    @property
    def embedder_input_dim(self) -> int:
        return self.tokens_per_point * self.embedder_dim

    @property
    def embedder_hidden_dim(self) -> int:
        return self.embedder_input_dim * self.embedder_expansion

    @property
    def encoder_ffn_dim(self) -> int:
        return self.ffn_multiplier * self.encoder_dim

    @property
    def decoder_ffn_dim(self) -> int:
        return self.ffn_multiplier * self.decoder_dim

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        return from_known_fields(cls, values)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, ModelConfig] = {
    # The released reference model (model1.pt): 93,451,508 parameters.
    "paper": ModelConfig(),
    # About 14M parameters: trains and decodes at a useful speed on one GPU, tolerable on CPU.
    "small": ModelConfig(
        embedder_dim=32, encoder_dim=256, decoder_dim=256, encoder_layers=2,
        decoder_layers=6, encoder_heads=8, decoder_heads=8,
    ),
    # For tests and examples: a forward pass in milliseconds on CPU.
    "tiny": ModelConfig(
        embedder_dim=16, encoder_dim=64, decoder_dim=64, encoder_layers=2,
        decoder_layers=2, encoder_heads=4, decoder_heads=4,
    ),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """The named configuration (``paper``, ``small`` or ``tiny``), with optional overrides."""
    try:
        config = CONFIGS[name]
    except KeyError:
        raise ValueError(
            f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None
    return config.replace(**overrides) if overrides else config
