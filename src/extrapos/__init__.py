"""extrapos: positional encodings that let Transformer language models extrapolate.

    from extrapos import GPT, GPTConfig, build_encoding, list_encodings, perplexity

See README.md for the command line (`extrapos bench`, `train`, `eval`, `generate`).
"""

from extrapos.encodings import (
    PositionalEncoding,
    alibi_slopes,
    build_encoding,
    list_encodings,
    register,
    rope_inv_freq,
)
from extrapos.errors import UserError
from extrapos.evaluate import evaluate_lengths, perplexity
from extrapos.model import GPT, GPTConfig

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "PositionalEncoding",
    "UserError",
    "alibi_slopes",
    "build_encoding",
    "evaluate_lengths",
    "list_encodings",
    "perplexity",
    "register",
    "rope_inv_freq",
]
