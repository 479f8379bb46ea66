"""extrapos: positional encodings that let Transformer language models extrapolate.

    from extrapos import GPT, GPTConfig, build_encoding, list_encodings, perplexity
    from extrapos import TrainConfig, load_corpus, train

See README.md for the command line (`extrapos bench`, `train`, `eval`, `generate`).

The names below are imported on first use (PEP 562), so torch-free layers (`extrapos.core`,
`extrapos.report`, the CLI parser) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from extrapos.core.errors import UserError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "PositionalEncoding": "extrapos.encodings",
    "alibi_slopes": "extrapos.encodings",
    "build_encoding": "extrapos.encodings",
    "list_encodings": "extrapos.encodings",
    "register": "extrapos.encodings",
    "rope_inv_freq": "extrapos.encodings",
    "GPT": "extrapos.models.gpt",
    "GPTConfig": "extrapos.models.gpt",
    "evaluate_lengths": "extrapos.probes.perplexity",
    "perplexity": "extrapos.probes.perplexity",
    "train": "extrapos.training.lm",
    "TrainConfig": "extrapos.training.config",
    "load_corpus": "extrapos.data",
    "TrainedRun": "extrapos.training.run_dir",
    "load_run": "extrapos.training.run_dir",
}

if TYPE_CHECKING:
    from extrapos.data import load_corpus
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
    from extrapos.training.config import TrainConfig
    from extrapos.training.lm import train
    from extrapos.training.run_dir import TrainedRun, load_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name == "GPT":  # the run layer registers GPT.from_checkpoint when imported
            importlib.import_module("extrapos.training.run_dir")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'extrapos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
    "TrainConfig",
    "UserError",
    "alibi_slopes",
    "build_encoding",
    "evaluate_lengths",
    "list_encodings",
    "load_run",
    "load_corpus",
    "perplexity",
    "register",
    "rope_inv_freq",
    "train",
]

_load_plugins()  # last: plugins import extrapos themselves
