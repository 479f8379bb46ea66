"""Run extrapos evaluations on a local `transformers` model.

`HFCausalLM` wraps a loaded model so it looks like our `GPT` to evaluation code:
`forward(idx (b, s) int64) -> logits (b, s, V) float32`, `.tokenizer` with the extrapos
`Tokenizer` protocol (`encode`, `decode`, `token_bytes`, `to_dict`), `.encoding.max_len` where
the model has a learned position table (so `evaluate_lengths` reports lengths past it as
errors instead of stopping), and `generate`. Anything that evaluates a `GPT` through these —
`perplexity`, `evaluate_lengths`, and the passkey task (issue 5) — therefore takes an HF model
too: `load_hf_model(dir)` is the hook.

Bits per byte for an HF tokenizer use `token_bytes()`: the UTF-8 bytes each token id stands
for, derived from its token string — exact for byte-level BPE (GPT-2, Llama 3, Qwen: the
GPT-2 byte-to-unicode map is inverted) and for SentencePiece byte-fallback tokens (`<0x0A>`
is 1 byte, `▁` is a space); otherwise the UTF-8 length of the token decoded on its own.
Special tokens count 0 bytes. Approximations: a SentencePiece word-initial `▁` is counted as a
byte although the text's first word has no leading space, and WordPiece/other decoders may
add or drop spaces when a token is decoded alone.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from extrapos.core.errors import UserError
from extrapos.hf.classic import interpolate_position_embeddings, position_limit
from extrapos.hf.rope import config_errors, one_line

__all__ = ["FallbackWarning", "HFCausalLM", "HFTokenizer", "bytes_to_unicode", "load_hf_model"]

#: encoder-only model types that AutoModelForCausalLM maps to an LM head; unless the config
#: says is_decoder, their attention is bidirectional and next-token perplexity is meaningless.
BIDIRECTIONAL_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "electra",
        "ernie",
        "roberta-prelayernorm",
        "rembert",
        "megatron-bert",
        "data2vec-text",
        "xmod",
    }
)
SEQ2SEQ_LM_TYPES = frozenset({"t5", "mt5", "umt5"})
Kind = Literal["causal", "t5"]
DTYPES = ("float32", "bfloat16", "float16", "auto")


class FallbackWarning(UserWarning):
    """A model folder lacked something and a documented fallback is used (the byte tokenizer)."""


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character map (Radford et al. 2019, `encoder.py`),
    used by every byte-level BPE tokenizer (`tokenizers.pre_tokenizers.ByteLevel`)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _uses_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # a backend that cannot serialize: treat as not byte-level
        return False
    return '"ByteLevel"' in json.dumps(spec.get("decoder")) or '"ByteLevel"' in json.dumps(
        spec.get("pre_tokenizer")
    )


class HFTokenizer:
    """A `transformers` tokenizer behind the extrapos `Tokenizer` protocol (no special tokens
    are added on `encode`)."""

    name = "hf"

    def __init__(self, tokenizer: Any, vocab_size: int, source: str = "") -> None:
        self.hf = tokenizer
        self.vocab_size = int(vocab_size)  # the model's (logit) vocab, may exceed the tokenizer's
        self.source = source
        self._token_bytes: Tensor | None = None

    def encode(self, text: str) -> Tensor:
        ids = self.hf(text, add_special_tokens=False, verbose=False)["input_ids"]
        out = torch.tensor(ids, dtype=torch.int64)
        if out.numel() and int(out.max()) >= self.vocab_size:
            raise UserError(
                f"the tokenizer produced id {int(out.max())}, but the model has only "
                f"{self.vocab_size} logits; the tokenizer does not belong to this model"
            )
        return out

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        return self.hf.decode(torch.as_tensor(ids).reshape(-1).tolist())

    def token_bytes(self) -> Tensor:
        """(vocab_size,) int64: UTF-8 bytes per token id (module docstring for the rules)."""
        if self._token_bytes is None:
            self._token_bytes = self._compute_token_bytes()
        return self._token_bytes

    def _compute_token_bytes(self) -> Tensor:
        n = min(len(self.hf), self.vocab_size)
        tokens = self.hf.convert_ids_to_tokens(list(range(n)))
        special = set(getattr(self.hf, "all_special_ids", []) or [])
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        byte_level = _uses_byte_level(self.hf)
        sizes = torch.zeros(self.vocab_size, dtype=torch.int64)  # ids past the tokenizer: 0
        for i, token in enumerate(tokens):
            # a special token that is itself one byte (extrapos exports name the newline BOS
            # and NUL EOS, `extrapos.hf.export`) stands for that byte when text produces it
            is_byte = byte_level and token is not None and len(token) == 1 and token in byte_of
            if token is None or (i in special and not is_byte):
                continue
            if byte_level:
                size = sum(1 if c in byte_of else len(c.encode("utf-8")) for c in token)
            elif _BYTE_FALLBACK.fullmatch(token):
                size = 1
            elif "▁" in token:
                size = len(token.replace("▁", " ").encode("utf-8"))
            else:
                size = len(self.hf.convert_tokens_to_string([token]).encode("utf-8"))
            sizes[i] = size
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hf", "source": self.source, "vocab_size": self.vocab_size}


class _PositionLimit:
    """The `encoding`-like view `evaluate_lengths` reads: `max_len` and `check_positions`."""

    def __init__(self, max_len: int, attribute: str, model_type: str) -> None:
        self.name = model_type
        self.max_len = max_len
        self.attribute = attribute

    def check_positions(self, max_position: int) -> None:
        if max_position >= self.max_len:
            raise UserError(
                f"{self.name} learns a table of {self.attribute}={self.max_len} positions, but "
                f"length {max_position + 1} was asked; use lengths <= {self.max_len} or "
                f"--interpolate-positions {max_position + 1}"
            )


class HFCausalLM(nn.Module):
    """A transformers LM as an extrapos model: `model(idx)` (b, s) -> logits (b, s, V) float32.

    kind "causal": any `AutoModelForCausalLM`. kind "t5": a T5 decoder used as an LM; the
    encoder sees a single EOS token per row and the tokens go in as `decoder_input_ids`.

    Every forward starts from the rotary state the model had when wrapped
    (`extrapos.hf.patch.rotary_state`): transformers' dynamic RoPE keeps the frequencies of the
    longest length it has seen, which made scores depend on the order of the lengths.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, kind: Kind = "causal") -> None:
        from extrapos.hf.patch import rotary_state

        super().__init__()
        self.hf = model
        self._restore_rotary = rotary_state(model)
        self.kind = kind
        self.config = model.config
        self.tokenizer = tokenizer

    @property
    def encoding(self) -> _PositionLimit | None:
        """The learned-position limit (`max_len`, `check_positions`), None when unbounded."""
        limit = position_limit(self.hf)
        return _PositionLimit(*limit, self.config.model_type) if limit else None

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_output_embeddings().weight.shape[0])

    def forward(self, idx: Tensor) -> Tensor:
        if idx.ndim != 2:
            raise UserError(f"idx must have shape (batch, seq), got {tuple(idx.shape)}")
        limit = self.encoding
        if limit is not None:
            limit.check_positions(idx.shape[1] - 1)
        self._restore_rotary()  # each forward from the same state, whatever came before
        if self.kind == "t5":
            eos = self.config.eos_token_id
            encoder_ids = torch.full((idx.shape[0], 1), eos, dtype=idx.dtype, device=idx.device)
            out = self.hf(input_ids=encoder_ids, decoder_input_ids=idx, use_cache=False)
        else:
            out = self.hf(input_ids=idx, use_cache=False)
        return out.logits.float()

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = False,
    ) -> Tensor:
        """Like `GPT.generate` (same sampling), recomputing the whole sequence every step."""
        from extrapos.models.gpt import sample_next

        out = idx
        for _ in range(max_new_tokens):
            logits = self(out)[:, -1]
            out = torch.cat(
                (out, sample_next(logits, temperature, top_k, top_p, generator)[:, None]), 1
            )
        return out


