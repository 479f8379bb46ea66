"""extrapos: positional encodings that let Transformer language models extrapolate.

    from extrapos import GPT, GPTConfig, build_encoding, list_encodings, perplexity

See README.md for the command line (`extrapos bench`, `train`, `eval`, `generate`).
"""

from extrapos.core.errors import UserError
from extrapos.encodings import (
    PositionalEncoding,
    alibi_slopes,
    build_encoding,
    list_encodings,
    register,
    rope_inv_freq,
)
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.perplexity import evaluate_lengths, perplexity
from extrapos.training.run_dir import TrainedRun, load_run  # also registers GPT.from_checkpoint

__version__ = "0.1.0"


def _load_plugins() -> None:
    import warnings

    from extrapos.core.plugins import load_plugins, plugin_errors

    load_plugins()
    for error in plugin_errors():
        warnings.warn(error, stacklevel=2)


__all__ = [
    "GPT",
    "GPTConfig",
    "PositionalEncoding",
    "TrainedRun",
    "UserError",
    "alibi_slopes",
    "build_encoding",
    "evaluate_lengths",
    "list_encodings",
    "load_run",
    "perplexity",
    "register",
    "rope_inv_freq",
]

_load_plugins()  # last: plugins import extrapos themselves
