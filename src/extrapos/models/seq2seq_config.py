"""The encoder-decoder's configuration (`Seq2SeqConfig`): shape and encoding, by name.

Kept free of torch, like `models.config.GPTConfig`, so the `translate` command line shows the
true defaults without importing torch; the model is `models.seq2seq.Seq2Seq`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.settings import check_known_fields
from extrapos.models.config import GPTConfig

#: special tokens appended after the tokenizer's vocabulary (see `Seq2SeqConfig`)
NUM_SPECIALS = 3


@dataclass
class Seq2SeqConfig:
    """Shape and encoding of an encoder-decoder. Serializable; validated on creation.

    `vocab_size` counts the tokenizer's ids plus three specials appended after them:
    pad = vocab_size - 3, bos = vocab_size - 2, eos = vocab_size - 1.
    """

    vocab_size: int = 4003
    n_layer: int = 3  # layers in each of encoder and decoder
    n_head: int = 4
    d_model: int = 128  # with the defaults below: BLEU 36 on Multi30k en-de in 25 min on 2 cores
    encoding: str = "sinusoidal"
    encoding_params: dict[str, Any] = field(default_factory=dict)
    d_ff: int | None = None  # SwiGLU hidden width; None = 8/3·D rounded up to a multiple of 16
    norm_eps: float = 1e-5
    dropout: float = 0.1  # residual and embedding dropout (Vaswani et al. use 0.1)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"Seq2SeqConfig.{name} must be a positive integer, got {value!r}")
        if self.vocab_size <= NUM_SPECIALS:
            raise UserError(
                f"Seq2SeqConfig.vocab_size={self.vocab_size} must exceed the {NUM_SPECIALS} specials"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"Seq2SeqConfig.dropout must be in [0, 1), got {self.dropout}")
        from extrapos.encodings.registry import encoding_class  # torch: only when validating

        encoding_class(self.encoding)  # unknown name -> UserError listing the known ones
        self.encoding_params = dict(self.encoding_params)
        self.d_ff = self.stack_config(causal=True).d_ff  # validates d_model/n_head/d_ff/eps

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 3

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1

    def stack_config(self, causal: bool) -> GPTConfig:
        """The GPTConfig of one stack (the same blocks; `causal=False` for the encoder)."""
        return GPTConfig(
            vocab_size=self.vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            encoding=self.encoding,
            encoding_params=self.encoding_params,
            d_ff=self.d_ff,
            norm_eps=self.norm_eps,
            causal=causal,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seq2SeqConfig:
        check_known_fields(cls, data, "seq2seq config")
        return cls(**data)
