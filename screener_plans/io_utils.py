"""Atomic file writes: a kill mid-write never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
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


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps the extension libraries look at (e.g. ``.nii.gz``, ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
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


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    from screener_plans.errors import ScreenerError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
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
