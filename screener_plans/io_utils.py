"""Atomic file writes: a kill mid-write never leaves a half-written file behind, and what is
written gets the permissions of a normally created file (temporaries are owner-only)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path


def temp_prefix(name: str, pid: int | None = None) -> str:
    """Prefix of a temporary sibling of ``name``; it records host and pid (this process's unless
    given) so that stale ones can be told from those of a writer that is still running (see
    ``sweep_stale_temporaries``)."""
    return f".{name}.{_host()}-{os.getpid() if pid is None else int(pid)}."


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # one dot-free field in the temporary's name


_TEMP = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\..*\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove temporaries left in ``folder`` by writers on this host that were killed mid-write.

    Only names made by ``temp_prefix`` whose process is gone are removed, so concurrent writers
    (several ranks writing into one output folder) are never disturbed. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, removed = _host(), []
    for entry in os.scandir(folder):
        m = _TEMP.match(entry.name)
        if not m or m["host"] != host or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def _umask() -> int:
    # /proc says it without changing it; os.umask can only read by setting, which would race
    # with files other threads create meanwhile
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (owner-only) the permissions a plain ``open``
    or ``mkdir`` would have given it, so shared run folders and zoos stay readable by others."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def _refuse_folder(path: Path) -> None:
    from screener_plans.errors import ScreenerError

    if path.is_dir():
        raise ScreenerError(f"{path}: is a folder; give a file name to write to")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps the extension libraries look at (e.g. ``.nii.gz``, ``.npy``).
    """
    from screener_plans.errors import ScreenerError

    path = Path(path)
    _refuse_folder(path)
    if suffix is None:
        suffix = "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        raise ScreenerError(f"{path}: cannot be written ({e.strerror})") from None
    os.close(fd)
    try:
        yield tmp
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write JSON atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


_CREATED: list[Path] = []  # folders this process created, oldest first


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p``, remembering the folders it created for ``remove_dirs_left_empty``."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    _CREATED.extend(reversed(missing))
    return path


def remove_dirs_left_empty() -> list[Path]:
    """Remove the folders ``make_dirs`` created that are still empty (a command refused its
    input after creating its output folder), newest first; returns them."""
    removed = []
    while _CREATED:
        d = _CREATED.pop()
        try:
            d.rmdir()  # only succeeds on an empty folder
            removed.append(d)
        except OSError:
            pass
    return removed


def ensure_writable_file(path: str | os.PathLike) -> Path:
    """Check, before long work, that ``path`` can be written later: not a folder, and its folder
    (created if needed) writable."""
    path = Path(path)
    _refuse_folder(path)
    ensure_writable_dir(path.parent)
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    from screener_plans.errors import ScreenerError

    path = Path(path)
    try:
        make_dirs(path)
    except OSError as e:
        raise ScreenerError(f"{path}: cannot create folder ({e.strerror})") from None
    if not path.is_dir():
        raise ScreenerError(f"{path}: exists and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ScreenerError(f"{path}: folder is not writable ({e.strerror})") from None
    return path
