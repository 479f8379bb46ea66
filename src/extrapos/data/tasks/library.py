"""The registered tasks. `length` n is the problem size; formats (before tokenization):

| task | prompt | answer | k (answer alphabet) |
|---|---|---|---|
| copy | <bos> x_1 … x_n <sep> | x_1 … x_n | num_symbols |
| reverse | <bos> x_1 … x_n <sep> | x_n … x_1 | num_symbols |
| sort | <bos> x_1 … x_n <sep> | x sorted ascending | num_symbols |
| parity | <bos> b_1 … b_n <sep> | even / odd (of the number of 1s) | 2 |
| addition | <bos> a + b <sep> (n digits each) | a + b (n + 1 digits) | 10 |
| associative_recall | <bos> k_1 v_1 … k_n v_n <sep> q | the value after the last q | num_values |
| selective_copy | <bos> n cells, ~n·data_fraction of them symbols, the rest '.' <sep> | the symbols in order | num_symbols |
| counting | <bos> x_1 … x_n <sep> q | count of q in x, `width` digits | 10 |

Sources: copy ("duplicate string"), reverse, sort, parity, binary addition are tasks of
Deletang et al. 2023 and Ruoss et al. 2023; addition with reversed digits (least significant
first, so each digit depends only on digits already seen) follows Lee et al. 2023, "Teaching
Arithmetic to Small Transformers", and Zhou et al. 2024; associative recall is Ba et al. 2016 /
Zoology's MQAR (Arora et al. 2023); selective copy is Gu & Dao 2023 (Mamba); counting is the
counting task of Chang & Bisk 2024, "Language Models Need Inductive Biases to Count Inductively".
"""

from __future__ import annotations

import numpy as np

from extrapos.core.errors import UserError
from extrapos.data.tasks.base import DIGITS, Task, Vocab, register_task, symbol_names


def _check_int(task: str, name: str, value: int, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise UserError(f"task '{task}': {name} must be {allowed}, got {value!r}")


def _frame(vocab: Vocab, body: np.ndarray, *tail: np.ndarray) -> np.ndarray:
    """<bos> body <sep> tail…: (b, n) ids -> (b, n + 2 + Σ tail widths)."""
    b = body.shape[0]
    parts = [np.full((b, 1), vocab.bos_id), body, np.full((b, 1), vocab.sep_id), *tail]
    return np.concatenate(parts, axis=1).astype(np.int64)


class _SymbolsTask(Task):
    """Prompt <bos> x_1 … x_n <sep> over `num_symbols` symbols; answer `transform(x)`."""

    def __init__(self, num_symbols: int = 8) -> None:
        _check_int(self.name, "num_symbols", num_symbols, 2)
        self.num_symbols = num_symbols
        self.answer_alphabet = symbol_names(num_symbols)
        self.vocab = Vocab.build(self.answer_alphabet)
        self._first = self.vocab.id(self.answer_alphabet[0])  # ids are contiguous, in order

    def prompt_length(self, length: int) -> int:
        return length + 2

    def answer_length(self, length: int) -> int:
        return length

    def transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self._first + rng.integers(0, self.num_symbols, (batch_size, length))
        return _frame(self.vocab, x), self.transform(x).astype(np.int64)


@register_task("copy")
class Copy(_SymbolsTask):
    """Repeat the input string (Deletang et al. 2023, "duplicate string")."""

    description = "repeat the input string"

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x


@register_task("reverse")
class Reverse(_SymbolsTask):
    """Write the input string backwards (Deletang et al. 2023, "reverse string")."""

    description = "write the input string backwards"

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x[:, ::-1]


@register_task("sort")
class Sort(_SymbolsTask):
    """Write the input symbols in ascending order (Deletang et al. 2023, "bucket sort")."""

    description = "write the input symbols in ascending order"

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=1)


@register_task("parity")
class Parity(Task):
    """Whether the number of 1s in a bit string is even or odd (Deletang et al. 2023, "parity
    check"): one answer token, chance 1/2."""

    description = "even or odd number of 1s in a bit string"

    def __init__(self) -> None:
        self.answer_alphabet = ["even", "odd"]
        self.vocab = Vocab.build(["0", "1"], self.answer_alphabet)

    def prompt_length(self, length: int) -> int:
        return length + 2

    def answer_length(self, length: int) -> int:
        return 1

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        bits = rng.integers(0, 2, (batch_size, length))
        zero, even = self.vocab.id("0"), self.vocab.id("even")
        answer = even + (bits.sum(axis=1, keepdims=True) % 2)
        return _frame(self.vocab, zero + bits), answer.astype(np.int64)


@register_task("addition")
class Addition(Task):
    """Add two n-digit decimal numbers (leading zeros allowed); the sum has n + 1 digits.

    With `reverse_digits` (default) all three numbers are written least significant digit
    first, so the i-th answer digit depends only on operand digits ≤ i and the carry — the
    format in which small Transformers learn addition (Lee et al. 2023; Zhou et al. 2024).
    """

    description = "sum of two n-digit numbers (n + 1 digits)"

    def __init__(self, reverse_digits: bool = True) -> None:
        if not isinstance(reverse_digits, bool):
            raise UserError(
                f"task 'addition': reverse_digits must be true or false, got {reverse_digits!r}"
            )
        self.reverse_digits = reverse_digits
        self.answer_alphabet = list(DIGITS)
        self.vocab = Vocab.build(DIGITS, ["+"])

    def prompt_length(self, length: int) -> int:
        return 2 * length + 3

    def answer_length(self, length: int) -> int:
        return length + 1

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # digits least significant first: (b, n) each
        a = rng.integers(0, 10, (batch_size, length))
        b = rng.integers(0, 10, (batch_size, length))
        total = np.zeros((batch_size, length + 1), dtype=np.int64)
        carry = np.zeros(batch_size, dtype=np.int64)
        for i in range(length):
            s = a[:, i] + b[:, i] + carry
            total[:, i], carry = s % 10, s // 10
        total[:, length] = carry
        if not self.reverse_digits:
            a, b, total = a[:, ::-1], b[:, ::-1], total[:, ::-1]
        zero, plus = self.vocab.id("0"), self.vocab.id("+")
        body = np.concatenate([zero + a, np.full((batch_size, 1), plus), zero + b], axis=1)
        return _frame(self.vocab, body), (zero + total).astype(np.int64)


