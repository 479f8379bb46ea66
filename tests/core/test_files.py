"""The safe-write mechanism (extrapos.core.files): targets that are not ours, file modes, write
faults from every writer, and the run lock."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.core.files import (
    LOCK_NAME,
    atomic_dir,
    check_dir_target,
    run_lock,
    to_json,
    write_bytes,
    write_json,
    write_safetensors,
    write_text,
    write_torch,
)
from extrapos.data import ByteTokenizer, save_tokenizer


def _writers():
    model = torch.nn.Linear(64, 64)
    return {
        "json": lambda p: write_json(p, {"x": list(range(2000))}),
        "text": lambda p: write_text(p, "y" * 20000),
        "bytes": lambda p: write_bytes(p, b"z" * 20000),
        "torch": lambda p: write_torch(p, {"w": torch.randn(5000)}),
        "safetensors": lambda p: write_safetensors(p, model),
        "tokenizer": lambda p: save_tokenizer(ByteTokenizer(), p),
    }


WRITERS = list(_writers())


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink", "empty"])
def test_targets_that_are_not_ours_are_refused_and_untouched(tmp_path, writer, kind):
    target = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    elif kind == "symlink":
        real = tmp_path / "real.txt"
        real.write_text("keep")
        target.symlink_to(real)
    else:
        target = ""
    message = {"fifo": "not a regular file", "dir": "a directory", "symlink": "symlink"}
    with pytest.raises(UserError, match=message.get(kind, "is empty")):
        _writers()[writer](target)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    elif kind == "symlink":
        assert target.is_symlink() and (tmp_path / "real.txt").read_text() == "keep"
    elif kind == "dir":
        assert target.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_device_node_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a regular file"):
        write_json("/dev/null", {"a": 1})
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("writer", WRITERS)
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, umask, writer):
    old = os.umask(umask)
    try:
        _writers()[writer](tmp_path / "new")
        assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o666 & ~umask
        (tmp_path / "kept").write_text("old")
        os.chmod(tmp_path / "kept", 0o640)
        _writers()[writer](tmp_path / "kept")
        assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o640
    finally:
        os.umask(old)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """A real write fault: past `limit` bytes every write fails with EFBIG (SIGXFSZ ignored)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_failed_write_is_one_error_and_keeps_the_previous_file(tmp_path, writer):
    target = tmp_path / "out"
    target.write_bytes(b"previous")
    with _file_size_limit(4), pytest.raises(UserError, match="could not write") as info:
        _writers()[writer](target)
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_unwritable_folder_is_one_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="could not write"):
        write_json(blocker / "sub" / "results.json", {})
    with pytest.raises(UserError, match="not a folder"):
        check_dir_target(blocker)


def test_json_is_always_valid():
    assert json.loads(to_json({"a": [1.5, None]})) == {"a": [1.5, None]}
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(UserError, match=r"records\[1\]\.ppl=.* is not a finite number"):
            to_json({"records": [{"ppl": 1.0}, {"ppl": bad}]})


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match="already being written by this process"):
            with run_lock(tmp_path):
                pass
        child = subprocess.run(
            [sys.executable, "-c", "from extrapos.core.files import run_lock\n"
             f"with run_lock({str(tmp_path)!r}): pass"],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "src"},
        )  # fmt: skip
        assert (
            child.returncode != 0
            and f"in use by another extrapos process (pid {os.getpid()}" in (child.stderr)
        )
    assert not (tmp_path / LOCK_NAME).exists()
    # a lock left by a process that was killed does not block
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom extrapos.core.files import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": "src"},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        with run_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # stale
    with run_lock(tmp_path):
        pass


def test_atomic_dir_renames_into_place_only_on_success_and_never_deletes_what_is_not_ours(
    tmp_path,
):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        assert not target.exists()  # nothing at the target while the folder is built
        raise RuntimeError("killed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no temporary
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~_umask()
    # an existing folder: replaced only when `is_ours` says so
    with pytest.raises(UserError, match="did not write"), atomic_dir(target):
        pytest.fail("the block must not run")
    with atomic_dir(target, is_ours=lambda p: (p / "a").exists()) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone
    # a failure while replacing keeps the previous folder whole
    with pytest.raises(UserError, match="no"), atomic_dir(target, is_ours=lambda p: True):
        raise UserError("no")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    link = tmp_path / "link"
    link.symlink_to(target)
    (tmp_path / "file").write_text("f")
    for bad, match in ((link, "symlink"), (tmp_path / "file", "not a folder"), ("", "empty")):
        with pytest.raises(UserError, match=match), atomic_dir(bad, is_ours=lambda p: True):
            pass
    assert (tmp_path / "file").read_text() == "f" and link.is_symlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
