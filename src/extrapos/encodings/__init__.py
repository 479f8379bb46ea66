"""Positional encodings: one interface (`PositionalEncoding`, five sites), one registry, one
dispatch (`encoded_attention`: which site acts inside attention is decided there only).

Importing this package registers every built-in encoding; `list_encodings()` names them and
`build_encoding(name, **params)` builds one.
"""

# importing a module registers its encodings
from extrapos.encodings import (  # noqa: F401
    absolute,
    bias,
    contextual,
    cope,
    ffn,
    functional,
    hybrid,
    recurrent,
    rope_remap,
    rotary,
    transformer_xl,
    xpos,
)
from extrapos.encodings.base import (
    CacheMode,
    PositionalEncoding,
    Positions,
    Site,
    default_positions,
)
from extrapos.encodings.bias import alibi_bias_bidirectional, alibi_slopes, t5_buckets
from extrapos.encodings.dispatch import encoded_attention
from extrapos.encodings.registry import (
    build_encoding,
    build_for_model,
    encoding_class,
    encoding_parameters,
    list_encodings,
    register,
)
from extrapos.encodings.rope_scaling import rope_inv_freq

__all__ = [
    "CacheMode",
    "PositionalEncoding",
    "Positions",
    "Site",
    "alibi_bias_bidirectional",
    "alibi_slopes",
    "build_encoding",
    "build_for_model",
    "default_positions",
    "encoded_attention",
    "encoding_class",
    "encoding_parameters",
    "list_encodings",
    "register",
    "rope_inv_freq",
    "t5_buckets",
]
