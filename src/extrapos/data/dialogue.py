"""Two-party dialogue corpora in the DailyDialog format (Li et al., IJCNLP 2017).

A folder holding `dialogues_train.txt`, `dialogues_validation.txt` and `dialogues_test.txt`
(one dialogue a line, each utterance ending in ` __eou__`, speakers alternating A, B, A, ...)
loads as a `DialogueCorpus`; `load_corpus` detects such a folder, so `--data DIR` works like any
corpus. The act/emotion label files beside them are ignored.

Rendering. Turn t of a dialogue is the speaker mark `A:` or `B:` (A for even t) followed by the
body `" " + utterance + "\\n"`; a dialogue is its turns concatenated, and dialogues are joined
by one more `"\\n"` (a blank line), so the text of a split reads

    A: Hey man , you wanna buy some weed ?
    B: Some what ?

    A: ...

Tokens are the per-turn encodings concatenated (mark, body, mark, body, ..., separator), so
every turn boundary is a token boundary for every tokenizer; both tokenizers here are
byte-level and round-trip the marks exactly (the BPE pre-tokenizer also cuts at ":" and before
" word", so for it this equals encoding the whole text).

Deduplication. Test and validation dialogues that also occur in train (after whitespace
normalization) are removed; `DialogueCorpus.removed` records how many (DailyDialog: 93 test,
69 validation). Duplicates inside train are kept (they are training data either way).

Training windows (`DialogueLayout.sample_batch`): starts are drawn uniformly among the turn
starts that leave a full window, so every context begins at a speaker mark; with
`loss_on="responses"` only the bodies of turns t >= 1 (the responses: what follows at least one
earlier turn) are targets, the marks, the opening turns and the separators are not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from extrapos.core.errors import UserError

from .cache import tokenizer_hash
from .corpus import FOLDER_FORMATS, Corpus
from .formats import check_text
from .tokenizers import Tokenizer

__all__ = [
    "DIALOGUE_FILES",
    "SPEAKERS",
    "DialogueCorpus",
    "DialogueLayout",
    "LossOn",
    "is_dialogue_folder",
    "load_dialogues",
    "parse_dialogue_line",
    "render_dialogue",
    "target_mask",
]

LossOn = Literal["all", "responses"]
SPEAKERS: tuple[str, str] = ("A:", "B:")
EOU = "__eou__"
# our split name -> DailyDialog's file name
DIALOGUE_FILES = {
    "train": "dialogues_train.txt",
    "valid": "dialogues_validation.txt",
    "test": "dialogues_test.txt",
}
SEPARATOR = "\n"  # after each dialogue: a blank line between dialogues
IGNORE = -100  # F.cross_entropy's ignore_index

Dialogue = tuple[str, ...]


def is_dialogue_folder(path: Path) -> bool:
    """True if `path` holds the three DailyDialog split files."""
    return all((path / name).is_file() for name in DIALOGUE_FILES.values())


def parse_dialogue_line(line: str) -> Dialogue:
    """One DailyDialog line -> its utterances, whitespace normalized (runs of spaces to one)."""
    parts = line.split(EOU)
    if parts and not parts[-1].strip():
        parts = parts[:-1]
    return tuple(" ".join(p.split()) for p in parts)


def speaker(t: int) -> str:
    """The mark of turn t: A for even t, B for odd."""
    return SPEAKERS[t % 2]


def turn_pieces(dialogue: Dialogue, first: int = 0) -> list[tuple[str, str]]:
    """(mark, body) of each turn; `first` is the index of the first turn (sets the marks)."""
    return [(speaker(first + i), f" {u}\n") for i, u in enumerate(dialogue)]


def render_dialogue(dialogue: Dialogue, first: int = 0) -> str:
    """The text of one dialogue (no separator): `A: u0\\nB: u1\\n...`."""
    return "".join(m + b for m, b in turn_pieces(dialogue, first))


def _read_split(path: Path) -> list[tuple[int, Dialogue]]:
    """(line number, dialogue) of every non-blank line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check its permissions") from e
    out = []
    for n, line in enumerate(check_text(data, f"file {path}").splitlines(), 1):
        if not line.strip():
            continue
        dialogue = parse_dialogue_line(line)
        if not dialogue or any(not u for u in dialogue):
            raise UserError(
                f"{path} line {n} has an empty utterance; each utterance must end with "
                f"' {EOU}' and hold text (DailyDialog format)"
            )
        out.append((n, dialogue))
    if not out:
        raise UserError(f"{path} holds no dialogues; one dialogue a line, utterances ending {EOU}")
    return out


