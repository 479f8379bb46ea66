"""Safe file writes: a result or checkpoint is either the old file or the complete new one, and
extrapos never replaces or deletes what is not its own.

One mechanism, `atomic_path`, behind every writer (`write_text`, `write_json`, `write_bytes`,
`write_torch`, `write_safetensors`; tokenizers are written as JSON text):

1. The target is checked first (`check_target`): an empty path is refused (it would mean the
   current folder); an existing target that is not a regular file — a directory, a device such
   as /dev/null, a FIFO, a socket — is refused; a **symlink is refused** (replacing it would cut
   the link, writing through it would write outside the folder asked for), the message says
   so and names the fix.
2. The content goes to a temporary file `.NAME.extrapos-XXXX.tmp` in the destination's folder
   (the `extrapos-` marker lets cleanup delete only our own leftovers), is flushed to disk and
   given the mode a new file gets under the umask (`0o666 & ~umask`), or the mode of the file it
   replaces; then it is renamed over the destination (`os.replace`, atomic on POSIX).
3. Any failure while writing — `OSError` (disk full, read-only, permission, quota) and the
   types that torch and safetensors raise for the same faults (`RuntimeError`,
   `SafetensorError`) — removes the temporary file, leaves the destination as it was, and
   becomes one `UserError` line naming the file and the cause.

`atomic_dir(path)` does the same for a folder written as a whole (an export): it is built in
a temporary sibling and renamed into place only when complete; an existing folder is replaced
only when it is one we wrote.

`run_lock(folder)` is the other guard: a lock file holding the writer's pid, so a second training
or bench on the same output is refused while the first lives; a lock left by a process that has
died is taken over.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError

#: marks the temporary files of our atomic writes: `.NAME.extrapos-XXXX.tmp`
TMP_MARK = "extrapos-"
#: name of the lock file `run_lock` keeps in the folder it guards
LOCK_NAME = ".extrapos.lock"


def check_path_text(path: str | os.PathLike[str], what: str = "path") -> Path:
    """`Path(path)`, refusing an empty string (which `Path` would read as the current folder)."""
    if not str(os.fspath(path)).strip():
        raise UserError(f"{what} is empty; give a file or folder name")
    return Path(path)


def check_target(path: str | os.PathLike[str], what: str = "output") -> Path:
    """The path to write, after refusing targets that are not ours to replace (see the module
    docstring): empty, a symlink, or an existing non-regular file."""
    path = check_path_text(path, what)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return path  # the write itself reports a folder that cannot be made
    except OSError as exc:
        raise UserError(f"cannot check {what} {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise UserError(
            f"{what} {path} is a symlink; extrapos does not replace or write through links: "
            "give the real path (or remove the link)"
        )
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise UserError(
            f"{what} {path} exists and is {kind}; extrapos only replaces regular files: "
            "pick another path"
        )
    return path


def check_dir_target(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """A folder to write into: refuse an empty path, a symlink, and an existing non-folder."""
    path = check_path_text(path, what)
    if path.is_symlink() and not path.is_dir():
        raise UserError(f"{what} {path} is a symlink to no folder; give a folder path")
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a folder; pick another path")
    return path


def current_umask() -> int:
    """The process umask (read from /proc where possible, which changes nothing)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # keep the mode of the file we replace
    except OSError:
        return 0o666 & ~current_umask()


def _write_error(path: Path, exc: BaseException) -> UserError:
    cause = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200] or type(exc).__name__
    return UserError(
        f"could not write {path}: {cause}; free space, fix the permissions or pick another "
        "--out (the previous file, if any, is intact)"
    )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], errors: tuple[type[BaseException], ...] = ()
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success give it the new file's mode and rename it
    to `path`, else delete it. `OSError` and the types in `errors` (what a library writer raises
    for I/O faults) become a `UserError`; the destination is untouched on any failure."""
    path = check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{TMP_MARK}", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():  # a writer may have replaced it (e.g. by a hard link)
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            if not tmp_path.is_symlink() and os.stat(tmp_path).st_nlink == 1:
                os.chmod(tmp_path, _new_mode(path))
        check_target(path)  # it may have changed while we wrote
        os.replace(tmp_path, path)
    except (OSError, *errors) as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, UserError):
            raise
        raise _write_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_with(
    path: str | os.PathLike[str],
    write: Callable[[Path], Any],
    errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Atomically write `path` by calling `write(tmp_path)` (see `atomic_path`)."""
    with atomic_path(path, errors) as tmp:
        write(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    save_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), (UnicodeError,))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    save_with(path, lambda tmp: tmp.write_bytes(data))


def to_json(obj: Any) -> str:
    """Strict JSON text: a NaN or infinity anywhere is a `UserError` naming where, never the
    invalid `NaN` token that `json.dumps` writes by default."""
    bad = _non_finite(obj, "")
    if bad is not None:
        raise UserError(
            f"result {bad} is not a finite number; refusing to write invalid JSON (the model "
            "or its settings produced a non-finite value)"
        )
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _non_finite(obj: Any, where: str) -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'value'}={obj}"
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, to_json(obj))


def write_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """`torch.save(obj, path)`, atomically; torch reports a failed write as `RuntimeError`."""
    import torch

    save_with(path, lambda tmp: torch.save(obj, tmp), (RuntimeError,))


