"""The `Task` interface: algorithmic problems of a chosen size, as next-token prediction.

After Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy", and Ruoss et al. 2023,
"Randomized Positional Encodings Boost Length Generalization of Transformers": a task samples
problems of size `length` (e.g. the number of input symbols) and the model is trained on small
sizes and evaluated on larger ones. Here every task is posed to a decoder-only LM:

    sequence = prompt ++ answer        prompt = <bos> x_1 … x_m <sep> [query]
    inputs   = sequence[:-1]           targets = sequence[1:]
    mask     = True exactly at the targets that are answer tokens

so `inputs`, `targets`, `mask` are (b, T) with T = len(prompt) + len(answer) - 1, and the loss
and the accuracy look only at masked positions (the prompt is random, so predicting it is
noise). Every sequence of one batch has the same length; `pad_batches` joins batches of
different lengths with `<pad>` (mask False there).

Accuracy (`score`): the prediction at a masked position is the argmax over the task's *answer
alphabet* (`Task.answer_tokens`), as DeepMind's models have an output layer of the task's
output size. `accuracy` is the per-sequence exact match over the mask, `token_accuracy` the
fraction of correct answer tokens. Chance (`Task.chance_token_accuracy`) is the expected token
accuracy of uniformly random predictions over the answer alphabet, 1/k; a constant predictor
can do better on skewed answers (e.g. the leading zeros of `counting`).

Shapes: b batch, T sequence length (inputs), V vocabulary, k answer-alphabet size.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry

PAD, BOS, SEP = "<pad>", "<bos>", "<sep>"
SPECIALS: tuple[str, ...] = (PAD, BOS, SEP)

Rng = np.random.Generator | torch.Generator


def symbol_names(count: int) -> list[str]:
    """Names of `count` input symbols: 'a'..'z' when they fit, else 's0', 's1', …"""
    if count <= 26:
        return [chr(ord("a") + i) for i in range(count)]
    return [f"s{i}" for i in range(count)]


DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Vocab:
    """Token strings, index = token id. The specials `<pad>`=0, `<bos>`=1, `<sep>`=2 come first."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a task vocabulary must start with {SPECIALS}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"duplicate tokens in vocabulary {self.tokens}")

    @classmethod
    def build(cls, *groups: Sequence[str]) -> Vocab:
        """The specials, then each group's tokens, skipping ones already present."""
        tokens = list(SPECIALS)
        for group in groups:
            tokens += [t for t in group if t not in tokens]
        return cls(tuple(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        try:
            return self.tokens.index(token)
        except ValueError:
            raise UserError(f"token {token!r} is not in the task vocabulary") from None

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """Token strings -> (n,) int64 ids."""
        return np.array([self.id(t) for t in tokens], dtype=np.int64)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def sep_id(self) -> int:
        return 2


@dataclass
class TaskBatch:
    """inputs (b, T) int64; targets (b, T) int64 (inputs shifted by one); mask (b, T) bool —
    True where the target is an answer token (scored by the loss and the accuracy)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if not (self.inputs.shape == self.targets.shape == self.mask.shape):
            raise ValueError(
                f"inputs {tuple(self.inputs.shape)}, targets {tuple(self.targets.shape)} and mask "
                f"{tuple(self.mask.shape)} must have the same (b, T) shape"
            )

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def numpy_rng(rng: Rng) -> np.random.Generator:
    """A numpy generator from either kind: numpy is used as is; a torch generator seeds a new
    numpy one from one draw, so the same torch state always gives the same batch."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        return np.random.default_rng(seed)
    raise TypeError(f"rng must be a numpy.random.Generator or torch.Generator, got {type(rng)}")


class Task(abc.ABC):
    """A family of problems indexed by size. Subclasses set `name`, `description`, build
    `self.vocab` and `self.answer_alphabet` in `__init__`, and implement `answer_length` and
    `generate` (prompt and answer ids for a batch, as numpy arrays)."""

    name: ClassVar[str] = "?"
    description: ClassVar[str] = ""
    vocab: Vocab
    answer_alphabet: Sequence[str]

    # --- to implement ------------------------------------------------------------------------

    @abc.abstractmethod
    def prompt_length(self, length: int) -> int:
        """Tokens in the prompt (with <bos> and <sep>) for problem size `length`."""

    @abc.abstractmethod
    def answer_length(self, length: int) -> int:
        """Tokens in the answer for problem size `length`."""

    @abc.abstractmethod
    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> prompt (b, prompt_length) and answer (b, answer_length) int64 token ids."""

    # --- shared ----------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The constructor arguments (for records and reproducibility)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def answer_tokens(self) -> Tensor:
        """(k,) int64 ids that can appear in an answer; accuracy takes the argmax over them."""
        return torch.from_numpy(self.vocab.ids(self.answer_alphabet))

    @property
    def chance_token_accuracy(self) -> float:
        """Expected token accuracy of uniformly random predictions: 1/k."""
        return 1.0 / len(self.answer_alphabet)

    def chance_accuracy(self, length: int) -> float:
        """Expected exact-match accuracy of uniformly random predictions: (1/k)^answer_length."""
        return self.chance_token_accuracy ** self.answer_length(length)

    def min_length(self) -> int:
        return 1

    def max_length(self) -> int | None:
        """The largest problem size the task can pose (None: unbounded)."""
        return None

    def seq_len(self, length: int) -> int:
        """T, the model's input length for problem size `length`."""
        return self.prompt_length(length) + self.answer_length(length) - 1

    def check_length(self, length: int) -> None:
        top = self.max_length()
        if length < self.min_length() or (top is not None and length > top):
            allowed = (
                f"[{self.min_length()}, {top}]" if top is not None else f">= {self.min_length()}"
            )
            raise UserError(f"task '{self.name}': length must be {allowed}, got {length}")

    def sample_batch(self, rng: Rng, batch_size: int, length: int) -> TaskBatch:
        """`batch_size` random problems of size `length` as a `TaskBatch` of (b, T) tensors,
        T = `seq_len(length)`. Deterministic given the generator's state."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.check_length(length)
        prompt, answer = self.generate(numpy_rng(rng), batch_size, length)
        assert prompt.shape == (batch_size, self.prompt_length(length)), prompt.shape
        assert answer.shape == (batch_size, self.answer_length(length)), answer.shape
        seq = torch.from_numpy(np.concatenate([prompt, answer], axis=1).astype(np.int64))
        mask = torch.zeros(seq.shape[1] - 1, dtype=torch.bool)
        mask[prompt.shape[1] - 1 :] = True
        return TaskBatch(seq[:, :-1], seq[:, 1:], mask.expand(batch_size, -1).clone())

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Token ids -> space-separated token strings (for display)."""
        return " ".join(self.vocab.tokens[int(i)] for i in torch.as_tensor(ids).reshape(-1))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def pad_batches(batches: Sequence[TaskBatch]) -> TaskBatch:
    """Concatenate batches of different lengths along b, right-padding with `<pad>` (id 0) and
    mask False, so a padded position is never scored."""
    width = max(b.inputs.shape[1] for b in batches)

    def pad(x: Tensor, value: int | bool) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return TaskBatch(
        torch.cat([pad(b.inputs, 0) for b in batches]),
        torch.cat([pad(b.targets, 0) for b in batches]),
        torch.cat([pad(b.mask, False) for b in batches]),
    )


# --------------------------------------------------------------------------- accuracy


def predictions(logits: Tensor, answer_tokens: Tensor | None = None) -> Tensor:
    """logits (b, T, V) -> (b, T) int64 argmax ids, over `answer_tokens` (k,) when given."""
    if answer_tokens is None:
        return logits.argmax(-1)
    answer_tokens = answer_tokens.to(logits.device)
    return answer_tokens[logits[..., answer_tokens].argmax(-1)]


def score(
    logits: Tensor, batch: TaskBatch, answer_tokens: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """-> (sequence_correct (b,) bool: every masked target right; token_correct (b, T) bool,
    False outside the mask)."""
    if logits.shape[:2] != batch.targets.shape:
        raise UserError(
            f"logits have shape {tuple(logits.shape)}; expected (b, T, V) with (b, T) = "
            f"{tuple(batch.targets.shape)}"
        )
    mask = batch.mask.to(logits.device)
    correct = (predictions(logits, answer_tokens) == batch.targets.to(logits.device)) & mask
    return (correct | ~mask).all(-1), correct


def accuracy(
    logits: Tensor, batch: TaskBatch, answer_tokens: Tensor | None = None
) -> dict[str, float]:
    """{"accuracy": exact-match fraction of sequences, "token_accuracy": fraction of masked
    targets predicted right}."""
    seq_ok, tok_ok = score(logits, batch, answer_tokens)
    return {
        "accuracy": float(seq_ok.float().mean()),
        "token_accuracy": float(tok_ok.sum()) / max(1, int(batch.mask.sum())),
    }


# --------------------------------------------------------------------------- registry

_TASKS: Registry[type[Task]] = Registry("task")
T_ = TypeVar("T_", bound=type[Task])


def register_task(name: str) -> Callable[[T_], T_]:
    """Class decorator: make a task buildable by `name`."""

    def add(cls: T_) -> T_:
        _TASKS.add(name, cls)
        cls.name = name
        return cls

    return add


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return _TASKS.names()


def get_task(name: str, **params: Any) -> Task:
    """Build the task registered as `name`; unknown names or parameters raise `UserError`."""
    cls = _TASKS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"task '{name}' has no parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return cls(**params)