#: files from which AutoTokenizer builds a tokenizer; without any, transformers v5 builds an
#: empty one for some model types (GPT-2: a single token), so we check for them first.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
)


def _load_tokenizer(model_dir: Path, vocab_size: int) -> Any:
    from extrapos.data import ByteTokenizer

    tokenizer, problem = None, "no tokenizer files"
    if any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
            problem = f"its tokenizer does not load: {type(exc).__name__}"
        else:
            if len(tokenizer) < 2:
                tokenizer, problem = None, f"its tokenizer has {len(tokenizer)} token"
    if tokenizer is None:
        if vocab_size < 256:
            raise UserError(
                f"{model_dir} has {problem}, and its vocab_size {vocab_size} < 256 rules out "
                "bytes as ids; add the model's tokenizer files to the folder"
            )
        warnings.warn(
            f"{model_dir} has {problem}; using the extrapos byte tokenizer "
            f"(token id = UTF-8 byte, ids 0..255 of the model's {vocab_size})",
            FallbackWarning,
            stacklevel=3,
        )
        return ByteTokenizer()
    return HFTokenizer(tokenizer, vocab_size, source=str(model_dir))


def load_hf_model(
    model_dir: str | Path,
    *,
    rope: dict[str, Any] | None = None,
    interpolate_positions: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> HFCausalLM:
    """Load a local transformers model folder (`save_pretrained` output) as an `HFCausalLM`.

    Offline only (`local_files_only=True`). The tokenizer comes from the folder
    (`AutoTokenizer`); a folder without one falls back to the byte tokenizer when the vocab
    has >= 256 ids (with a warning). `rope` patches the RoPE frequencies (`patch_rope`);
    `interpolate_positions` stretches a learned position table
    (`interpolate_position_embeddings`). T5 folders load as a decoder-only LM (kind "t5");
    bidirectional encoders (BERT, RoBERTa, ...) are refused unless `is_decoder` is set.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        what = "does not exist" if not model_dir.exists() else "has no config.json"
        raise UserError(
            f"{model_dir} {what}; give a transformers model folder (save_pretrained output)"
        )
    try:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    if isinstance(raw, dict) and "model" in raw and "model_type" not in raw:
        raise UserError(
            f"{model_dir} is an extrapos run; evaluate it with `extrapos eval` or convert it "
            "with `extrapos export-hf RUN_DIR OUT_DIR`"
        )
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, *config_errors()) as exc:
        raise UserError(f"cannot read {model_dir / 'config.json'}: {one_line(exc)}") from exc
    model_type = config.model_type
    kind: Kind = "causal"
    if getattr(config, "is_encoder_decoder", False):
        if model_type not in SEQ2SEQ_LM_TYPES:
            raise UserError(
                f"{model_type} is an encoder-decoder; only T5 ({', '.join(sorted(SEQ2SEQ_LM_TYPES))}) "
                "is evaluated (as a decoder-only LM)"
            )
        kind, auto = "t5", AutoModelForSeq2SeqLM
    elif model_type in BIDIRECTIONAL_TYPES and not getattr(config, "is_decoder", False):
        raise UserError(
            f"{model_type} is a bidirectional encoder (is_decoder=false): next-token perplexity "
            "would let every position see its target, and masked-LM pseudo-perplexity is out of "
            'scope; set "is_decoder": true in config.json to evaluate it as a causal LM'
        )
    else:
        auto = AutoModelForCausalLM
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = auto.from_pretrained(str(model_dir), local_files_only=True, dtype=torch_dtype)
    except (OSError, *config_errors()) as exc:
        raise UserError(f"cannot load the model in {model_dir}: {one_line(exc)}") from exc
    model.to(device).eval()
    if interpolate_positions is not None:
        interpolate_position_embeddings(model, interpolate_positions)
    if rope is not None:
        from extrapos.hf.patch import patch_rope

        patch_rope(model, rope)
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    return HFCausalLM(model, _load_tokenizer(model_dir, vocab_size), kind)