def write_safetensors(
    path: str | os.PathLike[str], model: Any, metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_model(model, path)`, atomically (tied weights stored once)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    save_with(path, lambda tmp: save_model(model, str(tmp), metadata=metadata), (SafetensorError,))


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str],
    is_ours: Callable[[Path], bool] = lambda _: False,
    errors: tuple[type[BaseException], ...] = (),
    what: str = "output folder",
) -> Iterator[Path]:
    """Yield an empty temporary folder `.NAME.extrapos-XXXX.tmp` beside `path`; when the block
    succeeds, rename it to `path`, else delete it, so `path` is never half written.

    An existing `path` is replaced only if it is empty or `is_ours(path)` says it is what an
    earlier call wrote (e.g. a previous export); anything else, a symlink or a non-folder is
    refused before the block runs, so nothing that is not ours is ever deleted. POSIX has no
    atomic swap of two folders: the old one is first renamed to `.NAME.extrapos-old-XXXX.tmp`
    and deleted after the new one is in place; a kill between the two renames leaves it
    under that name, complete. The folder gets the umask's mode (`0o777 & ~umask`). `OSError`
    and `errors` become a `UserError` naming the folder."""
    path = check_path_text(path, what)
    if path.is_symlink():
        raise UserError(
            f"{what} {path} is a symlink; extrapos does not replace or write through links: "
            "give the real path (or remove the link)"
        )
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} exists and is not a folder; pick another path")
        if any(path.iterdir()) and not is_ours(path):
            raise UserError(
                f"{what} {path} exists and holds files extrapos did not write there; pick "
                "another path or remove it yourself (extrapos never deletes what is not its own)"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.{TMP_MARK}", suffix=".tmp", dir=path.parent)
        )
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        yield tmp
        old = None
        if path.exists():  # checked above; an empty or earlier folder of ours
            old = set_aside(path)
        try:
            os.rename(tmp, path)
        except OSError:
            if old is not None and not path.exists():
                os.rename(old, path)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, *errors) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, UserError):
            raise
        raise _write_error(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def set_aside(folder: Path) -> Path:
    """Rename `folder` to `.NAME.extrapos-old-XXXX.tmp` beside it (one atomic rename over an
    empty folder made for the purpose) and return the new path: from then on it is a leftover
    `is_our_temporary` recognises, never a half-deleted original."""
    aside = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.{TMP_MARK}old-", suffix=".tmp", dir=folder.parent)
    )
    os.replace(folder, aside)
    return aside


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a process killed meanwhile leaves it whole or as a temporary
    leftover (`set_aside`, then `shutil.rmtree`), never a partial copy under its own name —
    `rmtree` alone deletes file by file."""
    shutil.rmtree(set_aside(folder), ignore_errors=True)


def is_our_temporary(path: Path) -> bool:
    """Whether `path` is a leftover of one of our atomic writes (`.NAME.extrapos-XXXX.tmp`)."""
    return path.name.startswith(".") and TMP_MARK in path.name and path.name.endswith(".tmp")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into a `UserError` naming it."""
    path = check_path_text(path, what)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{what} {path} is corrupt ({exc}); restore or regenerate it") from exc
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


# ----------------------------------------------------------------------------- the lock

_HELD: set[Path] = set()  # locks this process holds


def _process_start(pid: int) -> str | None:
    """Start time of `pid` (clock ticks since boot, /proc), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] in ("Z", "X"):  # a zombie or dead process holds nothing
        return "dead"
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except OSError:
        return False
    now = _process_start(pid)
    if now == "dead":
        return False
    return started is None or now is None or now == started


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], what: str = "output") -> Iterator[Path]:
    """Hold `folder/.extrapos.lock` (pid, host, start time) while the block runs.

    A second holder is refused with the first one's pid while that process lives; a lock whose
    process has died (on this host) is stale and taken over. The lock file is removed on exit.
    """
    folder = check_dir_target(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(folder, exc) from exc
    lock = (folder / LOCK_NAME).resolve()
    if lock in _HELD:
        raise UserError(f"{folder} is already being written by this process; pick another --out")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is not None and _held_by_other(lock, holder, me["host"]):
                raise UserError(
                    f"{folder} is in use by another extrapos process (pid {holder.get('pid')} "
                    f"on {holder.get('host')}); wait for it to finish or pick another --out (if "
                    f"that process is gone, delete {lock})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its process is dead
            continue
        except OSError as exc:
            raise _write_error(lock, exc) from exc
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"could not take the lock {lock}; another process keeps replacing it")
    _HELD.add(lock)
    try:
        yield lock
    finally:
        _HELD.discard(lock)
        holder = _read_lock(lock)
        if holder is not None and holder.get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                lock.unlink()


def _held_by_other(lock: Path, holder: dict[str, Any], host: str) -> bool:
    if not holder:  # empty or corrupt: a writer that has just created it, or one that crashed
        with contextlib.suppress(OSError):
            import time

            return time.time() - lock.stat().st_mtime < 5.0
        return False
    if holder.get("host") != host:
        return True  # another machine's process: we cannot tell whether it lives
    try:
        pid = int(holder["pid"])
    except (TypeError, ValueError):
        return False
    return _alive(pid, holder.get("start"))


def _read_lock(lock: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when it is gone or unreadable (a crash while
    writing it leaves an empty file, which counts as stale)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and "pid" in holder else {}


@contextlib.contextmanager
def removed_if_left_empty(folder: str | os.PathLike[str]) -> Iterator[None]:
    """A command that fails before writing anything leaves no empty output folder behind
    (e.g. `extrapos bench` with a bad flag and the default `bench_out`). Only a folder this
    call did not find, and only while it is empty (`rmdir`), is removed; nothing else is."""
    path = Path(folder)
    existed = path.exists() or path.is_symlink()
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):  # not empty: the run wrote something; keep it
                path.rmdir()
        raise