@register_task("associative_recall")
class AssociativeRecall(Task):
    """n key-value pairs, then a query key; answer its value (Ba et al. 2016; Arora et al. 2023,
    MQAR). Keys are drawn with replacement from `num_keys` symbols, so any n works: the answer
    is the value paired with the *last* occurrence of the query key (an induction-head lookup:
    find the key, copy the token after it). The query is one of the keys present."""

    description = "value of the last occurrence of the query key among n pairs"

    def __init__(self, num_keys: int = 16, num_values: int = 10) -> None:
        _check_int(self.name, "num_keys", num_keys, 1)
        _check_int(self.name, "num_values", num_values, 2)
        self.num_keys, self.num_values = num_keys, num_values
        keys = symbol_names(num_keys)
        values = (
            list(DIGITS[:num_values]) if num_values <= 10 else [f"v{i}" for i in range(num_values)]
        )
        self.answer_alphabet = values
        self.vocab = Vocab.build(keys, values)
        self._key0, self._value0 = self.vocab.id(keys[0]), self.vocab.id(values[0])

    def prompt_length(self, length: int) -> int:
        return 2 * length + 3

    def answer_length(self, length: int) -> int:
        return 1

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        keys = rng.integers(0, self.num_keys, (batch_size, length))
        values = rng.integers(0, self.num_values, (batch_size, length))
        rows = np.arange(batch_size)
        query = keys[rows, rng.integers(0, length, batch_size)]
        match = keys == query[:, None]
        last = length - 1 - match[:, ::-1].argmax(axis=1)
        pairs = np.stack([self._key0 + keys, self._value0 + values], axis=2).reshape(batch_size, -1)
        prompt = _frame(self.vocab, pairs, (self._key0 + query)[:, None])
        return prompt, (self._value0 + values[rows, last])[:, None].astype(np.int64)


@register_task("selective_copy")
class SelectiveCopy(Task):
    """n cells, of which m = max(1, round(n · data_fraction)) at random places hold symbols and
    the rest a blank '.'; answer the symbols in order, skipping blanks (Gu & Dao 2023, Mamba;
    the positions vary, so a fixed-offset copy fails)."""

    description = "copy the symbols scattered among blanks, in order"

    def __init__(self, num_symbols: int = 8, data_fraction: float = 0.25) -> None:
        _check_int(self.name, "num_symbols", num_symbols, 2)
        if not 0 < data_fraction <= 1:
            raise UserError(
                f"task 'selective_copy': data_fraction must be in (0, 1], got {data_fraction!r}"
            )
        self.num_symbols, self.data_fraction = num_symbols, float(data_fraction)
        self.answer_alphabet = symbol_names(num_symbols)
        self.vocab = Vocab.build(["."], self.answer_alphabet)
        self._first = self.vocab.id(self.answer_alphabet[0])

    def num_data(self, length: int) -> int:
        return max(1, min(length, round(length * self.data_fraction)))

    def prompt_length(self, length: int) -> int:
        return length + 2

    def answer_length(self, length: int) -> int:
        return self.num_data(length)

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        m = self.num_data(length)
        places = np.sort(rng.random((batch_size, length)).argsort(axis=1)[:, :m], axis=1)
        data = self._first + rng.integers(0, self.num_symbols, (batch_size, m))
        cells = np.full((batch_size, length), self.vocab.id("."), dtype=np.int64)
        np.put_along_axis(cells, places, data, axis=1)
        return _frame(self.vocab, cells), data.astype(np.int64)


@register_task("counting")
class Counting(Task):
    """How many times the query symbol occurs in x_1 … x_n, written as `width` decimal digits,
    most significant first with leading zeros (a fixed answer format at every n; n is at most
    10^width − 1). After Chang & Bisk 2024."""

    description = "occurrences of the query symbol, as fixed-width decimal"

    def __init__(self, num_symbols: int = 4, width: int = 4) -> None:
        _check_int(self.name, "num_symbols", num_symbols, 1)
        _check_int(self.name, "width", width, 1, 18)
        self.num_symbols, self.width = num_symbols, width
        symbols = symbol_names(num_symbols)
        self.answer_alphabet = list(DIGITS)
        self.vocab = Vocab.build(symbols, DIGITS)
        self._first, self._zero = self.vocab.id(symbols[0]), self.vocab.id("0")

    def max_length(self) -> int:
        return 10**self.width - 1

    def prompt_length(self, length: int) -> int:
        return length + 3

    def answer_length(self, length: int) -> int:
        return self.width

    def generate(
        self, rng: np.random.Generator, batch_size: int, length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, self.num_symbols, (batch_size, length))
        query = rng.integers(0, self.num_symbols, batch_size)
        count = (x == query[:, None]).sum(axis=1)
        powers = 10 ** np.arange(self.width - 1, -1, -1)
        digits = (count[:, None] // powers[None, :]) % 10
        prompt = _frame(self.vocab, self._first + x, (self._first + query)[:, None])
        return prompt, (self._zero + digits).astype(np.int64)
