"""Parallel data: {split}.{lang} folders, hf translation datasets, joint BPE, token batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from extrapos.core.errors import UserError
from extrapos.data.parallel import (
    epoch_order,
    filter_max_src,
    joint_bpe,
    load_parallel,
    token_batches,
)

# ../shared/data beside the repository (a worktree in /work/wt/NN looks one level further up)
_REPO = Path(__file__).resolve().parents[2]
MULTI30K = (
    next(
        (p for p in (_REPO.parent / "shared", _REPO.parents[1] / "shared") if p.is_dir()),
        _REPO.parent / "shared",
    )
    / "data"
    / "multi30k"
)


def _write(folder: Path, name: str, lines: list[str]) -> None:
    (folder / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.fixture
def parallel_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "train.en", ["a red dog", "", "the cat sits", "a man runs"])
    _write(tmp_path, "train.de", ["ein roter hund", "leer", "die katze sitzt", "ein mann läuft"])
    _write(tmp_path, "val.en", ["a cat"])
    _write(tmp_path, "val.de", ["eine katze"])
    _write(tmp_path, "test.en", ["a dog runs", "the man"])
    _write(tmp_path, "test.de", ["ein hund läuft", "der mann"])
    return tmp_path


def test_folder_layout_loads_every_split_and_counts_empty_pairs(parallel_dir: Path) -> None:
    data = load_parallel(str(parallel_dir), "en", "de")
    assert sorted(data.splits) == ["test", "train", "val"]
    assert data.splits["train"] == [
        ("a red dog", "ein roter hund"),
        ("the cat sits", "die katze sitzt"),
        ("a man runs", "ein mann läuft"),
    ]
    assert data.skipped["train"] == 1
    assert data.valid_split == "val"
    # the other direction reads the same files
    assert load_parallel(str(parallel_dir), "de", "en").splits["test"][1] == ("der mann", "the man")


def test_line_count_mismatch_names_both_files_and_counts(parallel_dir: Path) -> None:
    _write(parallel_dir, "test.de", ["ein hund läuft"])
    with pytest.raises(UserError) as info:
        load_parallel(str(parallel_dir), "en", "de")
    message = str(info.value)
    assert "test.en has 2 lines" in message and "test.de has 1" in message
    assert "\n" not in message


def test_missing_language_lists_the_languages_found(parallel_dir: Path) -> None:
    with pytest.raises(UserError, match=r"'fr'.*languages found: de, en"):
        load_parallel(str(parallel_dir), "en", "fr")


def test_unicode_line_separators_do_not_break_alignment(tmp_path: Path) -> None:
    _write(tmp_path, "train.en", ["one\u2028still one", "two"])
    _write(tmp_path, "train.de", ["eins", "zwei"])
    data = load_parallel(str(tmp_path), "en", "de")
    assert data.splits["train"][1] == ("two", "zwei")


def test_hf_translation_dataset_from_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        {"en": "a red dog", "de": "ein roter hund"},
        {"en": "", "de": "leer"},
        {"en": "the cat", "de": "die katze"},
    ]
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"translation": rows}),
            "validation": datasets.Dataset.from_dict({"translation": rows[:1]}),
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    data = load_parallel(f"hf:{tmp_path / 'ds'}", "en", "de")
    assert data.splits["train"] == [("a red dog", "ein roter hund"), ("the cat", "die katze")]
    assert data.skipped["train"] == 1 and data.valid_split == "val"
    with pytest.raises(UserError, match="languages found: de, en"):
        load_parallel(f"hf:{tmp_path / 'ds'}", "en", "fr")


def test_joint_bpe_covers_both_languages_and_is_cached(
    parallel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path / "cache"))
    data = load_parallel(str(parallel_dir), "en", "de")
    tok = joint_bpe(data, 300)
    for s, t in data.splits["train"]:
        assert tok.decode(tok.encode(s)) == s and tok.decode(tok.encode(t)) == t
    assert list((tmp_path / "cache" / "tokenizers").glob("*.json"))
    assert joint_bpe(data, 300) == tok  # from the cache
    other = load_parallel(str(parallel_dir), "de", "en")
    assert other.content_hash() != data.content_hash()


def test_token_batches_respect_the_budget_and_cover_every_pair() -> None:
    lengths = [(n % 13 + 1, (3 * n) % 17 + 1) for n in range(200)]
    batches = token_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        longest = max(max(lengths[i]) for i in b) + 1
        assert len(b) == 1 or len(b) * longest <= 64
    # one pair longer than the budget still gets a batch of its own
    assert token_batches([(100, 3)], 16) == [[0]]


def test_epoch_order_is_a_seeded_permutation() -> None:
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1)
    assert epoch_order(10, 0, 1) != epoch_order(10, 0, 2)


def test_max_src_tokens_filter() -> None:
    import torch

    encoded = [(torch.zeros(n), torch.zeros(1)) for n in (3, 8, 5, 12)]
    assert filter_max_src(encoded, 5) == [0, 2]
    assert filter_max_src(encoded, None) == [0, 1, 2, 3]
    with pytest.raises(UserError, match="max-src-tokens"):
        filter_max_src(encoded, 0)


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k not found at {MULTI30K}")
def test_multi30k_layout() -> None:
    data = load_parallel(str(MULTI30K), "en", "de")
    assert len(data.splits["train"]) == 29000
    assert len(data.splits["test_2016_flickr"]) == 1000
    assert data.valid_split == "val"
