"""Tests for extrapos.data.corpus."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.data.corpus import (
    BUILTIN_EXCLUDED_DIRS,
    BUILTIN_MAX_BYTES,
    BUILTIN_TEST_MIN_BYTES,
    SPLITS,
    Corpus,
    _builtin_corpus,
    _split_documents,
    list_corpora,
    load_corpus,
    split_by_name_hash,
)
from extrapos.data.tokenizers import ByteTokenizer

WIKITEXT2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2"


# ----------------------------------------------------------------------------- built-in


def test_builtin_is_deterministic() -> None:
    a = load_corpus()
    assert load_corpus("builtin") is a  # cached
    fresh = _builtin_corpus.__wrapped__()  # rebuilt from disk
    assert fresh == a
    assert fresh.content_hash == a.content_hash
    assert len(a.content_hash) == 64
    assert list_corpora() == ["builtin"]


def test_builtin_splits_disjoint_nonempty_and_sized() -> None:
    c = load_corpus()
    assert set(c.splits) == set(SPLITS)
    names = [set(c.sources[s]) for s in SPLITS]
    for s, n in zip(SPLITS, names, strict=True):
        assert c.splits[s] and len(n) == len(c.splits[s]), s
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for s in SPLITS:
        assert c.sources[s] == sorted(c.sources[s])  # deterministic order

    sizes = {s: len(c.text(s).encode("utf-8")) for s in SPLITS}
    assert sizes["test"] >= BUILTIN_TEST_MIN_BYTES
    assert sizes["train"] > 5 * sizes["test"]
    docs_bytes = sum(len(d.encode("utf-8")) for s in SPLITS for d in c.splits[s])
    assert 0.8 * BUILTIN_MAX_BYTES < docs_bytes <= BUILTIN_MAX_BYTES

    info = c.describe()
    assert info["content_hash"] == c.content_hash
    assert info["splits"]["test"]["bytes"] == sizes["test"]
    assert info["splits"]["valid"]["documents"] == len(c.splits["valid"])


def test_builtin_holds_only_stdlib_sources() -> None:
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    c = load_corpus()
    n_doc = n_src = 0
    for s in SPLITS:
        for name, doc in zip(c.sources[s], c.splits[s], strict=True):
            if name.startswith("pydoc_data.topics:"):
                assert topics[name.split(":", 1)[1]] == doc
                n_doc += 1
            else:
                assert name.endswith(".py")
                assert not set(Path(name).parts[:-1]) & BUILTIN_EXCLUDED_DIRS, name
                assert (root / name).read_text(encoding="utf-8") == doc
                n_src += 1
    assert n_doc == len(topics) and n_src > 50
    assert "html/entities.py" not in c.sources["train"] + c.sources["valid"] + c.sources["test"]


def test_tokens_are_cached_per_split_and_tokenizer() -> None:
    c = load_corpus()
    t = c.tokens("valid", ByteTokenizer())
    assert t.dtype == torch.int64 and t.ndim == 1
    assert t.numel() == len(c.text("valid").encode("utf-8"))
    assert c.tokens("valid", ByteTokenizer()) is t
    with pytest.raises(UserError, match="no split 'dev'"):
        c.text("dev")


# ----------------------------------------------------------------------------- paths


def test_text_file_split_by_line_ranges(tmp_path) -> None:
    text = "".join(f"line {i} ünïcode\n" for i in range(1000))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    c = load_corpus(path)
    assert c.name == str(path)
    assert all(len(c.splits[s]) == 1 for s in SPLITS)
    assert "".join(c.splits[s][0] for s in SPLITS) == text
    assert all(c.splits[s][0].endswith("\n") for s in SPLITS)  # cut at line boundaries
    n = len(text.encode("utf-8"))
    assert 0.89 * n < len(c.splits["train"][0].encode("utf-8")) < 0.91 * n
    assert load_corpus(str(path)) == c


def test_folder_with_split_files(tmp_path) -> None:
    (tmp_path / "d.train.txt").write_text("training text\n" * 10)
    (tmp_path / "d.val.txt").write_text("validation text\n")
    (tmp_path / "d.test.txt").write_text("test text\n")
    (tmp_path / "README.md").write_text("not a split\n")
    c = load_corpus(tmp_path)
    assert c.splits == {
        "train": ["training text\n" * 10],
        "valid": ["validation text\n"],
        "test": ["test text\n"],
    }


def test_folder_of_documents_split_by_name_hash(tmp_path) -> None:
    for i in range(40):
        sub = tmp_path / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(f"document number {i}\n")
    (tmp_path / ".hidden").write_text("skipped\n")
    c = load_corpus(tmp_path)
    all_names = sorted(n for s in SPLITS for n in c.sources[s])
    assert len(all_names) == 40 and len(set(all_names)) == 40
    assert all(c.splits[s] for s in SPLITS)
    assert load_corpus(tmp_path).content_hash == c.content_hash


def test_split_by_name_hash_guarantees_valid_and_test() -> None:
    for k in (3, 4, 7):
        names = [f"n{i}" for i in range(k)]
        idx = split_by_name_hash(names)
        assert all(idx[s] for s in SPLITS)
        assert sorted(i for s in SPLITS for i in idx[s]) == list(range(k))
        assert split_by_name_hash(names) == idx


def test_test_split_floor_moves_train_documents() -> None:
    names = [f"doc{i:02d}" for i in range(30)]
    docs = [f"{i:02d}" * 50 for i in range(30)]  # 100 bytes each
    c = _split_documents("x", names, docs, test_min_bytes=1_000)
    assert sum(len(d) for d in c.splits["test"]) >= 1_000
    assert sorted(n for s in SPLITS for n in c.sources[s]) == names
    assert c.sources["test"] == sorted(c.sources["test"])
    assert _split_documents("x", names, docs, test_min_bytes=1_000) == c


# ----------------------------------------------------------------------------- errors


def test_missing_path_and_unknown_name(tmp_path) -> None:
    with pytest.raises(UserError, match="no such file or folder"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="neither a file nor a known corpus.*builtin"):
        load_corpus("no_such_corpus_name")


def test_empty_inputs(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        load_corpus(empty)
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(UserError, match="no text files"):
        load_corpus(folder)
    (folder / "a.txt").write_text("one document\n")
    with pytest.raises(UserError, match="too few"):
        load_corpus(folder)
    one_line = tmp_path / "short.txt"
    one_line.write_text("a single line without much in it\n")
    with pytest.raises(UserError, match="split is empty"):
        load_corpus(one_line)


def test_binary_and_non_utf8_files(tmp_path) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\0def\n" * 10)
    with pytest.raises(UserError, match=r"blob\.bin.*binary.*offset 3"):
        load_corpus(binary)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("plain ascii then café\n".encode("latin-1") * 10)
    with pytest.raises(UserError, match=r"latin1\.txt.*not UTF-8.*0xe9.*offset 20.*convert"):
        load_corpus(latin1)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfab\xff\n")  # the offset counts the byte order mark
    with pytest.raises(UserError, match="offset 5"):
        load_corpus(bom)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.txt").write_text("fine\n")
    (folder / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=r"bad\.txt.*offset 0"):
        load_corpus(folder)


def test_from_splits_rejects_empty_split() -> None:
    with pytest.raises(UserError, match="'test' split is empty"):
        Corpus.from_splits("x", {"train": ["a"], "valid": ["b"], "test": []})


# ----------------------------------------------------------------------------- WikiText


def test_wikitext2_folder() -> None:
    if not WIKITEXT2.is_dir():
        pytest.skip(f"shared data is absent: no WikiText-2 copy at {WIKITEXT2}")
    c = load_corpus(WIKITEXT2)
    assert c.sources == {
        "train": ["wiki.train.tokens"],
        "valid": ["wiki.valid.tokens"],
        "test": ["wiki.test.tokens"],
    }
    assert c.splits["test"][0] == (WIKITEXT2 / "wiki.test.tokens").read_text(encoding="utf-8")
    assert len(c.text("train")) > len(c.text("test")) > 1_000_000


# ----------------------------------------------------------------------------- globs


def test_glob_of_documents(tmp_path, monkeypatch) -> None:
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"text file {i}\n")
    (tmp_path / "notes.md").write_text("not matched\n")
    c = load_corpus(str(tmp_path / "*.txt"))
    names = sorted(n for s in SPLITS for n in c.sources[s])
    assert names == [f"doc{i:02d}.txt" for i in range(12)]  # relative to the glob's folder
    assert all(c.splits[s] for s in SPLITS) and c.name == str(tmp_path / "*.txt")
    assert load_corpus(str(tmp_path / "*.txt")).content_hash == c.content_hash
    monkeypatch.chdir(tmp_path)
    assert load_corpus("*.txt").content_hash == c.content_hash  # relative pattern, same names


def test_glob_recursive_split_files_and_errors(tmp_path) -> None:
    for split in ("train", "valid", "test"):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"wiki.{split}.tokens").write_text(f"{split} text\n")
    c = load_corpus(str(tmp_path / "**" / "*.tokens"))
    assert c.sources == {
        "train": ["wiki.train.tokens"],
        "valid": ["wiki.valid.tokens"],
        "test": ["wiki.test.tokens"],
    }
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}\n" for i in range(100)))
    assert load_corpus(str(tmp_path / "one.*")).splits == load_corpus(one).splits  # as a file
    with pytest.raises(UserError, match="no files match"):
        load_corpus(str(tmp_path / "*.nothing"))


# ----------------------------------------------------------------------------- Hugging Face


def _saved_dataset(path: Path, splits: dict[str, list[str]], column: str = "text") -> str:
    datasets = pytest.importorskip("datasets", reason="pip install 'extrapos[hf]' to test this")
    dd = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({column: rows}) for name, rows in splits.items()}
    )
    dd.save_to_disk(str(path))
    return f"hf:{path}"


def test_hf_dataset_rows_are_whole_documents(tmp_path) -> None:
    books = [f"Book {i}\n\nChapter one.\nIt was a dark night {i}.\n" for i in range(6)]
    spec = _saved_dataset(
        tmp_path / "ds",
        {"train": books, "validation": ["Valid book\nwith two lines\n"], "test": ["Test\nbook\n"]},
    )
    c = load_corpus(spec)
    assert c.name == spec
    assert c.splits == {
        "train": books,
        "valid": ["Valid book\nwith two lines\n"],
        "test": ["Test\nbook\n"],
    }
    assert c.sources["train"][2] == "train[2]"


def test_hf_dataset_of_lines_is_one_text_per_split(tmp_path) -> None:
    # WikiText on the hub: one row per line, empty rows for blank lines
    train = ["", " = Title = \n", "", " Some text .\n"] * 50
    spec = _saved_dataset(
        tmp_path / "wt", {"train": train, "validation": [" v\n"], "test": [" t\n"]}
    )
    c = load_corpus(spec)
    assert c.splits["train"] == ["\n = Title = \n\n Some text .\n" * 50]
    assert c.splits["valid"] == [" v\n"]


def test_hf_dataset_with_only_train_is_split(tmp_path) -> None:
    docs = [f"document {i}\nsecond line\n" for i in range(60)]
    c = load_corpus(_saved_dataset(tmp_path / "docs", {"train": docs}, column="content"))
    assert sorted(d for s in SPLITS for d in c.splits[s]) == sorted(docs)
    assert all(c.splits[s] for s in SPLITS)
    lines = [f"line {i}" for i in range(400)]
    c = load_corpus(_saved_dataset(tmp_path / "lines", {"train": lines}))
    assert "".join(c.text(s) for s in SPLITS) == "".join(f"{x}\n" for x in lines)
    with pytest.raises(UserError, match="no column 'body'; columns: content"):
        load_corpus(f"hf:{tmp_path / 'docs'}#body")


def test_hf_offline_is_a_clear_error(tmp_path) -> None:
    """A real process with the hub unreachable (offline mode, empty cache): one line, exit 2."""
    pytest.importorskip("datasets", reason="pip install 'extrapos[hf]' to test this")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    cmd = [sys.executable, "-m", "extrapos", "train", "--encoding", "rope", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--data", "hf:wikitext:wikitext-103-raw-v1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("extrapos: error: could not reach the Hugging Face hub to load ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_hf_without_datasets_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r"needs the Hugging Face `datasets`.*extrapos\[hf\]"):
        load_corpus("hf:wikitext:wikitext-103-raw-v1")
    with pytest.raises(UserError, match="names no dataset"):
        load_corpus("hf:")


def test_a_folder_with_a_named_pipe_is_read_without_blocking(tmp_path) -> None:
    """Run in a child with a deadline: the old code blocked forever opening the FIFO."""
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n" * 50)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "pipe2")
    code = (
        "from extrapos.data import load_corpus\n"
        f"c = load_corpus({str(tmp_path)!r})\nprint(sum(len(c.text(s)) > 0 for s in "
        "('train', 'valid', 'test')))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": "src"},
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    with pytest.raises(UserError, match="neither a regular file nor a folder"):
        load_corpus(tmp_path / "pipe")


def test_a_single_line_text_is_cut_at_whitespace_or_character_boundaries(tmp_path) -> None:
    words = tmp_path / "text8"
    words.write_text(" ".join(f"word{i}" for i in range(3000)))  # no newline at all
    corpus = load_corpus(words)
    parts = [corpus.text(s) for s in ("train", "valid", "test")]
    assert "".join(parts) == words.read_text()
    assert all(p and (p.endswith(" ") or p is parts[-1]) for p in parts)
    dense = tmp_path / "dense"
    dense.write_text("é" * 5000)  # no whitespace: cut between characters, never inside one
    parts = [load_corpus(dense).text(s) for s in ("train", "valid", "test")]
    assert "".join(parts) == "é" * 5000 and all(parts)


def test_an_empty_data_path_is_refused() -> None:
    with pytest.raises(UserError, match="data path is empty"):
        load_corpus("")