@dataclass(frozen=True)
class DialogueLayout:
    """A split tokenized turn by turn.

    Attributes:
        tokens: (n,) int64, the split's token stream (equal to `Corpus.tokens`).
        turn_starts: (m,) int64, token index of every turn's speaker mark, in order.
        response: (n,) bool, True for the tokens of response bodies (turn index >= 1).
        dialogue_of_turn: (m,) int64, the dialogue each turn belongs to.
    """

    tokens: torch.Tensor
    turn_starts: np.ndarray
    response: np.ndarray
    dialogue_of_turn: np.ndarray

    def sample_batch(
        self,
        batch_size: int,
        length: int,
        generator: torch.Generator,
        rows: slice | None = None,
        loss_on: LossOn = "all",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of `length` inputs starting at random turn starts (those that leave a full
        window; any start when there are none), with next-token targets; targets outside
        response bodies are `IGNORE` (-100) when `loss_on == "responses"`.

        Always draws `batch_size` indices from `generator` (like `train.sample_batch`), so every
        rank advances it alike; `rows` picks this rank's share. Returns (b, L), (b, L) int64.
        """
        n = self.tokens.numel()
        starts = self.turn_starts[self.turn_starts + length + 1 <= n]
        if len(starts) == 0:
            if n < length + 2:
                raise UserError(
                    f"the dialogue split has {n} tokens, fewer than train_len + 2 = "
                    f"{length + 2}; use more dialogues or a shorter --train-len"
                )
            starts = np.arange(n - length)
        pick = torch.randint(0, len(starts), (batch_size,), generator=generator)
        if rows is not None:
            pick = pick[rows]
        begin = torch.as_tensor(starts[pick.numpy()], dtype=torch.int64)
        index = begin[:, None] + torch.arange(length + 1)
        windows = self.tokens[index]
        x, y = windows[:, :-1], windows[:, 1:].clone()
        if loss_on == "responses":
            keep = torch.from_numpy(self.response)[index[:, 1:]]
            y[~keep] = IGNORE
        return x, y


@dataclass(frozen=True)
class DialogueCorpus(Corpus):
    """A `Corpus` whose documents are rendered dialogues, with the dialogues themselves.

    Attributes (besides `Corpus`'s):
        dialogues: split -> dialogues (tuples of utterances), after deduplication.
        removed: split -> how many of its dialogues were dropped as duplicates of train ones.
    """

    dialogues: dict[str, list[Dialogue]] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    _layouts: dict[tuple[str, str], DialogueLayout] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def text(self, split: str) -> str:
        """The split's dialogues rendered, each followed by the separator (a blank line)."""
        return "".join(d + SEPARATOR for d in self._docs(split))

    def layout(self, split: str, tokenizer: Tokenizer) -> DialogueLayout:
        """The split tokenized turn by turn (cached per tokenizer)."""
        key = (split, tokenizer_hash(tokenizer))
        if key not in self._layouts:
            self._docs(split)
            self._layouts[key] = _tokenize_turns(self.dialogues[split], tokenizer)
        return self._layouts[key]

    def token_array(self, split: str, tokenizer: Tokenizer) -> np.ndarray:
        return self.layout(split, tokenizer).tokens.numpy()

    def tokens(self, split: str, tokenizer: Tokenizer) -> torch.Tensor:
        return self.layout(split, tokenizer).tokens

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["format"] = "dialogue"
        out["duplicates_removed"] = dict(self.removed)
        return out


def target_mask(corpus: Corpus, split: str, tokenizer: Tokenizer, loss_on: LossOn) -> Any:
    """Which tokens of `split`'s stream count as loss targets: None for `loss_on == "all"`
    (every token), else the (n,) bool mask of response bodies (`DialogueLayout.response`),
    aligned with `corpus.token_array(split, tokenizer)`; token i is a target iff mask[i]. Used
    so that periodic validation scores what training optimizes."""
    if loss_on == "all":
        return None
    if not isinstance(corpus, DialogueCorpus):
        raise UserError(
            f"loss_on={loss_on!r} needs a dialogue corpus (a DailyDialog-format folder); "
            f"{corpus.name} is plain text: use loss_on 'all'"
        )
    return corpus.layout(split, tokenizer).response


def _tokenize_turns(dialogues: list[Dialogue], tokenizer: Tokenizer) -> DialogueLayout:
    # encode each distinct piece once: marks and the separator repeat, bodies mostly do not
    encode = functools.lru_cache(maxsize=None)(lambda s: tokenizer.encode(s).numpy())
    pieces: list[np.ndarray] = []
    response: list[np.ndarray] = []
    starts: list[int] = []
    owner: list[int] = []
    pos = 0
    for d, dialogue in enumerate(dialogues):
        for t, (mark, body) in enumerate(turn_pieces(dialogue)):
            starts.append(pos)
            owner.append(d)
            for text, is_response in ((mark, False), (body, t >= 1)):
                ids = encode(text)
                pieces.append(ids)
                response.append(np.full(len(ids), is_response))
                pos += len(ids)
        sep = encode(SEPARATOR)
        pieces.append(sep)
        response.append(np.zeros(len(sep), dtype=bool))
        pos += len(sep)
    tokens = torch.from_numpy(np.concatenate(pieces).astype(np.int64))
    return DialogueLayout(
        tokens=tokens,
        turn_starts=np.asarray(starts, dtype=np.int64),
        response=np.concatenate(response).astype(bool),
        dialogue_of_turn=np.asarray(owner, dtype=np.int64),
    )


def load_dialogues(path: str | Path, name: str | None = None) -> DialogueCorpus:
    """Load a DailyDialog-format folder (see the module docstring); `name` defaults to the
    path as given. Test/validation dialogues also in train are removed and counted."""
    root = Path(path).expanduser()
    if not is_dialogue_folder(root):
        missing = [f for f in DIALOGUE_FILES.values() if not (root / f).is_file()]
        raise UserError(
            f"{root} is not a dialogue folder (missing {', '.join(missing)}); it needs "
            f"{', '.join(DIALOGUE_FILES.values())}"
        )
    raw = {split: _read_split(root / f) for split, f in DIALOGUE_FILES.items()}
    seen = {d for _, d in raw["train"]}
    kept = {"train": raw["train"]}
    removed = {"train": 0}
    for split in ("valid", "test"):
        kept[split] = [(n, d) for n, d in raw[split] if d not in seen]
        if not kept[split]:
            raise UserError(
                f"every {split} dialogue in {root} also occurs in train; give held-out dialogues"
            )
        removed[split] = len(raw[split]) - len(kept[split])
    dialogues = {s: [d for _, d in rows] for s, rows in kept.items()}
    splits = {s: [render_dialogue(d) for d in ds] for s, ds in dialogues.items()}
    base = Corpus.from_splits(name or str(path), splits)
    return DialogueCorpus(
        name=base.name,
        splits=base.splits,
        content_hash=base.content_hash,
        sources={s: [f"{DIALOGUE_FILES[s]}:{n}" for n, _ in rows] for s, rows in kept.items()},
        dialogues=dialogues,
        removed=removed,
    )


FOLDER_FORMATS.append((is_dialogue_folder, load_dialogues))
