"""The settings of the dialogue suite (`extrapos bench --suite dialogue`; see
`extrapos.bench.dialogue`), in a module of their own so that building the command line (which
generates the suite's probe-size flags from these fields) does not import the training driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.settings import setting
from extrapos.encodings import encoding_class
from extrapos.models.config import GPTConfig
from extrapos.training.config import LossOn, TrainConfig

__all__ = ["DIALOGUE_METHODS", "PROBE_FLAGS", "DialogueBenchConfig"]

DIALOGUE_METHODS = ("sinusoidal", "learned", "nope", "rope", "alibi", "t5", "kerple_log", "fire")
# fields that choose which runs exist; every other field must match to keep a finished record
_SELECTION = ("methods", "seeds")
#: DialogueBenchConfig fields with a `bench --suite dialogue` flag of their own
PROBE_FLAGS = ("max_dialogues", "recall_trials", "gen_prompts")


@dataclass
class DialogueBenchConfig:
    """What the dialogue bench runs (see `extrapos.bench.dialogue`)."""

    data: str
    methods: list[str] = field(default_factory=lambda: list(DIALOGUE_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_len: int = 64
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    tokenizer: str = "byte"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    loss_on: LossOn = "all"
    # probe sizes: `bench --suite dialogue` flags (PROBE_FLAGS), generated from these fields
    max_dialogues: int = setting(200, "test dialogues scored for history use (file order)")
    recall_factors: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    recall_trials: int = setting(24, "recall prompts per distance (the fact kinds in turn)")
    candidates: int = 5
    gen_prompts: int = setting(4, "held-out prompts continued for the long-generation stage")
    gen_factor: int = 16  # continuations to gen_factor · L tokens
    gen_temperature: float = 0.8
    ngram: int = 4

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("no methods selected; pass --methods with names from `extrapos list`")
        for method in self.methods:
            encoding_class(method)  # unknown -> UserError listing the known names
        for name, values in (("methods", self.methods), ("seeds", self.seeds)):
            if not values or len(set(values)) != len(values):
                raise UserError(f"--{name} must list distinct entries, got {values}")
        if self.tokenizer not in ("byte", "bpe"):
            raise UserError(f"--tokenizer must be byte or bpe, got {self.tokenizer!r}")
        for name in ("gen_prompts", "gen_factor", "ngram"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.eval_config()
        self.train_config(self.seeds[0])  # validates train_len, steps, lr, loss_on ...

    @property
    def max_len(self) -> int:
        return max(16, self.gen_factor, *self.recall_factors) * self.train_len

    def model_config(self, method: str, vocab_size: int) -> GPTConfig:
        params: dict[str, Any] = {"max_len": self.max_len} if method == "learned" else {}
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            encoding=method,
            encoding_params=params,
        )

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            train_len=self.train_len,
            batch_size=self.batch_size,
            steps=self.steps,
            lr=self.lr,
            warmup_steps=max(1, self.steps // 10),
            seed=seed,
            loss_on=self.loss_on,
        )

    def eval_config(self) -> Any:  # a probes.dialogue.DialogueEvalConfig
        from extrapos.probes.dialogue import DialogueEvalConfig

        return DialogueEvalConfig(
            train_len=self.train_len,
            max_len=16 * self.train_len,
            max_dialogues=self.max_dialogues,
            recall_factors=tuple(self.recall_factors),
            recall_trials=self.recall_trials,
            candidates=self.candidates,
            seed=0,
        )

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _SELECTION}
