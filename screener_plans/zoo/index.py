"""A model zoo's location (folder, ``file://`` or ``http(s)://``) and its index ``model_info.json``.

The index follows MONAI model-zoo's ``model_info.json``: one entry per published model keyed
``<name>_v<version>``, with a ``checksum`` (sha256 of the zip) and a ``source`` (the zip's
path relative to the zoo, or an absolute URL), plus Screener's descriptive fields.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from screener_plans.errors import ScreenerError

INDEX_NAME = "model_info.json"
KEY_RE = re.compile(r"^(?P<name>.+)_v(?P<version>\d+\.\d+\.\d+)$")
TIMEOUT_S = 60


class ZooLocation:
    """Where a zoo is: ``local`` (a folder, also for ``file://``) or ``url`` (http/https)."""

    def __init__(self, spec):
        if spec in (None, ""):
            raise ScreenerError("--zoo is required (a folder, a file:// URL or an http(s):// URL)")
        self.spec = str(spec)
        parsed = urllib.parse.urlparse(self.spec)
        self.local: Path | None = None
        self.url: str | None = None
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ScreenerError(f"--zoo {self.spec}: file:// URLs must name a local path (file:///path)")
            self.local = Path(urllib.request.url2pathname(parsed.path))
        elif parsed.scheme in ("http", "https"):
            self.url = self.spec.rstrip("/") + "/"
        elif "://" in self.spec:
            raise ScreenerError(
                f"--zoo {self.spec}: unsupported URL scheme {parsed.scheme!r} (use a folder, file:// or http(s)://)"
            )
        else:
            self.local = Path(self.spec)

    def __str__(self) -> str:
        return self.spec

    def source_of(self, source: str) -> str:
        """An entry's ``source`` as something ``open_source`` reads: absolute URL, or path/URL in the zoo."""
        if "://" in source:
            return source
        rel = Path(source)
        if rel.is_absolute() or ".." in rel.parts:
            raise ScreenerError(f"{self.index_location()}: source {source!r} must be relative to the zoo or a URL")
        if self.local is not None:
            return str(self.local / rel)
        return urllib.parse.urljoin(self.url, urllib.parse.quote(rel.as_posix()))

    def index_location(self) -> str:
        return str(self.local / INDEX_NAME) if self.local is not None else self.url + INDEX_NAME

    def read_index(self, missing_ok: bool = False) -> dict:
        """The zoo's index; ``{}`` for a zoo without one when ``missing_ok``."""
        where = self.index_location()
        try:
            with open_source(where) as f:
                raw = f.read()
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise ScreenerError(f"{where}: no model zoo index here (publish a model first, or check --zoo)") from None
        try:
            index = json.loads(raw)
        except ValueError as e:
            raise ScreenerError(f"{where}: not valid JSON ({e})") from None
        return validate_index(index, where)


def validate_index(index, where: str) -> dict:
    """Check the index's shape; fills ``name``/``version`` from keys for MONAI-style entries."""
    if not isinstance(index, dict):
        raise ScreenerError(f"{where}: expected a JSON object of <name>_v<version> entries")
    for key, entry in index.items():
        m = KEY_RE.match(key)
        if (
            not m
            or not isinstance(entry, dict)
            or not isinstance(entry.get("source"), str)
            or not isinstance(entry.get("checksum"), str)
        ):
            raise ScreenerError(
                f"{where}: entry {key!r} must be keyed <name>_v<X.Y.Z> and have 'source' and 'checksum' strings"
            )
        entry.setdefault("name", m["name"])
        entry.setdefault("version", m["version"])
    return index


def open_source(location: str):
    """A readable binary stream for a local path, ``file://`` or ``http(s)://`` URL.

    Raises FileNotFoundError when it does not exist (HTTP 404), ScreenerError on other failures.
    """
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("http", "https"):
        try:
            return urllib.request.urlopen(location, timeout=TIMEOUT_S)  # noqa: S310 - scheme checked above
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(location) from None
            raise ScreenerError(f"{location}: download failed (HTTP {e.code} {e.reason})") from None
        except (urllib.error.URLError, OSError) as e:
            raise ScreenerError(f"{location}: cannot connect ({getattr(e, 'reason', e)})") from None
    path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(location)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ScreenerError(f"{path}: cannot be read ({e.strerror})") from None


def write_index(zoo_dir, index: dict) -> None:
    """Write ``model_info.json`` atomically, entries sorted by key."""
    from screener_plans.io_utils import write_json

    write_json(Path(zoo_dir) / INDEX_NAME, dict(sorted(index.items())))


def versions_of(index: dict, name: str) -> list[str]:
    """Published versions of ``name``, oldest first."""
    from screener_plans.zoo.package import version_key

    return sorted((e["version"] for e in index.values() if e["name"] == name), key=version_key)


def select(index: dict, name: str, version: str | None = None, where: str = "zoo") -> tuple[str, dict]:
    """(key, entry) for ``name`` at ``version``, or its latest version when ``version`` is None."""
    versions = versions_of(index, name)
    if not versions:
        names = sorted({e["name"] for e in index.values()})
        raise ScreenerError(f"{where}: no model named {name!r} (available: {', '.join(names) or 'none'})")
    if version is None:
        version = versions[-1]
    key = f"{name}_v{version}"
    if key not in index:
        raise ScreenerError(f"{where}: {name} has no version {version} (available: {', '.join(versions)})")
    return key, index[key]
